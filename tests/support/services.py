"""Live service processes for tests: `ServiceProcess` and the environment it runs with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import httpx

from budget_service.embedded import free_port
from support import REPO


class ServiceProcess:
    """A live `uvicorn` serving the app in a child process (stopped with SIGTERM)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        for _ in range(3):
            self.port = free_port()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        sys.executable, "-m", "uvicorn", "budget_service.app:create_app",
                        "--factory", "--host", "127.0.0.1", "--port", str(self.port),
                        "--no-access-log", "--log-level", "warning",
                    ],
                    env=self.env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            if self._wait_healthy(timeout):
                return
            self.stop()
        raise RuntimeError(f"service did not start; log:\n{self.log_path.read_text()[-3000:]}")

    def _wait_healthy(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def service_env(redis_url: str, **settings: str) -> dict[str, str]:
    """The environment of a service process: this one's, minus GVM_*/REDIS_*, plus `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GVM_", "REDIS_", "PROMETHEUS_MULTIPROC_DIR"))
    }
    env.update({"REDIS_URL": redis_url, "GVM_LOG_LEVEL": "warning", **settings})
    return env
