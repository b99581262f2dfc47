"""Where a run's per-step numbers go besides ``metrics.jsonl``: TensorBoard or Weights & Biases.

``report_to`` picks one, as in transformers and TRL. Both are optional packages, imported only
when asked for: ``pip install 'gvm-budget[tensorboard]'`` (event files in ``out_dir/tensorboard``)
or ``pip install 'gvm-budget[wandb]'`` (``WANDB_MODE=offline`` keeps the run on disk, no network
needed; sync it later with ``wandb sync``).

Each step logs, under these tags: ``train/`` acceptance, reward, loss, clip fraction;
``eval/`` held-out accuracy (on evaluation steps); ``samples/`` generated, cumulative, allocated;
``allocation/`` the counts per prompt as a histogram, their spread, the predicted variance, the
uniform allocation's and their ratio; ``time/`` each phase's seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trainer_client.trainer.config import TrainConfig

# A metrics.jsonl key -> its tag. Keys that are None on a step (eval, variance) are left out.
SCALARS = {
    "accept_rate": "train/accept_rate",
    "mean_reward": "train/mean_reward",
    "loss": "train/loss",
    "clip_fraction": "train/clip_fraction",
    "kl": "train/kl",
    "trained_samples": "train/trained_samples",
    "eval_accuracy": "eval/accuracy",
    "train_eval_accuracy": "eval/train_accuracy",
    "generated": "samples/generated",
    "cumulative_generated": "samples/cumulative",
    "allocated": "samples/allocated",
    "alloc_min": "allocation/min",
    "alloc_max": "allocation/max",
    "alloc_std": "allocation/std",
    "predicted_variance": "allocation/predicted_variance",
    "uniform_variance": "allocation/uniform_variance",
}
HISTOGRAM = "allocation/counts"
VARIANCE_RATIO = "allocation/variance_ratio"


def step_values(record: Mapping[str, Any]) -> dict[str, float]:
    """A step's scalars by tag: the table above, the variance ratio, ``time_*`` as ``time/*``."""
    values = {tag: float(record[k]) for k, tag in SCALARS.items() if record.get(k) is not None}
    predicted, uniform = record.get("predicted_variance"), record.get("uniform_variance")
    if predicted is not None and uniform:
        values[VARIANCE_RATIO] = predicted / uniform
    for key, value in record.items():
        if key.startswith("time_"):
            values[f"time/{key.removeprefix('time_')}"] = float(value)
    return values


class Sink(Protocol):
    def log(self, record: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


class NoSink:
    def log(self, record: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Event files read by ``tensorboard --logdir <out_dir>/tensorboard``."""

    def __init__(self, log_dir: Path, config: Mapping[str, Any], first_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError(
                "report_to='tensorboard' needs the tensorboard package: "
                "pip install 'gvm-budget[tensorboard]'"
            ) from exc
        # On resume, TensorBoard drops what the earlier run logged from `first_step` on.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=first_step or None)
        rows = "\n".join(f"| {k} | {v!r} |" for k, v in config.items())
        self.writer.add_text("config", f"| key | value |\n|---|---|\n{rows}", 0)

    def log(self, record: Mapping[str, Any]) -> None:
        step = record["step"]
        for tag, value in step_values(record).items():
            self.writer.add_scalar(tag, value, step)
        counts = np.asarray(record["alloc_counts"], dtype=np.float64)
        self.writer.add_histogram(HISTOGRAM, counts, step)
        self.writer.flush()  # a live `tensorboard` sees each step as it ends

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run; ``WANDB_MODE=offline`` writes it under ``out_dir/wandb`` only."""

    def __init__(self, out_dir: Path, name: str, config: Mapping[str, Any]) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise RuntimeError(
                "report_to='wandb' needs the wandb package: pip install 'gvm-budget[wandb]' "
                "(WANDB_MODE=offline runs without an account or a network)"
            ) from exc
        self.wandb = wandb
        self.run = wandb.init(name=name, dir=str(out_dir), config=dict(config))

    def log(self, record: Mapping[str, Any]) -> None:
        values: dict[str, Any] = step_values(record)
        values[HISTOGRAM] = self.wandb.Histogram(record["alloc_counts"])
        self.run.log(values, step=record["step"])

    def close(self) -> None:
        self.run.finish()


def open_sink(config: TrainConfig, first_step: int = 0) -> Sink:
    """The sink ``config.report_to`` names; a missing package is an error saying what to install."""
    out, shown = config.output_dir, dataclasses.asdict(config)
    shown.pop("api_token")  # a secret has no place in a dashboard
    if config.report_to == "tensorboard":
        return TensorBoardSink(out / "tensorboard", shown, first_step)
    if config.report_to == "wandb":
        return WandbSink(out, config.run_name, shown)
    return NoSink()
