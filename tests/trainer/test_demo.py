"""``gvm-demo``, the quickstart's command, run as a user runs it: a subprocess that starts the
service (embedded Redis) in its own subprocess, trains, and stops everything, also on Ctrl-C;
and prints what the README shows."""

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
from support.readme import README

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
    """Nothing listens at `url` any more (a connection reset mid-answer: still going down)."""
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.ReadError:
        return False
    return False


def shown_output() -> str:
    """The quickstart's output block in the README."""
    text = README.read_text()
    start = text.index("```text\n", text.index("<!-- demo-output -->")) + len("```text\n")
    return text[start : text.index("\n```", start)]


def comparable(output: str) -> str:
    """`gvm-demo`'s output without what varies from run to run: the port, the cache folder's
    parent, timings."""
    output = re.sub(r"http://127\.0\.0\.1:\d+", "http://127.0.0.1:PORT", output)
    output = re.sub(r"\S*/gvm-budget/tiny-", "CACHE/gvm-budget/tiny-", output)
    output = re.sub(r"\| [\d.]+s$", "| Ts", output, flags=re.MULTILINE)
    return re.sub(r", \d+ s$", ", T s", output.strip(), flags=re.MULTILINE)


def test_the_quickstart_demo_prints_what_the_readme_shows(tmp_path: Path) -> None:
    """`gvm-demo` with no flags, as the quickstart runs it: it trains, reports, says where to
    look, stops everything, and prints the README's output block line for line (the run is
    seeded; only the port, the cache folder and timings differ)."""
    started = time.perf_counter()
    done = subprocess.run(
        DEMO, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    url = re.search(r"service ready at (http://\S+)", output)
    assert url is not None, output
    steps = re.findall(r"^step +\d+ \| samples +(\d+) ", output, flags=re.MULTILINE)
    assert steps == ["64"] * 8, output  # the demo's defaults: 8 steps of 64 samples
    for where in (
        "per-step metrics:",
        f"{url[1]}/docs",
        f"{url[1]}/v1/runs/demo/allocations/latest",
    ):
        assert where in output
    assert "gvm-demo: service stopped" in output
    assert refused(url[1])
    out = tmp_path / "runs" / "demo"
    assert "embedded server stopped" in (out / "service.log").read_text()
    assert len((out / "train" / "metrics.jsonl").read_text().splitlines()) == 8
    assert comparable(output) == comparable(shown_output()), (
        "the README's quickstart output is not what gvm-demo prints now; paste this:\n" + output
    )
    print(f"gvm-demo took {time.perf_counter() - started:.1f} s")


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


def ignore_interrupts() -> None:
    """What `nohup cmd &` and some CI runners hand a process: SIGINT (here SIGTERM too) ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_stop_the_demo_even_when_it_inherited_them_ignored(
    tmp_path: Path, signum: signal.Signals
) -> None:
    with subprocess.Popen(
        [*DEMO, *SMALL, "--out-dir", str(tmp_path), "--keep-serving"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=ignore_interrupts,
    ) as process:
        lines = Lines(process)
        try:
            url = lines.until(r"service ready at (http://\S+)")[1]
            lines.until("the service stays up")
            process.send_signal(signum)
            assert process.wait(30) == 130  # before: ignored, until the test's 60 s timeout
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
