"""The Node.js client (clients/node): its own tests, and its example against the live service.

The example creates a run, reports a step, asks for allocations and checks every answer (exit 1
on a mismatch); here it runs against a real uvicorn + Redis. `node --test` covers the client's
rare paths (retries, timeouts, refusals) against a scripted local server.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest
from support import REPO

NODE_CLIENT = REPO / "clients" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail("node (Node.js 20+) is not on PATH; the Node client needs it")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= 20, f"Node.js 20+ needed, found {version.stdout.strip()}"
    return path


def test_the_client_unit_tests_pass(node: str) -> None:
    done = subprocess.run(
        [node, "--test", "test/"],
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"^# pass (\d+)$", done.stdout, flags=re.MULTILINE)
    assert passed is not None, done.stdout[-2000:]
    assert int(passed.group(1)) >= 10, done.stdout[-2000:]
    assert re.search(r"^# fail 0$", done.stdout, flags=re.MULTILINE)


def test_the_example_checks_the_live_service(node: str, service_url: str, run_id: str) -> None:
    done = subprocess.run(
        [node, "example.js", service_url],
        cwd=NODE_CLIENT,
        env={"GVM_RUN_ID": run_id, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert not [line for line in lines if line.startswith("FAIL")]
    assert sum(line.startswith("ok ") for line in lines) == 15, done.stdout
    assert lines[-1] == "all checks passed"
    # It cleaned up after itself.
    assert httpx.get(f"{service_url}/v1/runs/{run_id}", timeout=10).status_code == 404
