"""The warm-up's first build says it happens once and shows a progress bar with an ETA."""

import re
from pathlib import Path

import pytest

from trainer_client.trainer.warmup import WarmupConfig, warm_up

SHORT = WarmupConfig(
    steps=6, batch_size=8, levels=(1, 2), level_weights=(1, 1), eval_prompts_per_level=2,
    eval_samples=2,
)  # fmt: skip


def test_the_first_build_shows_progress_and_a_cache_hit_is_silent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warm_up(tmp_path, config=SHORT, progress=True)
    out, err = capsys.readouterr()
    assert "once" in out
    assert str(tmp_path) in out  # where it is cached
    assert re.search(r"warm-up: 100%.*\b6/6 \[[\d:]+<[\d:]+", err), err  # done, elapsed<ETA
    warm_up(tmp_path, config=SHORT, progress=True)
    assert capsys.readouterr() == ("", "")
