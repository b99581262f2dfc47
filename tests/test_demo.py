"""``gvm-demo``, the quickstart's command, run as a user runs it: a subprocess that starts the
service (embedded Redis) in its own subprocess, trains, and stops everything, also on Ctrl-C."""

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from trainer_client import BudgetClient
from trainer_client.trainer.warmup import warm_up

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "trainer_client.trainer.demo"]
SMALL = ["--steps", "3", "--batch-size", "4", "--budget", "16"]


@pytest.fixture(scope="module", autouse=True)
def warm_model() -> None:
    warm_up()  # the demo's model, built (or found) in the user cache before the clock starts


class Lines:
    """A process's merged output, line by line, with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout

        def pump() -> None:
            for line in stdout:
                self._queue.put(line)
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, pattern: str, timeout: float = 300) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found
        raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(self.seen)}")

    def rest(self) -> str:
        while (line := self._queue.get(timeout=60)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_the_demo_trains_reports_and_cleans_up(tmp_path: Path) -> None:
    started = time.perf_counter()
    done = subprocess.run(
        [*DEMO, *SMALL, "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    url = re.search(r"service ready at (http://\S+)", output)
    assert url is not None, output
    assert len(re.findall(r"^step +\d+ \| samples +16 ", output, flags=re.MULTILINE)) == 3
    for where in (
        "per-step metrics:",
        f"{url[1]}/docs",
        f"{url[1]}/v1/runs/demo/allocations/latest",
    ):
        assert where in output
    assert "gvm-demo: service stopped" in output
    assert refused(url[1])
    assert "embedded server stopped" in (tmp_path / "service.log").read_text()
    assert len((tmp_path / "train" / "metrics.jsonl").read_text().splitlines()) == 3
    print(f"gvm-demo ({' '.join(SMALL)}) took {time.perf_counter() - started:.1f} s")


def test_ctrl_c_stops_the_service_it_kept_up(tmp_path: Path) -> None:
    with subprocess.Popen(
        [*DEMO, *SMALL, "--out-dir", str(tmp_path), "--keep-serving"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        lines = Lines(process)
        try:
            url = lines.until(r"service ready at (http://\S+)")[1]
            lines.until("the service stays up")
            with BudgetClient(url) as client:  # still serving after the training run
                assert client.latest_allocation("demo").step == 2
            process.send_signal(signal.SIGINT)
            assert process.wait(60) == 130
            assert "the service is stopped" in lines.rest()
        finally:
            if process.poll() is None:
                process.kill()
    assert refused(url)
    assert "embedded server stopped" in (tmp_path / "service.log").read_text()


def test_a_killed_demo_takes_its_service_down(tmp_path: Path) -> None:
    with subprocess.Popen(
        [*DEMO, *SMALL, "--out-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        lines = Lines(process)
        url = lines.until(r"service ready at (http://\S+)")[1]
        process.kill()  # SIGKILL: no handler runs; the service gets SIGTERM from the kernel
        process.wait(30)
        lines.rest()
    deadline = time.monotonic() + 30
    while not refused(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert refused(url)
    log = tmp_path / "service.log"
    while "embedded server stopped" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "embedded server stopped" in log.read_text()
