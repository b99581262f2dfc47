"""Retention through the live service, on a single Redis and on a Redis Cluster: a run idle for
GVM_RUN_TTL_S expires with every one of its keys, a write keeps it alive, and DELETE removes
every key of the run. The keys are found by scanning the whole keyspace (every cluster node),
not by asking the service."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from redis.cluster import RedisCluster
from support.services import ServiceProcess

from budget_service.store import run_keys

REPORT = {"report_id": "r1", "step": 1,
          "observations": [{"prompt_id": "a", "samples": 4, "accepted": 1}]}  # fmt: skip


@pytest.fixture(params=["redis", "cluster"])
def target(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[str, dict[str, str], list[redis.Redis]]]:
    """(Redis URL, service settings for it, a client per primary node to scan)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        node = redis.Redis.from_url(url)
        yield url, {}, [node]
        node.close()
        return
    url = request.getfixturevalue("redis_cluster_url")
    cluster = RedisCluster.from_url(url)
    nodes = [node.redis_connection for node in cluster.get_primaries()]  # type: ignore[no-untyped-call]
    yield url, {"REDIS_CLUSTER": "1"}, [n for n in nodes if n is not None]
    cluster.close()


def _keys_of(nodes: list[redis.Redis], run_id: str) -> dict[str, int]:
    """Every key in the keyspace that names the run -> its remaining TTL in ms (-1: none)."""
    found = {}
    for node in nodes:
        for key in node.scan_iter(match=f"*{run_id}*", count=1000):
            found[key.decode()] = node.pttl(key)
    return found


def _fill(client: httpx.Client, run_id: str) -> None:
    """A run with every kind of key: config, statistics, totals, report ids, latest allocation."""
    assert client.put(f"/v1/runs/{run_id}", json={"min_samples": 1}).status_code == 201
    assert client.post(f"/v1/runs/{run_id}/observations", json=REPORT).status_code == 200
    allocation = {"prompt_ids": ["a", "b"], "budget": 4}
    assert client.post(f"/v1/runs/{run_id}/allocations", json=allocation).status_code == 200


def test_idle_runs_expire_with_every_key_and_writes_keep_them_alive(
    start_service: Callable[..., ServiceProcess],
    target: tuple[str, dict[str, str], list[redis.Redis]],
    run_id: str,
) -> None:
    url, settings, nodes = target
    service = start_service(redis=url, GVM_RUN_TTL_S="2", **settings)
    with httpx.Client(base_url=service.url, timeout=30) as client:
        _fill(client, run_id)
        keys = _keys_of(nodes, run_id)
        assert set(keys) == set(run_keys(run_id))
        assert all(0 < ttl <= 2000 for ttl in keys.values()), keys

        time.sleep(1.0)
        assert client.get(f"/v1/runs/{run_id}/summary").status_code == 200
        assert all(ttl <= 1000 for ttl in _keys_of(nodes, run_id).values())  # reads don't renew
        second = {**REPORT, "report_id": "r2"}
        assert client.post(f"/v1/runs/{run_id}/observations", json=second).status_code == 200
        keys = _keys_of(nodes, run_id)
        assert set(keys) == set(run_keys(run_id))
        assert all(ttl > 1000 for ttl in keys.values()), keys  # the write renewed every key

        deadline = time.monotonic() + 10
        while _keys_of(nodes, run_id):
            assert time.monotonic() < deadline, _keys_of(nodes, run_id)
            time.sleep(0.2)
        assert client.get(f"/v1/runs/{run_id}").json()["error"]["code"] == "run_not_found"


def test_delete_removes_every_key_of_the_run(
    request: pytest.FixtureRequest,
    target: tuple[str, dict[str, str], list[redis.Redis]],
    run_id: str,
) -> None:
    _, settings, nodes = target
    shared = request.getfixturevalue("cluster_service_url" if settings else "service_url")
    other = f"{run_id}-kept"
    with httpx.Client(base_url=shared, timeout=30) as client:
        _fill(client, run_id)
        _fill(client, other)
        assert set(_keys_of(nodes, run_id)) >= set(run_keys(run_id))
        assert all(ttl == -1 for ttl in _keys_of(nodes, run_id).values())  # GVM_RUN_TTL_S=0
        assert client.delete(f"/v1/runs/{run_id}").status_code == 204
        assert not any(key.startswith(f"gvm:{{{run_id}}}") for key in _keys_of(nodes, run_id))
        assert set(_keys_of(nodes, other)) == set(run_keys(other))  # another run is untouched
        assert client.get(f"/v1/runs/{run_id}").status_code == 404
        assert client.delete(f"/v1/runs/{run_id}").status_code == 404
