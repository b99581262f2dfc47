"""The benchmark scripts run on a fresh clone: each one, end to end at a tiny size.

The committed results come from full-size runs (README); these runs only prove that the scripts
still work and write what the README's tables are built from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

pytestmark = pytest.mark.slow


def run_script(name: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args],
        cwd=REPO,
        check=True,
        timeout=600,
    )


def test_learning_benchmark_runs_and_summarises(tmp_path: Path) -> None:
    run_script(
        "learning.py",
        *("--seeds", "0", "--steps", "2", "--strategies", "uniform", "gvm-online"),
        *("--batch-size", "4", "--budget", "16", "--train-prompts", "16"),
        *("--eval-prompts", "16", "--eval-train-prompts", "8", "--eval-every", "2"),
        *("--jobs", "2", "--out", str(tmp_path), "--name", "smoke"),
    )
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["settings"]["model"] == ""
    assert [(run["strategy"], run["generated"]) for run in result["runs"]] == [
        ("uniform", 32),
        ("gvm-online", 32),
    ]
    for run in result["runs"]:
        assert run["curve"]["steps"] == [0, 2]
        assert run["curve"]["samples"] == [0, 32]
    assert set(result["summary"]) == {"held_out", "train_pool"}
    paired = result["summary"]["train_pool"]["gvm-online"]["final_vs_uniform"]
    assert paired["wins"] + paired["ties"] + paired["losses"] == 1
    assert 0 < paired["sign_test_p"] <= 1
    assert (tmp_path / "smoke.png").stat().st_size > 0


def test_grad_norms_benchmark_agrees_and_groups_by_length(tmp_path: Path) -> None:
    output = tmp_path / "grad_norms.json"
    run_script("grad_norms.py", "--batch", "8", "--repeats", "1", "--output", str(output))
    result = json.loads(output.read_text())
    assert result["machine"]["device"] == "cpu"
    for workload in result["workloads"].values():
        assert sum(size for size, _ in workload["batched_pass_shapes"]) == 8
        for method in ("batched", "per_sample", "published"):
            assert workload[method]["max_relative_difference"] < 1e-4
            assert len(workload[method]["seconds"]) == 1
