"""The Redis store against a real server: the report script's decay rule, exactness,
idempotency window, chunking past Lua's unpack limit, retention, and DELETE removing every key
(single Redis and Redis Cluster)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from budget_service.errors import RunNotFoundError
from budget_service.settings import Settings
from budget_service.store import HISTORY_MAX, HistoryPoint, Report, Store, run_keys


def make_report(report_id: str, step: int, rows: list[tuple[Any, ...]]) -> Report:
    """Rows of (prompt_id, samples, accepted, grad_norm_sum, grad_norm_count[, rejected_sum,
    rejected_count]): the rejected samples' norms are zero where a row leaves them out."""
    increments = np.zeros((len(rows), 6))
    for i, row in enumerate(rows):
        increments[i, : len(row) - 1] = row[1:]
    return Report(
        report_id=report_id,
        step=step,
        prompt_ids=[r[0] for r in rows],
        increments=increments,
    )


POINT = HistoryPoint(step=0, total=0, predicted_variance=0.0, uniform_variance=0.0)


@pytest.fixture(params=["redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    store = Store.from_settings(Settings(redis_url=url, redis_cluster=request.param == "cluster"))
    try:
        yield store
    finally:
        await store.aclose()


def reference(
    events: list[tuple[int, tuple[float, ...]]], half_life: float | None
) -> tuple[list[float], int]:
    """The decay rule (estimates.py, README "State in Redis"), one observation at a time."""
    record: list[float] = []
    last = None
    for step, delta in events:
        if last is None:
            record, last = list(delta), step
            continue
        if step >= last:
            f = _decay(step - last, half_life)
            record = [r * f + d for r, d in zip(record, delta, strict=True)]
            last = step
        else:
            f = _decay(last - step, half_life)
            record = [r + d * f for r, d in zip(record, delta, strict=True)]
    assert last is not None
    return record, last


def _decay(elapsed: int, half_life: float | None) -> float:
    return 1.0 if half_life is None or elapsed <= 0 else 0.5 ** (elapsed / half_life)


@pytest.mark.parametrize("half_life", [None, 3.0, 0.7])
async def test_report_script_applies_the_decay_rule(
    store: Store, run_id: str, half_life: float | None
) -> None:
    await store.put_run(run_id, "{}", half_life)
    rng = random.Random(11)
    events: dict[str, list[tuple[int, tuple[float, ...]]]] = {"a": [], "b": []}
    pooled: list[tuple[int, tuple[float, ...]]] = []
    steps = [0, 2, 2, 5, 3, 9, 1, 12, 12, 4]  # out-of-order steps included
    for n, step in enumerate(steps):
        rows: list[tuple[Any, ...]] = []
        for prompt_id in ("a", "b", "a"):  # a prompt twice in one report: applied in order
            samples = float(rng.randint(1, 8))
            accepted = float(rng.randint(0, int(samples)))
            rejected = samples - accepted
            delta = (samples, accepted, accepted * 0.37, accepted, rejected * 0.29, rejected)
            rows.append((prompt_id, *delta))
            events[prompt_id].append((step, delta))
        pooled.append((step, tuple(sum(float(r[c]) for r in rows) for c in range(1, 7))))
        result = await store.apply_report(run_id, make_report(f"r{n}", step, rows))
        assert (result.applied, result.duplicate) == (3, False)

    snapshot = await store.read_batch(run_id, ["a", "b", "never"])
    assert snapshot.seen.tolist() == [True, True, False]
    for i, prompt_id in enumerate(("a", "b")):
        expected, last = reference(events[prompt_id], half_life)
        stats = snapshot.stats
        got = [
            stats.samples[i],
            stats.accepted[i],
            stats.grad_norm_sum[i],
            stats.grad_norm_count[i],
            *(column[i] for column in stats.rejected_norms()),
        ]
        assert got == pytest.approx(expected, rel=1e-12, abs=0)
        assert stats.last_step[i] == last
    assert snapshot.stats.samples[2] == 0
    # Totals pool every prompt under the same rule, one report at a time.
    expected_totals, last_total = reference(pooled, half_life)
    totals = snapshot.totals
    got_totals = [
        totals.samples,
        totals.accepted,
        totals.grad_norm_sum,
        totals.grad_norm_count,
        totals.rejected_grad_norm_sum,
        totals.rejected_grad_norm_count,
    ]
    assert got_totals == pytest.approx(expected_totals, rel=1e-12, abs=0)
    assert totals.last_step == last_total == 12


async def test_values_round_trip_bit_exact(store: Store, run_id: str) -> None:
    await store.put_run(run_id, "{}", None)
    awkward = (3.0, 1.0, 0.1 + 0.2, 1.0)  # 0.30000000000000004 must stay exactly that
    await store.apply_report(run_id, make_report("r", 2**40, [("x", *awkward)]))
    stats = (await store.read_batch(run_id, ["x"])).stats
    assert stats.grad_norm_sum[0] == 0.1 + 0.2
    assert stats.last_step[0] == 2**40


async def test_records_of_the_40_byte_layout_read_and_merge_with_zero_rejected_norms(
    store: Store, run_id: str
) -> None:
    """Records written before the rejected samples' norms (five float64) stay valid."""
    await store.put_run(run_id, "{}", None)
    _, stats_key, totals_key, *_ = run_keys(run_id)
    old = np.array([4.0, 1.0, 0.5, 1.0, 3.0]).tobytes()
    await store._client.hset(stats_key, "old", old)
    await store._client.set(totals_key, old)
    snapshot = await store.read_batch(run_id, ["old"])
    assert snapshot.seen.tolist() == [True]
    assert snapshot.stats.samples[0] == 4.0
    assert [c[0] for c in snapshot.stats.rejected_norms()] == [0.0, 0.0]
    pages = [page async for page in store.scan_statistics(run_id)]
    assert [c[0] for c in pages[0].rejected_norms()] == [0.0, 0.0]

    await store.apply_report(run_id, make_report("r", 3, [("old", 4.0, 2.0, 1.5, 2.0, 0.8, 2.0)]))
    snapshot = await store.read_batch(run_id, ["old"])
    stats, totals = snapshot.stats, snapshot.totals
    assert [stats.samples[0], stats.accepted[0], stats.grad_norm_sum[0]] == [8.0, 3.0, 2.0]
    assert [c[0] for c in stats.rejected_norms()] == [0.8, 2.0]
    assert (totals.samples, totals.rejected_grad_norm_sum) == (8.0, 0.8)
    assert len(await store._client.hget(stats_key, "old")) == 56


async def test_big_reports_and_reads_cross_the_lua_unpack_limit(store: Store, run_id: str) -> None:
    await store.put_run(run_id, "{}", None)
    ids = [f"prompt-{i:05d}" for i in range(12_345)]
    rows = [(pid, 2.0, float(i % 3), float(i % 3), float(i % 3)) for i, pid in enumerate(ids)]
    result = await store.apply_report(run_id, make_report("big", 1, rows))
    assert result.applied == len(ids)
    snapshot = await store.read_batch(run_id, [*reversed(ids), "unknown"])
    assert snapshot.stats.accepted[:-1].tolist() == [
        float(i % 3) for i in reversed(range(len(ids)))
    ]
    assert snapshot.seen.sum() == len(ids)
    counts = await store.counts(run_id)
    assert counts.prompts == len(ids)
    assert counts.totals.samples == 2.0 * len(ids)
    pages = [page async for page in store.scan_statistics(run_id, page=1000)]
    assert sum(len(p.samples) for p in pages) >= len(ids)  # HSCAN may repeat, never miss


async def test_duplicates_and_racing_duplicates(store: Store, run_id: str) -> None:
    await store.put_run(run_id, "{}", None)
    report = make_report("same", 0, [("a", 1.0, 1.0, 0.0, 0.0)])
    results = await asyncio.gather(*(store.apply_report(run_id, report) for _ in range(20)))
    assert sum(not r.duplicate for r in results) == 1
    assert (await store.read_batch(run_id, ["a"])).stats.samples[0] == 1.0


async def test_report_ids_beyond_the_cap_are_forgotten_oldest_first(
    redis_url: str, run_id: str
) -> None:
    store = Store.from_settings(Settings(redis_url=redis_url, report_id_max=3))
    try:
        await store.put_run(run_id, "{}", None)
        for n in range(5):
            await store.apply_report(run_id, make_report(f"r{n}", n, [("a", 1.0, 0.0, 0.0, 0.0)]))
            await asyncio.sleep(0.002)  # distinct server-time scores
        assert (await store.counts(run_id)).reports == 3
        recent = await store.apply_report(run_id, make_report("r4", 4, [("a", 1.0, 0, 0, 0)]))
        assert recent.duplicate
        forgotten = await store.apply_report(run_id, make_report("r0", 0, [("a", 1.0, 0, 0, 0)]))
        assert not forgotten.duplicate  # outside the window: documented behaviour
    finally:
        await store.aclose()


async def test_unknown_run_is_never_written(store: Store, run_id: str) -> None:
    with pytest.raises(RunNotFoundError):
        await store.apply_report(run_id, make_report("r", 0, [("a", 1.0, 0.0, 0.0, 0.0)]))
    with pytest.raises(RunNotFoundError):
        await store.save_allocation(run_id, b"{}", POINT)
    with pytest.raises(RunNotFoundError):
        await store.read_batch(run_id, ["a"])
    assert await _keys_of(store, run_id) == set()


async def test_allocation_history_keeps_the_last_points_in_order(store: Store, run_id: str) -> None:
    await store.put_run(run_id, "{}", None)
    assert await store.allocation_history(run_id) == []
    points = [HistoryPoint(s, 8 * s, 1.0 / (s + 1), 0.1 + s) for s in range(HISTORY_MAX + 5)]
    for point in points:
        await store.save_allocation(run_id, b"{}", point)
    assert await store.allocation_history(run_id) == points[-HISTORY_MAX:]  # every bit kept
    await store.delete_run(run_id)
    with pytest.raises(RunNotFoundError):
        await store.allocation_history(run_id)


async def test_delete_removes_every_key_of_the_run(store: Store, run_id: str) -> None:
    await store.put_run(run_id, "{}", None)
    await store.apply_report(run_id, make_report("r", 0, [("a", 1.0, 1.0, 1.0, 1.0)]))
    await store.save_allocation(run_id, b"{}", POINT)
    assert await _keys_of(store, run_id) == set(run_keys(run_id))
    await store.delete_run(run_id)
    assert await _keys_of(store, run_id) == set()
    with pytest.raises(RunNotFoundError):
        await store.delete_run(run_id)


async def test_idle_runs_expire_with_all_their_keys(redis_url: str, run_id: str) -> None:
    store = Store.from_settings(Settings(redis_url=redis_url, run_ttl_s=1))
    try:
        await store.put_run(run_id, "{}", None)
        await store.apply_report(run_id, make_report("r", 0, [("a", 1.0, 1.0, 1.0, 1.0)]))
        await store.save_allocation(run_id, b"{}", POINT)
        client = store._client
        ttls = [await client.pttl(key) for key in run_keys(run_id)]
        assert all(0 < ttl <= 1000 for ttl in ttls), ttls
        await asyncio.sleep(1.2)
        assert await _keys_of(store, run_id) == set()
    finally:
        await store.aclose()


async def _keys_of(store: Store, run_id: str) -> set[str]:
    """Every key in the whole keyspace (every node of a cluster) that mentions the run."""
    client: aioredis.Redis | RedisCluster = store._client
    pattern = f"*{run_id}*"
    if isinstance(client, RedisCluster):
        found = set()
        for node in client.get_primaries():
            keys = await client.execute_command("KEYS", pattern, target_nodes=node)
            found |= {k.decode() for k in keys}
        return found
    return {k.decode() async for k in client.scan_iter(match=pattern)}
