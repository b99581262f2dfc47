"""The supervised warm-up: cached, deterministic, and leaves a spread of acceptance rates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer_client.trainer.warmup import WarmupConfig, read_report, single_threaded, warm_up

SHORT = WarmupConfig(
    steps=6,
    batch_size=8,
    levels=(1, 2),
    level_weights=(1, 1),
    eval_prompts_per_level=2,
    eval_samples=2,
)


def test_short_warmup_is_cached_deterministic_and_reported(tmp_path: Path) -> None:
    folder = warm_up(tmp_path / "a", config=SHORT)
    report = read_report(folder)
    assert report["warmup"]["steps"] == 6
    assert report["final_loss"] < report["first_loss"]
    levels = report["levels"]
    assert [level["level"] for level in levels] == [1, 2]
    assert all(level["prompts"] == 2 for level in levels)
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()

    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert warm_up(tmp_path / "a", config=SHORT) == folder  # a cache hit, not a rebuild
    assert (folder / "model.safetensors").stat().st_mtime_ns == before

    again = warm_up(tmp_path / "b", config=SHORT)
    first, second = load_file(folder / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert read_report(again)["levels"] == levels

    assert dataclasses.replace(SHORT, steps=7).key() != SHORT.key()  # another folder


@pytest.mark.slow
def test_default_warmup_spreads_acceptance_across_levels() -> None:
    """The RL starting point: easy levels often solved, hard ones rarely, many prompts mixed."""
    report = read_report(warm_up())  # the user cache, shared with the trainer and demo tests
    levels = {level["level"]: level for level in report["levels"]}
    rates = [levels[k]["acceptance"] for k in sorted(levels)]
    assert rates[0] > 0.25, rates
    assert rates[-1] < rates[0] / 4, rates
    assert 0 < sum(rates) / len(rates) < 1
    # Prompts with some but not all samples accepted are where RAFT and GVM get their signal.
    mixed = [1 - levels[k]["none_correct"] - levels[k]["all_correct"] for k in sorted(levels)]
    assert max(mixed) > 0.5, mixed


def test_single_threaded_restores_the_thread_count() -> None:
    threads = torch.get_num_threads()
    with single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads


def test_level_weights_must_match_levels(tmp_path: Path) -> None:
    config = dataclasses.replace(SHORT, level_weights=(1, 1, 1))
    with pytest.raises(ValueError, match="level_weights has 3 entries for 2 levels"):
        warm_up(tmp_path, config=config)
