"""benchmarks/failover.py at CI size: a real 3 + 3 Redis Cluster, 8 trainers, one SIGKILL of a
busy primary per mode. With replica acknowledgement on, no acknowledged report is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

pytestmark = pytest.mark.slow


def test_failover_of_a_busy_primary_loses_no_acknowledged_report(tmp_path: Path) -> None:
    out = tmp_path / "failover.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "failover.py"), "--small", "--out", str(out)],
        cwd=REPO,
        check=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    on, off = result["modes"]["on"], result["modes"]["off"]
    for mode in (on, off):
        assert len(mode["kills"]) == 1
        assert mode["answers_other_than_200_503"] == 0, mode["other_statuses"]
        assert mode["reports_acknowledged"] > 0
    assert on["reports_lost"] == 0, on["lost_report_ids"]
    assert on["samples_stored"] == on["samples_acknowledged"]
