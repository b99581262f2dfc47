"""Idempotency and concurrency over real HTTP: retried and racing reports are counted once,
and 16 concurrent clients leave exact totals. Against a single Redis and a Redis Cluster."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest


@pytest.fixture(params=["redis", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    fixture = "service_url" if request.param == "redis" else "cluster_service_url"
    base_url = request.getfixturevalue(fixture)
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        yield client


def make_report(report_id: str, step: int, observations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"report_id": report_id, "step": step, "observations": observations}


async def prompt(client: httpx.AsyncClient, run_id: str, prompt_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/runs/{run_id}/prompts/{prompt_id}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_the_same_report_twice_is_counted_once(
    client: httpx.AsyncClient, run_id: str
) -> None:
    base = f"/v1/runs/{run_id}"
    await client.put(base, json={})
    body = make_report("r-1", 3, [{"prompt_id": "a", "samples": 8, "accepted": 3}])
    first = await client.post(f"{base}/observations", json=body)
    second = await client.post(f"{base}/observations", json=body)
    assert first.json() == {"report_id": "r-1", "applied": 1, "duplicate": False}
    assert second.json() == {"report_id": "r-1", "applied": 0, "duplicate": True}
    stats = await prompt(client, run_id, "a")
    assert (stats["samples"], stats["accepted"]) == (8, 3)
    # Report ids are per run: the same id in another run is a different report.
    other = f"{run_id}-other"
    await client.put(f"/v1/runs/{other}", json={})
    assert (await client.post(f"/v1/runs/{other}/observations", json=body)).json()["applied"] == 1
    await client.delete(f"/v1/runs/{other}")


async def test_the_same_report_racing_on_many_connections_is_applied_once(
    client: httpx.AsyncClient, run_id: str
) -> None:
    base = f"/v1/runs/{run_id}"
    await client.put(base, json={})
    observations = [
        {"prompt_id": f"p{i}", "samples": 4, "accepted": i % 5, "grad_norm_sum": float(i % 5),
         "grad_norm_count": i % 5}
        for i in range(200)
    ]  # fmt: skip
    body = make_report("racing", 1, observations)
    answers = await asyncio.gather(
        *(client.post(f"{base}/observations", json=body) for _ in range(24))
    )
    results = [a.json() for a in answers]
    assert sum(not r["duplicate"] for r in results) == 1
    assert sum(r["applied"] for r in results) == 200
    summary = (await client.get(f"{base}/summary")).json()
    assert (summary["prompts"], summary["samples"], summary["reports"]) == (200, 800, 1)
    assert summary["accepted"] == sum(i % 5 for i in range(200))


async def test_sixteen_concurrent_clients_leave_exact_totals(
    client: httpx.AsyncClient, run_id: str
) -> None:
    """16 trainers post disjoint and overlapping prompts, each report also retried; the stored
    per-prompt counts equal a ledger kept here, to the unit."""
    base = f"/v1/runs/{run_id}"
    await client.put(base, json={})
    rng = random.Random(7)
    ledger: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    reports: list[list[dict[str, Any]]] = [[] for _ in range(16)]
    for worker in range(16):
        for r in range(6):
            observations = []
            # Disjoint prompts (this worker's own) and overlapping ones (shared by all).
            chosen = [f"own-{worker}-{i}" for i in rng.sample(range(20), 5)]
            chosen += [f"shared-{i}" for i in rng.sample(range(10), 4)]
            for prompt_id in chosen:
                samples = rng.randint(1, 16)
                accepted = rng.randint(0, samples)
                norms = [float(rng.randint(0, 40)) / 4 for _ in range(accepted)]
                observations.append({"prompt_id": prompt_id, "samples": samples,
                                     "accepted": accepted, "grad_norms": norms})  # fmt: skip
                entry = ledger[prompt_id]
                entry[0] += samples
                entry[1] += accepted
                entry[2] += sum(norms)
                entry[3] += len(norms)
            reports[worker].append(make_report(f"w{worker}-r{r}", r, observations))

    async def trainer(worker: int) -> None:
        for body in reports[worker]:
            for _ in range(2):  # every report is sent twice, as a retry would
                response = await client.post(f"{base}/observations", json=body)
                assert response.status_code == 200, response.text

    await asyncio.gather(*(trainer(w) for w in range(16)))

    for prompt_id, (total_samples, total_accepted, norm_sum, norm_count) in ledger.items():
        stats = await prompt(client, run_id, prompt_id)
        assert stats["samples"] == total_samples, prompt_id
        assert stats["accepted"] == total_accepted, prompt_id
        assert stats["grad_norm_sum"] == pytest.approx(norm_sum, rel=1e-12), prompt_id
        assert stats["grad_norm_count"] == norm_count, prompt_id
    summary = (await client.get(f"{base}/summary")).json()
    assert summary["prompts"] == len(ledger)
    assert summary["reports"] == 16 * 6
    assert summary["samples"] == sum(v[0] for v in ledger.values())
    assert summary["accepted"] == sum(v[1] for v in ledger.values())


async def test_concurrent_patches_are_not_lost(client: httpx.AsyncClient, run_id: str) -> None:
    base = f"/v1/runs/{run_id}"
    await client.put(base, json={})
    fields = {
        "alpha": 0.01, "beta": 1.5, "min_samples": 2, "max_samples": 64, "align_to": 4,
        "explore_samples": 3, "prior_strength": 1.0, "half_life_steps": 9.0,
    }  # fmt: skip
    answers = await asyncio.gather(*(client.patch(base, json={k: v}) for k, v in fields.items()))
    assert all(a.status_code == 200 for a in answers)
    config = (await client.get(base)).json()["config"]
    assert {k: config[k] for k in fields} == fields
