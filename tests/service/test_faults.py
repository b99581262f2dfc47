"""Fault injection with `faultproxy.FaultProxy` between the service and Redis, and between the
client and the service.

- Redis stalls (accepts, reads, never answers): every route answers 503 + Retry-After within
  GVM_REDIS_DEADLINE_S, concurrent requests too, and the service recovers by itself when Redis
  answers again, with no answer mixed up between requests.
- Reports through resets, dropped connections, lost answers (applied by the service, never heard
  by the client) and late requests: the client applies every report exactly once, checked
  against a ledger of what was sent.
- 1,000 injected faults on both sides: the service's open file descriptors, its connections to
  Redis and its memory stay flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.faultproxy import FaultProxy, Mode, parse_address

from trainer_client import AsyncBudgetClient, BudgetClient, RetryPolicy

# Short Redis timeouts keep a stalled request (and so the test) short.
STALL_SETTINGS = {
    "GVM_REDIS_TIMEOUT_S": "0.25",
    "GVM_REDIS_DEADLINE_S": "1.0",
    "GVM_RETRY_AFTER_S": "3",
}
DEADLINE_S = 1.0
SLACK_S = 0.75  # scheduling on a loaded 2-core machine; a hang would take far longer


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(parse_address(redis_url), delay_s=0.05) as proxy:
        yield proxy


def _report(
    report_id: str, step: int, prompts: dict[str, tuple[int, int, float]]
) -> dict[str, Any]:
    """A report body; prompts: id -> (samples, accepted, grad_norm_sum)."""
    return {
        "report_id": report_id,
        "step": step,
        "observations": [
            {"prompt_id": pid, "samples": s, "accepted": a, "grad_norm_sum": g,
             "grad_norm_count": a}
            for pid, (s, a, g) in prompts.items()
        ],
    }  # fmt: skip


def _timed(client: httpx.Client, method: str, path: str, body: Any = None) -> tuple[float, Any]:
    started = time.monotonic()
    answer = client.request(method, path, json=body)
    return time.monotonic() - started, answer


def _assert_unavailable(answer: httpx.Response, elapsed: float, what: str) -> None:
    assert answer.status_code == 503, (what, answer.status_code, answer.text)
    assert answer.headers["retry-after"] == STALL_SETTINGS["GVM_RETRY_AFTER_S"], what
    assert answer.json()["error"]["code"] == "redis_unavailable", what
    assert elapsed < DEADLINE_S + SLACK_S, (what, elapsed)


def test_a_stalled_redis_is_a_503_within_the_deadline_and_recovers(
    start_service: Callable[..., Any], redis_proxy: FaultProxy, run_id: str
) -> None:
    service = start_service(redis=redis_proxy.redis_url, **STALL_SETTINGS)
    other = f"{run_id}-other"
    first = _report("r1", 1, {"a": (8, 2, 3.0)})
    with httpx.Client(base_url=service.url, timeout=30) as client:
        for run in (run_id, other):
            assert client.put(f"/v1/runs/{run}", json={}).status_code == 201
        assert client.post(f"/v1/runs/{run_id}/observations", json=first).status_code == 200

        redis_proxy.mode = "blackhole"  # pooled connections and new ones alike stop answering
        routes = [
            ("GET", f"/v1/runs/{run_id}", None),
            ("PUT", f"/v1/runs/{run_id}", {}),
            ("PATCH", f"/v1/runs/{run_id}", {"alpha": 0.01}),
            ("POST", f"/v1/runs/{run_id}/observations", _report("r2", 2, {"a": (4, 1, 1.0)})),
            ("POST", f"/v1/runs/{run_id}/allocations", {"prompt_ids": ["a", "b"], "budget": 8}),
            ("GET", f"/v1/runs/{run_id}/allocations/latest", None),
            ("GET", f"/v1/runs/{run_id}/prompts/a", None),
            ("GET", f"/v1/runs/{run_id}/summary", None),
            ("DELETE", f"/v1/runs/{other}", None),
            ("GET", "/readyz", None),
        ]
        for method, path, body in routes:
            elapsed, answer = _timed(client, method, path, body)
            _assert_unavailable(answer, elapsed, f"{method} {path}")
        assert client.get("/healthz").status_code == 200  # the process itself is fine

        # 24 requests at once, more than fit in flight comfortably: none hangs past the deadline.
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(lambda _: _timed(client, "GET", f"/v1/runs/{run_id}"),
                                    range(24)))  # fmt: skip
        for elapsed, answer in results:
            _assert_unavailable(answer, elapsed, "concurrent GET")
        assert redis_proxy.faults["blackhole"] > 0

        redis_proxy.clear()  # Redis answers again; nobody restarts anything
        started = time.monotonic()
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() - started < 10, "the service did not recover by itself"
            time.sleep(0.05)

        # Every answer belongs to its own request (no reply of a cancelled command read by the
        # next one), the PUT/PATCH/report/DELETE that timed out may or may not have been
        # applied, and the run's totals are exact once the report is re-sent.
        with ThreadPoolExecutor(8) as pool:
            runs = list(pool.map(lambda i: client.get(f"/v1/runs/{(run_id, other)[i % 2]}"),
                                 range(40)))  # fmt: skip
        for i, answer in enumerate(runs):
            if answer.status_code == 200:
                assert answer.json()["run_id"] == (run_id, other)[i % 2]
            else:  # the DELETE above may have reached Redis before the stall cut it off
                assert (i % 2, answer.json()["error"]["code"]) == (1, "run_not_found")
        second = _report("r2", 2, {"a": (4, 1, 1.0)})
        assert client.post(f"/v1/runs/{run_id}/observations", json=second).status_code == 200
        assert client.post(f"/v1/runs/{run_id}/observations", json=first).json()["duplicate"]
        summary = client.get(f"/v1/runs/{run_id}/summary").json()
        assert (summary["samples"], summary["accepted"], summary["grad_norm_sum"]) == (12, 3, 4)


def test_pooled_connections_reset_while_idle_are_replaced_transparently(
    start_service: Callable[..., Any], redis_proxy: FaultProxy, run_id: str
) -> None:
    """A Redis restart or an idle-connection reaper resets pooled connections between requests;
    the next requests must reconnect, not fail (under uvloop they were 500s: a RuntimeError
    from writing to the closed transport)."""
    service = start_service(redis=redis_proxy.redis_url, **STALL_SETTINGS)
    with httpx.Client(base_url=service.url, timeout=30) as client:
        assert client.put(f"/v1/runs/{run_id}", json={}).status_code == 201
        get = lambda _: client.get(f"/v1/runs/{run_id}").status_code  # noqa: E731
        for _ in range(3):
            with ThreadPoolExecutor(8) as pool:  # several pooled connections in use
                assert set(pool.map(get, range(32))) == {200}
            time.sleep(0.1)
            assert redis_proxy.reset_all() >= 1
            time.sleep(0.1)  # the resets reach the service while its connections are idle
            with ThreadPoolExecutor(8) as pool:
                assert set(pool.map(get, range(32))) == {200}


# -- the client through faults ------------------------------------------------------------


@pytest.fixture
def service_proxy(service_url: str) -> Iterator[FaultProxy]:
    # 0.4 s: longer than the clients' read timeout below, so a delayed request arrives at the
    # service after the client gave up on it and sent it again.
    with FaultProxy(parse_address(service_url), delay_s=0.4) as proxy:
        yield proxy


CLIENT_FAULTS: tuple[Mode, ...] = ("reset", "drop", "cut", "delay", "blackhole")
# Every delayed or blackholed request costs one read timeout: short, or the test waits them out.
CLIENT_TIMEOUT = httpx.Timeout(0.25, connect=1.0)
CLIENT_RETRY = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)


class Ledger:
    """What the load generator sent, per prompt, each report counted once."""

    def __init__(self) -> None:
        self.samples: dict[str, int] = {}
        self.accepted: dict[str, int] = {}

    def add(self, observations: list[dict[str, Any]]) -> None:
        for o in observations:
            self.samples[o["prompt_id"]] = self.samples.get(o["prompt_id"], 0) + o["samples"]
            self.accepted[o["prompt_id"]] = self.accepted.get(o["prompt_id"], 0) + o["accepted"]

    def check(self, client: BudgetClient, run_id: str) -> None:
        for prompt_id, samples in self.samples.items():
            stats = client.prompt_stats(run_id, prompt_id)
            assert (stats.samples, stats.accepted) == (samples, self.accepted[prompt_id])
        summary = client.summary(run_id)
        assert summary.samples == sum(self.samples.values())
        assert summary.accepted == sum(self.accepted.values())


def _observations(rng: random.Random) -> list[dict[str, Any]]:
    prompts = rng.sample([f"p{i}" for i in range(12)], 3)
    out = []
    for pid in prompts:
        samples = rng.randint(1, 16)
        out.append({"prompt_id": pid, "samples": samples, "accepted": rng.randint(0, samples)})
    return out


# Each delayed or blackholed turn waits out a read timeout: 30 steps (~5 s) in the fast tier,
# the full 80 (~13 s) in the slow one.
@pytest.mark.parametrize("steps", [30, pytest.param(80, marks=pytest.mark.slow)])
def test_the_client_applies_every_report_exactly_once_through_faults(
    service_url: str, service_proxy: FaultProxy, run_id: str, tmp_path: Path, steps: int
) -> None:
    rng = random.Random(7)
    ledger = Ledger()
    with (
        BudgetClient(service_url) as direct,
        BudgetClient(
            service_proxy.http_url,
            timeout=CLIENT_TIMEOUT,
            retry=CLIENT_RETRY,
            spool_path=tmp_path / "spool.jsonl",
        ) as client,
    ):
        direct.put_run(run_id)
        for step in range(steps):
            # Up to 4 faults in a row: more than the 3 attempts, so some reports are spooled
            # and replayed later; a lost answer (cut) means the service applied it already.
            service_proxy.inject(*rng.choices(CLIENT_FAULTS, k=rng.choice((0, 1, 2, 3))))
            observations = _observations(rng)
            ledger.add(observations)
            result = client.report(run_id, step, observations)
            assert result.spooled or result.applied in (0, 3), result
        service_proxy.clear()
        assert client.flush() == 0
        ledger.check(direct, run_id)
        stats = client.stats
    assert service_proxy.faults["cut"] >= steps // 8
    assert service_proxy.faults["delay"] >= steps // 8
    assert stats.spooled > 0
    assert stats.replayed == stats.spooled


async def test_the_async_client_applies_every_report_exactly_once_through_faults(
    service_url: str, service_proxy: FaultProxy, run_id: str
) -> None:
    rng = random.Random(8)
    ledger = Ledger()
    with BudgetClient(service_url) as direct:
        direct.put_run(run_id)
    async with AsyncBudgetClient(
        service_proxy.http_url, timeout=CLIENT_TIMEOUT, retry=CLIENT_RETRY
    ) as client:

        async def trainer(rank: int) -> None:
            for step in range(25):
                observations = _observations(rng)
                ledger.add(observations)
                await client.report(run_id, step, observations, report_id=f"{rank}-{step}")

        service_proxy.mode = "cut"  # ... and every third turn loses its answer
        pattern: list[Mode] = ["pass", "pass", "cut"]
        service_proxy.inject(*(pattern * 200))
        await asyncio.gather(*(trainer(rank) for rank in range(4)))
        service_proxy.clear()
        assert await client.flush() == 0
    with BudgetClient(service_url) as direct:
        ledger.check(direct, run_id)
    assert service_proxy.faults["cut"] >= 30


# -- no leaks ---------------------------------------------------------------------------------


def _process_usage(pid: int) -> tuple[int, int, int]:
    """(open file descriptors, of which sockets, resident memory in KiB) of a process."""
    fds = os.listdir(f"/proc/{pid}/fd")
    sockets = 0
    for fd in fds:
        with contextlib.suppress(OSError):  # closed while we looked
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return len(fds), sockets, rss


@pytest.mark.slow
def test_a_thousand_faults_leak_no_connections_and_no_memory(
    start_service: Callable[..., Any], redis_proxy: FaultProxy, run_id: str
) -> None:
    service = start_service(
        redis=redis_proxy.redis_url,
        GVM_REDIS_TIMEOUT_S="0.1",
        GVM_REDIS_DEADLINE_S="0.3",
        GVM_REDIS_MAX_CONNECTIONS="16",
    )
    pid = service.process.pid
    rng = random.Random(11)
    redis_faults: list[Mode] = ["reset", "drop", "cut", "delay", "blackhole"]
    http_faults: list[Mode] = ["reset", "drop", "cut", "blackhole"]
    with (
        FaultProxy(parse_address(service.url), delay_s=0.05) as http_proxy,
        httpx.Client(base_url=service.url, timeout=10) as direct,
    ):
        assert direct.put(f"/v1/runs/{run_id}", json={}).status_code == 201
        sent: dict[str, dict[str, Any]] = {}
        statuses: list[int] = []
        counter = itertools.count()

        def injected() -> int:
            return redis_proxy.injected + http_proxy.injected

        def one_request(i: int) -> int:
            """A report, an allocation or a read, through the HTTP proxy, after queueing faults
            for the next Redis commands and the next HTTP request (of whichever worker)."""
            redis_proxy.inject(*rng.choices(redis_faults, k=rng.choice((0, 1, 2))))
            if rng.random() < 0.3:
                http_proxy.inject(rng.choice(http_faults))
            if i % 50 == 49:
                redis_proxy.reset_all()
            kind = i % 3
            with httpx.Client(base_url=http_proxy.http_url, timeout=0.5) as client:
                try:
                    if kind == 0:
                        body = _report(f"r{i}", i, {f"p{i % 7}": (4, 1, 1.0)})
                        sent[body["report_id"]] = body
                        answer = client.post(f"/v1/runs/{run_id}/observations", json=body)
                    elif kind == 1:
                        body = {"prompt_ids": ["p1", "p2"], "budget": 8}
                        answer = client.post(f"/v1/runs/{run_id}/allocations", json=body)
                    else:
                        answer = client.get(f"/v1/runs/{run_id}/summary")
                except httpx.TransportError:
                    return 0  # the fault hit this connection
            if answer.status_code == 503:
                assert answer.headers["retry-after"], answer.headers
                assert answer.json()["error"]["code"] == "redis_unavailable", answer.text
            return answer.status_code

        def worker(until: int) -> None:
            while injected() < until:
                statuses.append(one_request(next(counter)))

        def faults(count: int) -> None:
            """8 clients at once until `count` more faults were injected."""
            until = injected() + count
            with ThreadPoolExecutor(8) as pool:
                for future in [pool.submit(worker, until) for _ in range(8)]:
                    future.result()

        faults(100)  # warm-up: allocator, pools, lazily imported modules
        time.sleep(0.5)  # blackholed connections time out
        before = _process_usage(pid)
        faults_before = injected()
        faults(1000)
        redis_proxy.clear()
        http_proxy.clear()
        time.sleep(0.5)
        assert direct.get("/readyz").status_code == 200
        after = _process_usage(pid)
        count = injected() - faults_before

        # Exactly once, even here: re-send every report (as a client would) and compare.
        for body in sent.values():
            answer = direct.post(f"/v1/runs/{run_id}/observations", json=body)
            assert answer.status_code == 200, answer.text
        summary = direct.get(f"/v1/runs/{run_id}/summary").json()
        assert (summary["samples"], summary["accepted"]) == (4 * len(sent), len(sent))

    print(
        f"\n{count} faults (redis {dict(redis_proxy.faults)}, http {dict(http_proxy.faults)})"
        f" over {len(statuses)} requests; fds/sockets/rss_kib before {before}, after {after};"
        f" redis connections open {redis_proxy.open_connections};"
        f" statuses {dict(Counter(statuses))}"
    )
    assert count >= 1000
    assert set(statuses) <= {0, 200, 503}, Counter(statuses)  # 0: our own connection died
    assert statuses.count(200) > len(statuses) // 4
    assert after[0] <= before[0] + 8, (before, after)  # file descriptors
    assert after[1] <= before[1] + 8, (before, after)  # sockets
    assert after[2] <= before[2] + 20 * 1024, (before, after)  # RSS, KiB
    assert redis_proxy.open_connections <= 16  # GVM_REDIS_MAX_CONNECTIONS
