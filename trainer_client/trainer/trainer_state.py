"""What a run leaves to resume from: the checkpoint (a model folder plus ``trainer_state.pt``)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.pt"


def save_checkpoint(out: Path, model: Any, tokenizer: Any, state: dict[str, Any]) -> Path:
    """Model folder + trainer state, written aside and swapped in (a crash keeps the old one)."""
    final, tmp, old = out / CHECKPOINT, out / f".{CHECKPOINT}.tmp", out / f".{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    rng = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save({**state, "rng": rng}, tmp / STATE_FILE)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(out: Path) -> dict[str, Any]:
    path = out / CHECKPOINT / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    state: dict[str, Any] = torch.load(path, weights_only=False)  # our own file
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def keep_metrics_before(path: Path, step: int) -> None:
    """On resume, drop lines of steps after the checkpoint (they are about to run again)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] < step]
    path.write_text("".join(f"{line}\n" for line in kept))
