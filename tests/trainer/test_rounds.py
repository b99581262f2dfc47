"""Allocation rounds in the reference trainer, end to end: the tiny model, the live service,
real Redis. Each round draws, rewards and reports; every round after the first asks for a
top-up with what the step drew so far; every sample drawn is trained on and counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer_client import Allocation, BudgetClient
from trainer_client.trainer.config import TrainConfig
from trainer_client.trainer.train import METRICS_FILE, train
from trainer_client.trainer.warmup import warm_up


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return warm_up()


@pytest.mark.parametrize("algo", ["raft", "grpo"])
def test_rounds_top_up_what_the_step_drew(
    model_dir: Path, service_url: str, run_id: str, tmp_path: Path, algo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    requests: list[dict[str, Any]] = []  # what the trainer asked the client for, in order
    real_allocate = BudgetClient.allocate

    def recording(self: BudgetClient, *args: Any, **kwargs: Any) -> Allocation:
        requests.append(kwargs)
        return real_allocate(self, *args, **kwargs)

    monkeypatch.setattr(BudgetClient, "allocate", recording)
    config = TrainConfig(
        service_url=service_url, run_id=run_id, model=str(model_dir), algo=algo,
        allocation_rounds="2,1", steps=2, batch_size=4, budget=28, train_prompts=8,
        eval_prompts=4, max_new_tokens=8, out_dir=str(tmp_path), progress=False, log_every=0,
    )  # fmt: skip
    assert config.round_budgets == (8, 4, 16)
    summary = train(config)
    records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]

    for record in records:
        assert len(record["rounds"]) == 3
        assert sum(record["rounds"]) == record["generated"] == config.budget
        assert record["rounds"][:2] == [8, 4]
        assert sum(record["alloc_counts"]) == config.budget
        assert not record["fallback"]
    # Per step: the first round is a plain allocation, the next ones carry what was drawn.
    assert len(requests) == 3 * config.steps
    for step in range(config.steps):
        first, second, third = requests[3 * step : 3 * step + 3]
        assert first == {}
        assert sum(second["drawn"]) == 8
        assert sum(third["drawn"]) == 12
        assert all(b >= a for a, b in zip(second["drawn"], third["drawn"], strict=True))
        assert len(second["drawn"]) == len(second["drawn_accepted"]) == config.batch_size
        assert all(k <= d for k, d in zip(third["drawn_accepted"], third["drawn"], strict=True))
    with BudgetClient(service_url) as client:
        stored = client.summary(run_id)
    assert stored.samples == summary["cumulative_generated"] == config.steps * config.budget
    assert stored.accepted == summary["accepted"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"allocation_rounds": "2,x"}, "whole numbers"),
        ({"allocation_rounds": "1,1,1"}, "one or two"),
        ({"allocation_rounds": "0"}, "whole numbers"),
        ({"allocation_rounds": "8"}, "leaves nothing"),
        ({"allocation_rounds": "1", "algo": "grpo"}, "needs >= 2 per prompt"),
        ({"allocation_rounds": "2", "mode": "paper"}, "online mode"),
        ({"allocation_rounds": "2", "allocation": "gvm-paper"}, "online mode, and gvm"),
    ],
)
def test_bad_rounds_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(batch_size=8, budget=64, **overrides)
