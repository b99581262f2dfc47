"""Retries, fallback and the spool against the live service, through a proxy that injects faults.

``HttpFaultProxy`` (tests/support/http_faults.py) sits between the client and the real service
(real Redis behind it) and, request by request, answers 503 itself, drops the connection before
forwarding, or forwards and then drops the connection so the service has applied the request but
the client never hears it. ``stop()``/``start()`` take the service away entirely (connection
refused) and bring it back.
Every test checks the stored totals, so "applied exactly once" is measured, not assumed.
"""

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.http_faults import HttpFaultProxy

from trainer_client import (
    AsyncBudgetClient,
    BudgetClient,
    InvalidRequestError,
    RetryPolicy,
    UnavailableError,
)

FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05)
OBS = [
    {"prompt_id": "a", "samples": 8, "accepted": 3, "grad_norms": [1.0, 2.0, 3.0]},
    {"prompt_id": "b", "samples": 4, "accepted": 0},
]


@pytest.fixture
def proxy(service_url: str) -> Iterator[HttpFaultProxy]:
    p = HttpFaultProxy(service_url)
    p.start()
    yield p
    p.stop()


@pytest.fixture
def direct(service_url: str) -> Iterator[BudgetClient]:
    """A fault-free client, to set up runs and read the stored totals."""
    with BudgetClient(service_url) as c:
        yield c


def assert_applied(direct: BudgetClient, run_id: str, times: int) -> None:
    a, b = direct.prompt_stats(run_id, "a"), direct.prompt_stats(run_id, "b")
    assert (a.samples, a.accepted, a.grad_norm_sum, a.grad_norm_count) == (
        8 * times,
        3 * times,
        6.0 * times,
        3 * times,
    )
    assert (b.samples, b.accepted) == (4 * times, 0)


def test_503s_are_retried(proxy: HttpFaultProxy, direct: BudgetClient, run_id: str) -> None:
    direct.put_run(run_id)
    proxy.faults.extend(["503", "503"])
    with BudgetClient(proxy.url, retry=FAST) as c:
        result = c.report(run_id, 0, OBS)
    assert result.applied == 2
    assert not result.duplicate
    assert c.stats.retries == 2
    assert_applied(direct, run_id, 1)


def test_an_answer_lost_after_the_service_applied_it(
    proxy: HttpFaultProxy, direct: BudgetClient, run_id: str
) -> None:
    direct.put_run(run_id)
    proxy.faults.extend(["drop_after", "drop_before"])
    with BudgetClient(proxy.url, retry=FAST) as c:
        result = c.report(run_id, 0, OBS)
    assert result.duplicate  # the third attempt found the first one applied
    assert len(proxy.forwarded) == 2
    assert_applied(direct, run_id, 1)


async def test_async_client_retries_through_the_same_faults(
    proxy: HttpFaultProxy, direct: BudgetClient, run_id: str
) -> None:
    direct.put_run(run_id)
    proxy.faults.extend(["503", "drop_after", "drop_before"])
    async with AsyncBudgetClient(proxy.url, retry=FAST) as c:
        result = await c.report(run_id, 0, OBS)
    assert result.duplicate
    assert c.stats.retries == 3
    assert_applied(direct, run_id, 1)


def test_outage_falls_back_spools_and_replays_exactly_once(
    proxy: HttpFaultProxy, direct: BudgetClient, run_id: str, tmp_path: Path
) -> None:
    spool = tmp_path / "reports.spool.jsonl"
    with BudgetClient(proxy.url, retry=FAST, spool_path=spool) as c:
        c.put_run(run_id, min_samples=2, max_samples=6)
        # The service applies this report but every answer is lost: it ends up in the spool too.
        proxy.faults.extend(["drop_after", "drop_before", "drop_before", "drop_before"])
        lost = c.report(run_id, 0, OBS)
        assert lost.spooled

        proxy.stop()  # the service is gone: connection refused
        with pytest.raises(InvalidRequestError, match="max_samples 6"):  # learnt from put_run
            c.allocate(run_id, ["a", "b", "c"], budget=30, step=1)  # as the service would refuse
        allocation = c.allocate(run_id, ["a", "b", "c"], budget=17, step=1)
        assert allocation.fallback
        assert allocation.counts == [6, 6, 5]
        assert c.report(run_id, 1, OBS).spooled
        with pytest.raises(UnavailableError):
            c.summary(run_id)  # no fallback for reads
        assert c.flush() == 2
        assert c.stats.spooled == 2
        assert c.stats.fallbacks == 1

        proxy.start()  # back on the same port; the next successful call replays the spool
        assert c.get_run(run_id).config.max_samples == 6
        assert len(c.spool) == 0
        assert c.stats.replayed == 2
    assert spool.read_bytes() == b""
    # Two reports delivered once each: the first was a duplicate on replay, not applied twice.
    assert_applied(direct, run_id, 2)
    assert direct.summary(run_id).last_step == 1


def test_the_spool_survives_a_killed_process(
    proxy: HttpFaultProxy, direct: BudgetClient, run_id: str, tmp_path: Path
) -> None:
    direct.put_run(run_id)
    spool = tmp_path / "reports.spool.jsonl"
    proxy.stop()
    # A trainer that spools two reports while the service is down, then dies without closing.
    script = textwrap.dedent(
        f"""
        import os
        from trainer_client import BudgetClient, RetryPolicy
        client = BudgetClient({proxy.url!r}, retry=RetryPolicy(attempts=2, backoff=0.01),
                              spool_path={str(spool)!r})
        for step in (0, 1):
            assert client.report({run_id!r}, step, {OBS!r}).spooled
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    proxy.start()

    with BudgetClient(proxy.url, retry=FAST, spool_path=spool) as restarted:
        assert len(restarted.spool) == 2
        assert restarted.flush() == 0
    assert_applied(direct, run_id, 2)

    with BudgetClient(proxy.url, retry=FAST, spool_path=spool) as again:
        assert again.flush() == 0  # nothing left, nothing sent twice
    assert_applied(direct, run_id, 2)


def test_replay_keeps_aside_what_the_service_rejects(
    proxy: HttpFaultProxy, direct: BudgetClient, run_id: str, tmp_path: Path
) -> None:
    spool = tmp_path / "reports.spool.jsonl"
    direct.put_run(run_id)
    with BudgetClient(proxy.url, retry=FAST, spool_path=spool) as c:
        proxy.stop()
        c.report(run_id, 0, OBS)
        c.report(f"{run_id}-deleted", 0, OBS)  # a run that will not exist on replay
        proxy.start()
        assert c.flush() == 0
        assert (c.stats.replayed, c.stats.rejected) == (1, 1)
    assert_applied(direct, run_id, 1)
    rejected = spool.with_name(spool.name + ".rejected").read_text()
    assert f"{run_id}-deleted" in rejected
