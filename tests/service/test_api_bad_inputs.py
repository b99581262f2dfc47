"""Malformed requests: each gives the documented 4xx in the one error shape, naming the field
and the rule, and leaves the run's stored statistics exactly as they were."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from budget_service.schemas import ErrorResponse

OK_OBSERVATION = {"prompt_id": "p", "samples": 8, "accepted": 2, "grad_norms": [1.0, 2.0]}


def report(*observations: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"report_id": "bad", "step": 1, "observations": list(observations), **fields}


def observation(**changes: Any) -> dict[str, Any]:
    return {**OK_OBSERVATION, **changes}


# (id, method, path suffix, JSON body, status, code, field, rule)
CASES: list[tuple[str, str, str, Any, int, str, str | None, str | None]] = [
    ("negative samples", "POST", "/observations", report(observation(samples=-1)),
     422, "invalid_request", "observations[0].samples", "greater_than_equal"),
    ("zero samples", "POST", "/observations", report(observation(samples=0, accepted=0,
     grad_norms=None)), 422, "invalid_request", "observations[0].samples", "greater_than_equal"),
    ("negative accepted", "POST", "/observations", report(observation(accepted=-1,
     grad_norms=None)), 422, "invalid_request", "observations[0].accepted", "greater_than_equal"),
    ("accepted > samples", "POST", "/observations", report(observation(accepted=9)),
     422, "invalid_request", "observations[0].accepted", "accepted_le_samples"),
    ("NaN grad norm", "POST", "/observations", report(observation(grad_norms=[1.0, "NaN"])),
     422, "invalid_request", "observations[0].grad_norms[1]", "float_type"),
    ("NaN grad_norm_sum (JSON NaN literal)", "POST", "/observations",
     '{"report_id":"bad","step":1,"observations":[{"prompt_id":"p","samples":8,"accepted":2,'
     '"grad_norm_sum":NaN,"grad_norm_count":2}]}',
     422, "invalid_request", "observations[0].grad_norm_sum", "finite_number"),
    ("Infinity grad norm", "POST", "/observations",
     '{"report_id":"bad","step":1,"observations":[{"prompt_id":"p","samples":8,"accepted":2,'
     '"grad_norms":[Infinity]}]}',
     422, "invalid_request", "observations[0].grad_norms[0]", "finite_number"),
    ("negative grad norm", "POST", "/observations", report(observation(grad_norms=[-1.0])),
     422, "invalid_request", "observations[0].grad_norms[0]", "greater_than_equal"),
    ("more norms than accepted", "POST", "/observations",
     report(observation(grad_norms=[1.0, 1.0, 1.0])),
     422, "invalid_request", "observations[0].grad_norms", "norms_le_accepted"),
    ("sum without count", "POST", "/observations",
     report(observation(grad_norms=None, grad_norm_sum=2.0)),
     422, "invalid_request", "observations[0].grad_norm_count", "grad_norm_pair"),
    ("count > accepted", "POST", "/observations",
     report(observation(grad_norms=None, grad_norm_sum=2.0, grad_norm_count=3)),
     422, "invalid_request", "observations[0].grad_norm_count", "count_le_accepted"),
    ("norms and sum", "POST", "/observations",
     report(observation(grad_norm_sum=2.0, grad_norm_count=2)),
     422, "invalid_request", "observations[0].grad_norms", "norms_or_sum"),
    ("more rejected norms than rejected samples", "POST", "/observations",
     report(observation(rejected_grad_norms=[1.0] * 7)),
     422, "invalid_request", "observations[0].rejected_grad_norms", "norms_le_rejected"),
    ("rejected count > samples - accepted", "POST", "/observations",
     report(observation(rejected_grad_norm_sum=2.0, rejected_grad_norm_count=7)),
     422, "invalid_request", "observations[0].rejected_grad_norm_count", "count_le_rejected"),
    ("rejected sum without count", "POST", "/observations",
     report(observation(rejected_grad_norm_sum=2.0)),
     422, "invalid_request", "observations[0].rejected_grad_norm_count", "grad_norm_pair"),
    ("rejected norms and sum", "POST", "/observations",
     report(observation(rejected_grad_norms=[1.0], rejected_grad_norm_sum=1.0,
                        rejected_grad_norm_count=1)),
     422, "invalid_request", "observations[0].rejected_grad_norms", "norms_or_sum"),
    ("NaN rejected norm", "POST", "/observations",
     report(observation(rejected_grad_norms=[1.0, "NaN"])),
     422, "invalid_request", "observations[0].rejected_grad_norms[1]", "float_type"),
    ("empty prompt id", "POST", "/observations", report(observation(prompt_id="")),
     422, "invalid_request", "observations[0].prompt_id", "string_too_short"),
    ("huge prompt id", "POST", "/observations", report(observation(prompt_id="x" * 257)),
     422, "invalid_request", "observations[0].prompt_id", "max_length"),
    ("too many observations", "POST", "/observations",
     report(*[observation(prompt_id=f"p{i}") for i in range(16_385)]),
     422, "invalid_request", "observations", "max_items"),
    ("empty report", "POST", "/observations", report(),
     422, "invalid_request", "observations", "too_short"),
    ("string for int", "POST", "/observations", report(observation(samples="8")),
     422, "invalid_request", "observations[0].samples", "int_type"),
    ("float for int", "POST", "/observations", report(observation(samples=8.0)),
     422, "invalid_request", "observations[0].samples", "int_type"),
    ("bool for int", "POST", "/observations", report(observation(), step=True),
     422, "invalid_request", "step", "int_type"),
    ("negative step", "POST", "/observations", report(observation(), step=-1),
     422, "invalid_request", "step", "greater_than_equal"),
    ("missing report_id", "POST", "/observations",
     {"step": 1, "observations": [OK_OBSERVATION]},
     422, "invalid_request", "report_id", "missing"),
    ("unknown field", "POST", "/observations", report(observation(weight=2)),
     422, "invalid_request", "observations[0].weight", "extra_forbidden"),
    ("unknown top-level field", "POST", "/observations", report(observation(), extra=1),
     422, "invalid_request", "extra", "extra_forbidden"),
    ("not JSON", "POST", "/observations", "{not json",
     422, "invalid_request", "body", "json_invalid"),
    ("JSON array body", "POST", "/observations", [OK_OBSERVATION],
     422, "invalid_request", "body", "model_attributes_type"),
    ("unknown run", "POST", "/observations?run=missing", report(observation()),
     404, "run_not_found", "run_id", "run_not_found"),
    ("bad run id", "POST", "/observations?run=bad%20id", report(observation()),
     422, "invalid_request", "run_id", "string_pattern_mismatch"),
    ("duplicate prompt ids", "POST", "/allocations",
     {"prompt_ids": ["a", "b", "a"], "budget": 9},
     422, "invalid_request", "prompt_ids[2]", "unique"),
    ("empty prompt ids", "POST", "/allocations", {"prompt_ids": [], "budget": 9},
     422, "invalid_request", "prompt_ids", "too_short"),
    ("negative budget", "POST", "/allocations", {"prompt_ids": ["a"], "budget": -1},
     422, "invalid_request", "budget", "greater_than_equal"),
    ("too many prompt ids", "POST", "/allocations",
     {"prompt_ids": [f"p{i}" for i in range(65_537)], "budget": 10**6},
     422, "invalid_request", "prompt_ids", "max_items"),
    ("huge prompt id in allocation", "POST", "/allocations",
     {"prompt_ids": ["a", "y" * 300], "budget": 9},
     422, "invalid_request", "prompt_ids[1]", "max_length"),
    ("infeasible budget (below the floor)", "POST", "/allocations",
     {"prompt_ids": ["a", "b", "c"], "budget": 2},
     422, "infeasible_budget", "budget", "infeasible_budget"),
    ("infeasible budget (above the cap)", "POST", "/allocations?config=capped",
     {"prompt_ids": ["a", "b"], "budget": 100},
     422, "infeasible_budget", "budget", "infeasible_budget"),
    ("allocation for unknown run", "POST", "/allocations?run=missing",
     {"prompt_ids": ["a"], "budget": 4},
     404, "run_not_found", "run_id", "run_not_found"),
    ("min > max in config", "PUT", "", {"min_samples": 8, "max_samples": 4},
     422, "invalid_request", "max_samples", "min_le_max"),
    ("unknown strategy", "PUT", "", {"strategy": "best"},
     422, "invalid_request", "strategy", "literal_error"),
    ("negative alpha", "PUT", "", {"alpha": -1},
     422, "invalid_request", "alpha", "greater_than_equal"),
    ("zero half-life", "PATCH", "", {"half_life_steps": 0},
     422, "invalid_request", "half_life_steps", "greater_than"),
    ("null alpha in patch", "PATCH", "", {"alpha": None},
     422, "invalid_request", "alpha", "float_type"),
    ("patch making min > max", "PATCH", "", {"min_samples": 100},
     422, "invalid_request", "max_samples", "min_le_max"),
    ("unknown config field", "PATCH", "", {"temperature": 1.0},
     422, "invalid_request", "temperature", "extra_forbidden"),
]  # fmt: skip


async def stored_state(client: httpx.AsyncClient, run_id: str) -> tuple[Any, ...]:
    base = f"/v1/runs/{run_id}"
    prompt = await client.get(f"{base}/prompts/p")
    summary = await client.get(f"{base}/summary")
    run = await client.get(base)
    return prompt.json(), summary.json(), run.json()


@pytest.mark.parametrize(
    ("method", "suffix", "body", "status", "code", "field", "rule"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_bad_request_is_rejected_and_changes_nothing(
    asgi_client: httpx.AsyncClient,
    run_id: str,
    method: str,
    suffix: str,
    body: Any,
    status: int,
    code: str,
    field: str | None,
    rule: str | None,
) -> None:
    base = f"/v1/runs/{run_id}"
    await asgi_client.put(base, json={"min_samples": 1, "max_samples": 32})
    seed = report(observation(), report_id="seed")
    assert (await asgi_client.post(f"{base}/observations", json=seed)).status_code == 200
    before = await stored_state(asgi_client, run_id)

    suffix, _, query = suffix.partition("?")
    target = base
    if query.startswith("run="):
        target = f"/v1/runs/{query.removeprefix('run=')}"
    if query == "config=capped":
        await asgi_client.patch(base, json={"max_samples": 4})
        before = await stored_state(asgi_client, run_id)
    content = body if isinstance(body, str) else json.dumps(body)
    response = await asgi_client.request(
        method, target + suffix, content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == status, response.text
    error = ErrorResponse.model_validate(response.json()).error
    assert error.code == code
    assert error.field == field
    assert rule in {detail.rule for detail in error.details}
    assert (field or "body") in error.message  # the message names the field ...
    assert await stored_state(asgi_client, run_id) == before  # ... and nothing changed


async def test_a_bad_observation_rejects_the_whole_report(
    asgi_client: httpx.AsyncClient, run_id: str
) -> None:
    base = f"/v1/runs/{run_id}"
    await asgi_client.put(base, json={})
    bad = report(observation(prompt_id="fine"), observation(prompt_id="bad", accepted=99))
    response = await asgi_client.post(f"{base}/observations", json=bad)
    assert response.json()["error"]["field"] == "observations[1].accepted"
    assert (await asgi_client.get(f"{base}/prompts/fine")).status_code == 404
    # The report id was not consumed: the corrected report is applied, not a duplicate.
    good = report(observation(prompt_id="fine"), observation(prompt_id="bad"))
    assert (await asgi_client.post(f"{base}/observations", json=good)).json()["duplicate"] is False


async def test_every_broken_observation_is_listed(
    asgi_client: httpx.AsyncClient, run_id: str
) -> None:
    base = f"/v1/runs/{run_id}"
    await asgi_client.put(base, json={})
    bad = report(
        observation(prompt_id="ok"),
        observation(prompt_id="a", accepted=9),
        observation(prompt_id="b", grad_norms=None, grad_norm_sum=1.0),
        *[observation(prompt_id=f"c{i}", accepted=10) for i in range(30)],
    )
    error = (await asgi_client.post(f"{base}/observations", json=bad)).json()["error"]
    assert error["field"] == "observations[1].accepted"
    fields = [d["field"] for d in error["details"]]
    assert fields[:3] == [
        "observations[1].accepted",
        "observations[2].grad_norm_count",
        "observations[3].accepted",
    ]
    assert len(fields) == 20  # capped; the message says how many more
    assert "(and 19 more)" in error["message"]
