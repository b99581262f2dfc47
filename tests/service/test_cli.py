"""`gvm-budget serve` as a user runs it: embedded Redis by default, clean shutdown, workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from budget_service.embedded import free_port

GVM_BUDGET = str(Path(sys.executable).with_name("gvm-budget"))


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GVM_", "REDIS_", "PROMETHEUS_MULTIPROC_DIR"))
    }
    return {**env, "GVM_LOG_LEVEL": "warning", **extra}


class Served:
    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready; log:\n{self.log.read_text()}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def server_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"\(pid (\d+)\)", self.log.read_text())]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    started: list[Served] = []

    def start(*args: str, **env: str) -> Served:
        port = free_port()
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [GVM_BUDGET, "serve", "--port", str(port), *args],
                cwd=tmp_path,
                env=cli_env(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        served = Served(process, port, log)
        started.append(served)
        return served

    try:
        yield start
    finally:
        for served in started:
            if served.process.poll() is None:
                served.process.kill()
                served.process.wait()


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


def test_serve_without_redis_url_runs_an_embedded_server(serve: object, tmp_path: Path) -> None:
    served = serve()  # type: ignore[operator]
    served.wait_ready()
    [server_pid] = served.server_pids()
    with httpx.Client(base_url=served.url) as client:
        assert client.put("/v1/runs/cli-run", json={}).status_code == 201
        body = {"report_id": "r", "step": 0,
                "observations": [{"prompt_id": "a", "samples": 3, "accepted": 1}]}  # fmt: skip
        assert client.post("/v1/runs/cli-run/observations", json=body).json()["applied"] == 1
    assert served.stop() == 0
    assert _gone(server_pid), "the embedded server outlived the service"
    assert (tmp_path / ".gvm-budget" / "appendonlydir").is_dir()  # default data dir: ./.gvm-budget
    assert "embedded server stopped" in served.log.read_text()

    again = serve()  # type: ignore[operator]
    again.wait_ready()
    with httpx.Client(base_url=again.url) as client:
        assert client.get("/v1/runs/cli-run/prompts/a").json()["samples"] == 3
    assert again.stop() == 0


def test_workers_share_one_embedded_server_and_aggregate_metrics(
    serve: object, tmp_path: Path
) -> None:
    served = serve("--workers", "2", GVM_DATA_DIR=str(tmp_path / "data"))  # type: ignore[operator]
    served.wait_ready()
    assert len(served.server_pids()) == 1
    with httpx.Client(base_url=served.url) as client:
        for _ in range(20):  # new connections: both workers get some
            with httpx.Client(base_url=served.url) as fresh:
                assert fresh.get("/healthz").status_code == 200
        text = client.get("/metrics").text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith('gvm_http_request_duration_seconds_count{method="GET",route="/healthz"')
    )
    assert float(line.split()[-1]) == 20  # counted across workers (multiprocess mode)
    assert served.stop() == 0


def test_missing_binary_is_a_clear_error(serve: object, tmp_path: Path) -> None:
    served = serve(GVM_REDIS_SERVER=str(tmp_path / "no-such-redis"))  # type: ignore[operator]
    assert served.process.wait(30) == 1
    assert "is not an executable file" in served.log.read_text()


def test_invalid_settings_exit_2_naming_the_variable(serve: object) -> None:
    served = serve(GVM_LOG_FORMAT="xml", GVM_PORT="abc")  # type: ignore[operator]
    assert served.process.wait(30) == 2
    log = served.log.read_text()
    assert "GVM_LOG_FORMAT='xml': Input should be 'text' or 'json'" in log
    assert "GVM_PORT='abc': Input should be a valid integer" in log


def test_uvicorn_lines_have_the_service_log_format(serve: object) -> None:
    served = serve(GVM_LOG_LEVEL="info")  # type: ignore[operator]
    served.wait_ready()
    assert served.stop() == 0
    lines = [line for line in served.log.read_text().splitlines() if line.strip()]
    assert any("Uvicorn running on" in line for line in lines)
    ours = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+\+00:00 (debug|info|warning|error) +\S")
    for line in lines:  # the CLI's own messages start with `gvm-budget:`
        assert line.startswith("gvm-budget: ") or ours.match(line), line


def test_help_lists_serve() -> None:
    out = subprocess.run(
        [GVM_BUDGET, "serve", "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--host", "--port", "--workers"):
        assert flag in out.stdout
