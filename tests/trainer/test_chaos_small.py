"""benchmarks/chaos.py at CI size: one training run of the tiny model through a SIGKILL of the
service, a SIGKILL of Redis and a SIGSTOP of Redis; the stored totals equal what it generated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

pytestmark = pytest.mark.slow


def test_a_training_run_through_three_faults_reports_every_sample_once(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "chaos.py"),
         "--runs", "1", "--steps", "12", "--out", str(out)],
        cwd=REPO, check=True, timeout=600,
    )  # fmt: skip
    (run,) = json.loads(out.read_text())["runs"]
    assert run["exit_code"] == 0
    assert [f["fault"] for f in run["faults"]] == ["kill service", "kill redis", "pause redis"]
    assert run["fallback_steps"], "the service was never away during a step"
    assert run["fallback_logged"] == len(run["fallback_steps"])  # the log says so, every time
    assert run["spooled_pending"] == 0
    assert run["stored_samples"] == run["generated"]
    assert run["stored_accepted"] == run["accepted"]
