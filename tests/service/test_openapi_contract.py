"""The committed OpenAPI contract (openapi.json) is exactly what the service serves.

A change to any route, model, bound or example must come with a regenerated openapi.json, so
API changes are reviewed as a diff of that file. On failure the message says how to regenerate.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path

import httpx

from budget_service.openapi import COMMITTED, REGENERATE, render, schema

HINT = f"openapi.json is out of date; regenerate it with `{REGENERATE}` and commit the diff"


def _diff(committed: str, served: str) -> str:
    lines = difflib.unified_diff(
        committed.splitlines(), served.splitlines(), "openapi.json (committed)", "served", n=2
    )
    return "\n".join(list(lines)[:80])


def test_the_live_service_serves_the_committed_schema(service_url: str) -> None:
    served = httpx.get(f"{service_url}/openapi.json", timeout=10).json()
    committed = COMMITTED.read_text()
    assert json.loads(committed) == served, f"{HINT}\n{_diff(committed, render(served))}"


def test_the_committed_file_is_the_canonical_dump() -> None:
    # Byte for byte: sorted keys and fixed formatting, so regeneration never reorders anything.
    committed = COMMITTED.read_text()
    assert committed == render(schema()), f"{HINT}\n{_diff(committed, render(schema()))}"


def test_the_design_contract_is_in_the_file() -> None:
    # DESIGN.md section 3: the paths and field names external trainers code against.
    document = json.loads(COMMITTED.read_text())
    assert set(document["paths"]) >= {
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/observations",
        "/v1/runs/{run_id}/allocations",
        "/v1/runs/{run_id}/allocations/latest",
        "/v1/runs/{run_id}/prompts/{prompt_id}",
        "/v1/runs/{run_id}/summary",
    }
    models = document["components"]["schemas"]
    assert set(models["Observation"]["properties"]) >= {
        "prompt_id", "samples", "accepted", "grad_norms", "grad_norm_sum", "grad_norm_count",
    }  # fmt: skip
    assert set(models["ReportRequest"]["properties"]) == {"report_id", "step", "observations"}
    assert set(models["AllocationRequest"]["properties"]) == {
        "prompt_ids", "budget", "step", "drawn", "drawn_accepted",
    }  # fmt: skip
    strategies = models["RunConfig"]["properties"]["strategy"]["enum"]
    assert set(strategies) == {"gvm", "gvm-paper", "uniform", "knapsack"}
    assert set(models["AllocationItem"]["properties"]) >= {
        "prompt_id", "samples", "p_hat", "g_hat", "weight", "reason",
    }  # fmt: skip


def test_check_mode_fails_on_a_stale_file_and_names_the_command(tmp_path: Path) -> None:
    stale = tmp_path / "openapi.json"
    document = json.loads(COMMITTED.read_text())
    document["info"]["version"] = "0.0.0-stale"
    stale.write_text(render(document))
    command = [sys.executable, "-m", "budget_service.openapi", "--check", "--output", str(stale)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert REGENERATE in done.stderr

    regenerate = [sys.executable, "-m", "budget_service.openapi", "--output", str(stale)]
    subprocess.run(regenerate, capture_output=True, timeout=120, check=True)
    assert stale.read_text() == COMMITTED.read_text()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
