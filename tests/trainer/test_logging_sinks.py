"""``report_to``: a short real training run of the warm tiny model against the live service,
its TensorBoard event files read back with TensorBoard's own reader, its offline W&B run decoded
from the ``.wandb`` file."""

import json
import shutil
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2

from trainer_client.trainer.config import TrainConfig
from trainer_client.trainer.logging_sinks import (
    HISTOGRAM,
    VARIANCE_RATIO,
    open_sink,
    step_values,
)
from trainer_client.trainer.train import METRICS_FILE, train
from trainer_client.trainer.trainer_state import CHECKPOINT
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
    with pytest.raises(
        RuntimeError, match=r"pip install 'gvm-budget\[wandb\]'.*WANDB_MODE=offline"
    ):
        open_sink(config("http://unused", tmp_path, report_to="wandb"))


def read_wandb(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a ``.wandb`` file. wandb ships no Python reader for it (``wandb sync`` and the
    server read it in Go): it is LevelDB's log format, blocks of 32 KiB after a 7-byte header, each
    chunk a CRC32, a length and a type (1 whole, 2 first, 3 middle, 4 last)."""
    data = path.read_bytes()
    assert data[:7] == struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
    records, chunks, pos = [], b"", 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's zero-filled tail
            pos += 32768 - pos % 32768
            continue
        crc, size, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0:
            break
        chunk = data[pos + 7 : pos + 7 + size]
        assert zlib.crc32(bytes([kind]) + chunk) == crc
        chunks, pos = chunks + chunk, pos + 7 + size
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunks))
            chunks = b""
    return records


def test_wandb_offline_run_holds_every_step(
    service_url: str, tmp_path: Path, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"MODE": "offline", "SILENT": "true", "CONSOLE": "off"}.items():
        monkeypatch.setenv(f"WANDB_{name}", value)
    for name in ("DIR", "CONFIG_DIR", "CACHE_DIR", "DATA_DIR"):  # nothing lands in $HOME
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / "wandb-home"))
    out = tmp_path / "out"
    train(config(service_url, out, run_id=run_id, report_to="wandb"))
    records = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    [run_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    logged = read_wandb(run_file)

    [run] = [r.run for r in logged if r.HasField("run")]
    config_keys = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config_keys["report_to"] == "wandb"
    assert config_keys["run_id"] == run_id
    assert "api_token" not in config_keys
    assert b"secret-token" not in run_file.read_bytes()

    rows: dict[int, dict[str, Any]] = {}
    for record in logged:
        if record.HasField("history"):
            row: dict[str, Any] = {}
            for item in record.history.item:
                *parents, leaf = item.nested_key or [item.key]
                node = row
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[leaf] = json.loads(item.value_json)
            rows[row["_step"]] = row
    assert sorted(rows) == [r["step"] for r in records] == [0, 1, 2]
    for record in records:
        row = rows[record["step"]]
        assert {k: row[k] for k in step_values(record)} == pytest.approx(step_values(record))
        counts, histogram = record["alloc_counts"], row[HISTOGRAM]
        assert histogram["_type"] == "histogram"
        values, bins = np.histogram(counts, bins=len(histogram["values"]))  # what wandb bins
        assert histogram["values"] == values.tolist()
        assert histogram["bins"] == pytest.approx(bins.tolist())
    assert sorted(step for step, row in rows.items() if "eval/accuracy" in row) == [1, 2]
    assert VARIANCE_RATIO in rows[2]
