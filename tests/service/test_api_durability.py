"""Durability: acknowledged reports survive a SIGKILL of Redis (AOF, appendfsync everysec) and
a restart of the service; their report ids stay duplicates afterwards."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from budget_service.embedded import LocalRedis


def test_acknowledged_reports_survive_sigkill_of_redis_and_a_service_restart(
    start_service: Callable[..., object],
    local_redis_factory: Callable[..., LocalRedis],
    run_id: str,
) -> None:
    redis = local_redis_factory(appendfsync="everysec")
    service = start_service(redis=redis.url)
    url = service.url  # type: ignore[attr-defined]
    reports = [
        {
            "report_id": f"r{step}",
            "step": step,
            "observations": [
                {"prompt_id": f"p{i}", "samples": 4, "accepted": (step + i) % 5 % 4,
                 "grad_norm_sum": 0.1 * ((step + i) % 5 % 4), "grad_norm_count": (step + i) % 5 % 4}
                for i in range(50)
            ],
        }
        for step in range(20)
    ]  # fmt: skip
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.put(f"/v1/runs/{run_id}", json={"half_life_steps": 7}).status_code == 201
        for body in reports:
            answer = client.post(f"/v1/runs/{run_id}/observations", json=body)
            assert answer.json() == {"report_id": body["report_id"], "applied": 50,
                                     "duplicate": False}  # fmt: skip
        before = {f"p{i}": client.get(f"/v1/runs/{run_id}/prompts/p{i}").json() for i in range(50)}
        summary_before = client.get(f"/v1/runs/{run_id}/summary").json()

        redis.kill()  # SIGKILL right after the last acknowledgement: no shutdown hook runs
        redis.start()  # same port and data dir: the AOF is replayed

        service.stop()  # type: ignore[attr-defined]
        service.start()  # type: ignore[attr-defined]
    with httpx.Client(base_url=service.url, timeout=30) as client:  # type: ignore[attr-defined]
        after = {f"p{i}": client.get(f"/v1/runs/{run_id}/prompts/p{i}").json() for i in range(50)}
        assert after == before  # bit for bit, decay included
        assert client.get(f"/v1/runs/{run_id}/summary").json() == summary_before
        assert client.get(f"/v1/runs/{run_id}").json()["config"]["half_life_steps"] == 7
        for body in reports:
            answer = client.post(f"/v1/runs/{run_id}/observations", json=body)
            assert answer.json()["duplicate"] is True
