"""Run a checks file under pytest inside another virtualenv (verl pins what the main one cannot
take), against the live service, and hold its summary to the expected count."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from support import REPO


def run_checks(python: Path, checks: str, *, build: str, service_url: str, tmp_path: Path,
               expected: int) -> None:  # fmt: skip
    """`python -m pytest checks` in `python`'s venv (built by `build`): every check passes, none
    is skipped, and there are exactly `expected` of them. A missing venv fails in CI."""
    if not python.exists():
        message = f"{python} is missing; build it with `{build}`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GVM_", "VIRTUAL_ENV", "VERL_", "PYTHONPATH"))
    }
    env |= {
        "GVM_TEST_SERVICE_URL": service_url,
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(REPO / "tests"),  # support.readme (the docs' blocks), support.faultproxy
    }
    done = subprocess.run(
        [
            str(python), "-m", "pytest", "--noconftest", "-p", "no:cacheprovider",
            "-q", "-rA", f"--basetemp={tmp_path / 'checks'}", checks,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    summary = re.search(r"(\d+) passed", output)
    assert summary is not None, output[-3000:]
    assert int(summary.group(1)) == expected, output[-3000:]
    assert not re.search(r"\d+ (skipped|failed|error)", output), output[-3000:]
