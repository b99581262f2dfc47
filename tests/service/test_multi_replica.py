"""Two service replicas on one Redis: trainers report to one, allocations come from the other,
at the same time, and the outcome is the one a single replica gives.

The replicas keep no state of their own (DESIGN.md §4), so what must hold: every report is
applied exactly once even when its retry lands on the other replica; every allocation served
during the run is valid; afterwards both replicas read identical statistics, and the final
statistics and allocation equal those of a single replica fed the same reports one by one.
Increments are multiples of 1/4 and there is no decay, so the totals are exact whatever order
the concurrent reports were applied in.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from support.services import ServiceProcess

PROMPTS = [f"q{i}" for i in range(24)]
TRAINERS = 4
STEPS = 15
CONFIG = {"strategy": "gvm", "min_samples": 1, "half_life_steps": None}


def _reports(rank: int) -> list[dict[str, Any]]:
    rng = random.Random(rank)
    out = []
    for step in range(STEPS):
        observations = []
        for prompt_id in rng.sample(PROMPTS, 6):
            samples = rng.randint(1, 8)
            accepted = rng.randint(0, samples)
            norms = [rng.randint(1, 16) / 4 for _ in range(accepted)]
            observations.append({"prompt_id": prompt_id, "samples": samples,
                                 "accepted": accepted, "grad_norms": norms})  # fmt: skip
        out.append({"report_id": f"{rank}-{step}", "step": step, "observations": observations})
    return out


def _without_run_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "run_id"}


def test_reports_to_one_replica_allocations_from_another_equal_a_single_replica(
    start_service: Callable[..., ServiceProcess], service_url: str, run_id: str
) -> None:
    reporter, allocator = start_service(), start_service()  # both on the session's Redis
    single_run = f"{run_id}-single"
    reports = {rank: _reports(rank) for rank in range(TRAINERS)}
    allocation = {"prompt_ids": PROMPTS, "budget": 96}
    with (
        httpx.Client(base_url=reporter.url, timeout=30) as a,
        httpx.Client(base_url=allocator.url, timeout=30) as b,
        httpx.Client(base_url=service_url, timeout=30) as single,
    ):
        assert a.put(f"/v1/runs/{run_id}", json=CONFIG).status_code == 201
        assert b.get(f"/v1/runs/{run_id}").json()["config"]["min_samples"] == 1  # seen by B

        def trainer(rank: int) -> list[bool]:
            duplicates = []
            for body in reports[rank]:
                first = a.post(f"/v1/runs/{run_id}/observations", json=body)
                assert first.status_code == 200, first.text
                duplicates.append(first.json()["duplicate"])
                # A retry that a load balancer sends to the other replica: applied once.
                retry = b.post(f"/v1/runs/{run_id}/observations", json=body)
                assert retry.json() == {**first.json(), "applied": 0, "duplicate": True}
            return duplicates

        def allocations(_: int) -> int:
            served = 0
            for _ in range(STEPS):
                answer = b.post(f"/v1/runs/{run_id}/allocations", json=allocation)
                assert answer.status_code == 200, answer.text
                plan = answer.json()
                assert plan["total"] <= allocation["budget"]
                assert [item["prompt_id"] for item in plan["items"]] == PROMPTS
                served += 1
            return served

        with ThreadPoolExecutor(TRAINERS + 2) as pool:
            trainers = [pool.submit(trainer, rank) for rank in range(TRAINERS)]
            allocators = [pool.submit(allocations, i) for i in range(2)]
            assert not any(d for future in trainers for d in future.result())
            assert sum(future.result() for future in allocators) == 2 * STEPS

        # The same reports, one by one, to a single replica.
        assert single.put(f"/v1/runs/{single_run}", json=CONFIG).status_code == 201
        for rank in range(TRAINERS):
            for body in reports[rank]:
                assert single.post(f"/v1/runs/{single_run}/observations", json=body).is_success

        replicas = ((a, run_id), (b, run_id), (single, single_run))
        summaries = [client.get(f"/v1/runs/{run}/summary").json() for client, run in replicas]
        assert summaries[0]["reports"] == TRAINERS * STEPS
        assert _without_run_id(summaries[0]) == _without_run_id(summaries[1])
        assert _without_run_id(summaries[0]) == _without_run_id(summaries[2])
        for prompt_id in PROMPTS:
            stats = [client.get(f"/v1/runs/{run}/prompts/{prompt_id}").json()
                     for client, run in replicas]  # fmt: skip
            assert stats[0] == stats[1] == stats[2], prompt_id

        final = b.post(f"/v1/runs/{run_id}/allocations", json=allocation).json()
        reference = single.post(f"/v1/runs/{single_run}/allocations", json=allocation).json()
        assert _without_run_id(final) == _without_run_id(reference)
        # The allocation B served is the one A reads back as the latest.
        assert a.get(f"/v1/runs/{run_id}/allocations/latest").json() == final
