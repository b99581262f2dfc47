"""Replica acknowledgement (GVM_REDIS_MIN_REPLICAS_ACK): a report is answered 200 only once a
replica holds it. A real primary and replica on loopback; SIGSTOP on the replica is what makes it
stop confirming (it neither applies the replication stream nor sends REPLCONF ACK)."""

from __future__ import annotations

import os
import signal
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis

from budget_service.embedded import LocalRedis
from budget_service.store import run_keys


def _report(report_id: str, samples: int) -> dict[str, object]:
    return {
        "report_id": report_id,
        "step": 1,
        "observations": [{"prompt_id": "p", "samples": samples, "accepted": 1}],
    }


@pytest.fixture
def pair(local_redis_factory: Callable[..., LocalRedis]) -> tuple[LocalRedis, LocalRedis]:
    """A primary and a replica that has finished its first sync."""
    # No diskless-sync delay: Redis otherwise waits 5 s for more replicas before the first sync.
    primary = local_redis_factory(extra_args=("--repl-diskless-sync-delay", "0"))
    replica = local_redis_factory(extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
    deadline = time.monotonic() + 15
    with redis.Redis.from_url(replica.url) as client:
        while client.info("replication")["master_link_status"] != "up":
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.05)
    with redis.Redis.from_url(primary.url) as client:  # and the primary counts it for WAIT
        while client.info("replication").get("slave0", {}).get("state") != "online":
            assert time.monotonic() < deadline, "the primary never saw the replica online"
            time.sleep(0.05)
    return primary, replica


def _report_as_a_client_does(client: httpx.Client, run_id: str, report: dict[str, Any]) -> Any:
    """POST the report, retrying a 503 after its Retry-After (a few times), as BudgetClient
    does: on a busy machine a replica can miss one 0.2 s acknowledgement window."""
    for _ in range(5):
        answer = client.post(f"/v1/runs/{run_id}/observations", json=report)
        if answer.status_code != 503:
            break
        time.sleep(float(answer.headers["Retry-After"]))
    return answer


@contextmanager
def _stopped(server: LocalRedis) -> Iterator[None]:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def _samples(server: LocalRedis, run_id: str) -> float:
    """The run's total samples as `server` holds them (first float64 of the totals record)."""
    with redis.Redis.from_url(server.url) as client:
        value = client.get(run_keys(run_id)[2])
    return 0.0 if value is None else float(struct.unpack_from("<d", value)[0])


def _wait_for_samples(server: LocalRedis, run_id: str, expected: float) -> float:
    deadline = time.monotonic() + 5  # without acknowledgement the replica catches up later
    while (samples := _samples(server, run_id)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return samples


def test_a_report_no_replica_confirms_is_answered_503_and_its_retry_200_once_it_does(
    pair: tuple[LocalRedis, LocalRedis],
    start_service: Callable[..., object],
    run_id: str,
) -> None:
    primary, replica = pair
    service = start_service(
        redis=primary.url, GVM_REDIS_MIN_REPLICAS_ACK="1", GVM_REDIS_ACK_TIMEOUT_S="0.2"
    )
    with httpx.Client(base_url=service.url, timeout=10) as client:  # type: ignore[attr-defined]
        assert client.put(f"/v1/runs/{run_id}", json={}).status_code == 201
        answer = _report_as_a_client_does(client, run_id, _report("r1", 4))
        assert answer.status_code == 200, answer.text
        assert _samples(replica, run_id) == 4  # already there when the 200 left

        with _stopped(replica):
            started = time.monotonic()
            answer = client.post(f"/v1/runs/{run_id}/observations", json=_report("r2", 8))
            assert answer.status_code == 503
            assert answer.headers["Retry-After"] == "1"
            assert answer.json()["error"]["code"] == "replicas_not_acked"
            assert time.monotonic() - started < 2  # GVM_REDIS_ACK_TIMEOUT_S bounds the wait
        # The retry is a duplicate for the primary; its 200 still waits for the replica to
        # hold the first attempt's write.
        answer = _report_as_a_client_does(client, run_id, _report("r2", 8))
        assert answer.status_code == 200, answer.text
        assert answer.json()["duplicate"] is True
        assert _samples(replica, run_id) == 12
    assert _samples(primary, run_id) == 12  # applied once


def test_without_the_setting_reports_are_answered_200_while_the_replica_is_stopped(
    pair: tuple[LocalRedis, LocalRedis],
    start_service: Callable[..., object],
    run_id: str,
) -> None:
    primary, replica = pair
    service = start_service(redis=primary.url)
    with httpx.Client(base_url=service.url, timeout=10) as client:  # type: ignore[attr-defined]
        assert client.put(f"/v1/runs/{run_id}", json={}).status_code == 201
        with _stopped(replica):
            for i in range(3):
                answer = client.post(f"/v1/runs/{run_id}/observations", json=_report(f"r{i}", 4))
                assert answer.status_code == 200, answer.text
            assert _samples(primary, run_id) == 12  # acknowledged while on the primary only
    assert _wait_for_samples(replica, run_id, 12) == 12


def test_the_ack_timeout_must_fit_in_the_socket_timeout() -> None:
    from pydantic import ValidationError

    from budget_service.settings import Settings

    with pytest.raises(ValidationError, match="GVM_REDIS_ACK_TIMEOUT_S must be <"):
        Settings(redis_min_replicas_ack=1, redis_ack_timeout_s=1.0, redis_timeout_s=1.0)
    assert Settings(redis_min_replicas_ack=0, redis_ack_timeout_s=5.0).redis_ack_timeout_s == 5.0
