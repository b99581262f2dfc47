"""benchmarks/capacity.py end to end at its CI size (~3 s): a real redis-server, the service's
handlers, and what the capacity figures in docs/deployment.md are built from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import REPO


def test_capacity_benchmark_measures_memory_and_cpu(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "capacity.py"), "--small", "--out", str(out)],
        cwd=REPO,
        check=True,
        timeout=120,
    )
    result = json.loads(out.read_text())
    memory, run, cpu = result["memory"], result["run"], result["cpu"]
    assert memory["prompts"] == 2 * 1024
    # a 56-byte record and a 14-byte id cannot take less
    assert memory["per_prompt_bytes_memory_usage"] > 56 + 14
    assert (run["report_ids"], run["history_points"]) == (2 + 5, 1 + 5)
    assert run["fixed_bytes"] == sum(run["key_bytes"][k] for k in ("run", "totals", "latest"))
    # one script call per report, two per allocation (read, then save)
    assert cpu["report"]["commandstats"]["evalsha"]["calls"] == 5
    assert cpu["allocate"]["commandstats"]["evalsha"]["calls"] == 10
    for phase in ("report", "allocate"):
        assert cpu[phase]["cpu_ms_per_request_main_thread"] > 0
        assert cpu[phase]["shard_max_rps"] > 0
    assert result["machine"]["loadavg"]
