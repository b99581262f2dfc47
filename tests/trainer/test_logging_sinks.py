"""``report_to``: a short real training run of the warm tiny model against the live service,
its TensorBoard event files read back with TensorBoard's own reader."""

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer_client.trainer.config import TrainConfig
from trainer_client.trainer.logging_sinks import HISTOGRAM, VARIANCE_RATIO, open_sink
from trainer_client.trainer.train import CHECKPOINT, METRICS_FILE, train
from trainer_client.trainer.warmup import warm_up


def config(service_url: str, out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "service_url": service_url,
        "model": str(warm_up()),
        "steps": 3,
        "batch_size": 4,
        "budget": 24,
        "train_prompts": 8,
        "eval_prompts": 8,
        "eval_every": 2,
        "max_new_tokens": 8,
        "out_dir": str(out),
        "progress": False,
        "log_every": 0,
        "report_to": "tensorboard",
        "api_token": "secret-token",
    }
    return TrainConfig(**(values | overrides))


def read_events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in events.Scalars(tag)}


def test_tensorboard_event_files_hold_every_step(
    service_url: str, tmp_path: Path, run_id: str
) -> None:
    train(config(service_url, tmp_path, run_id=run_id))
    records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    events = read_events(tmp_path / "tensorboard")
    steps = [r["step"] for r in records]
    assert steps == [0, 1, 2]

    def logged(tag: str, key: str) -> None:
        expected = {r["step"]: r[key] for r in records if r[key] is not None}
        assert expected, key
        assert scalars(events, tag) == pytest.approx(expected)

    logged("train/accept_rate", "accept_rate")
    logged("train/loss", "loss")
    logged("samples/generated", "generated")
    logged("samples/cumulative", "cumulative_generated")
    logged("eval/accuracy", "eval_accuracy")  # evaluation steps only: 1 and 2
    assert sorted(scalars(events, "eval/accuracy")) == [1, 2]
    logged("allocation/predicted_variance", "predicted_variance")
    logged("time/step", "time_step")
    logged("time/allocate", "time_allocate")
    ratios = {
        r["step"]: r["predicted_variance"] / r["uniform_variance"]
        for r in records
        if r["predicted_variance"] is not None
    }
    assert scalars(events, VARIANCE_RATIO) == pytest.approx(ratios)

    histograms = {e.step: e.histogram_value for e in events.Histograms(HISTOGRAM)}
    assert sorted(histograms) == steps
    for record in records:
        counts, histogram = record["alloc_counts"], histograms[record["step"]]
        assert histogram.num == len(counts)
        assert histogram.sum == sum(counts)
        assert (histogram.min, histogram.max) == (min(counts), max(counts))

    text = "".join(str(e.tensor_proto.string_val) for e in events.Tensors("config/text_summary"))
    assert "report_to" in text
    assert "secret-token" not in text


def test_a_resumed_run_logs_each_step_once(service_url: str, tmp_path: Path, run_id: str) -> None:
    train(config(service_url, tmp_path, run_id=run_id, steps=2))
    saved = tmp_path.parent / f"{tmp_path.name}-checkpoint-at-2"
    shutil.copytree(tmp_path / CHECKPOINT, saved)
    train(config(service_url, tmp_path, run_id=run_id, steps=3, resume=True))
    # a crash after step 2 was logged but before its checkpoint: the resume runs step 2 again
    shutil.rmtree(tmp_path / CHECKPOINT)
    shutil.copytree(saved, tmp_path / CHECKPOINT)
    train(config(service_url, tmp_path, run_id=run_id, steps=3, resume=True))
    events = read_events(tmp_path / "tensorboard")
    assert [e.step for e in events.Scalars("samples/generated")] == [0, 1, 2]


def test_none_writes_nothing(tmp_path: Path) -> None:
    sink = open_sink(config("http://unused", tmp_path, report_to="none"))
    sink.close()
    assert list(tmp_path.iterdir()) == []


def test_wandb_without_the_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets when absent
    with pytest.raises(RuntimeError, match=r"pip install wandb.*WANDB_MODE=offline"):
        open_sink(config("http://unused", tmp_path, report_to="wandb"))
