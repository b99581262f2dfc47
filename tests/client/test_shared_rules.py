"""One table, two sides: every bad observation in tests/support/cases.py is refused by the live
service (422 naming the field and the rule) and by the client's models (the same field and rule)
before it can reach the spool; every uniform split gives the client's fallback the service's
integers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from support.cases import BAD_OBSERVATIONS, OK_OBSERVATION, UNIFORM_SPLITS

from trainer_client import BudgetClient, InvalidRequestError, Observation, RetryPolicy
from trainer_client.client import uniform_split

NOBODY = "http://127.0.0.1:9"  # the discard port: a report that got past validation would spool


def post_report(service_url: str, run_id: str, observation: dict[str, Any]) -> httpx.Response:
    body = {"report_id": "r", "step": 1, "observations": [observation]}
    with httpx.Client(base_url=service_url, timeout=10) as http:
        assert http.put(f"/v1/runs/{run_id}", json={}).status_code == 201
        return http.post(
            f"/v1/runs/{run_id}/observations",
            content=json.dumps(body),  # NaN and Infinity go out as JSON literals, as a trainer may
            headers={"content-type": "application/json"},
        )


def field_path(loc: tuple[int | str, ...]) -> str:
    """('grad_norms', 1) -> 'grad_norms[1]', as the service names fields."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)[1:]


def test_the_good_observation_passes_both(service_url: str, run_id: str, tmp_path: Path) -> None:
    answer = post_report(service_url, run_id, OK_OBSERVATION)
    assert answer.status_code == 200, answer.text
    assert answer.json()["applied"] == 1
    with BudgetClient(NOBODY, spool_path=tmp_path / "spool.jsonl") as client:
        assert client.report(run_id, 1, [OK_OBSERVATION]).spooled


@pytest.mark.parametrize(
    ("observation", "field", "rule"),
    [case[1:] for case in BAD_OBSERVATIONS],
    ids=[case[0] for case in BAD_OBSERVATIONS],
)
def test_a_bad_observation_is_refused_by_both(
    service_url: str, run_id: str, tmp_path: Path, observation: dict[str, Any], field: str,
    rule: str,
) -> None:  # fmt: skip
    answer = post_report(service_url, run_id, observation)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == f"observations[0].{field}"
    assert rule in {detail["rule"] for detail in error["details"]}

    with pytest.raises(pydantic.ValidationError) as refused:
        Observation.model_validate(observation)
    assert (field, rule) in {(field_path(e["loc"]), e["type"]) for e in refused.value.errors()}
    with (
        BudgetClient(NOBODY, spool_path=tmp_path / "spool.jsonl") as client,
        pytest.raises(pydantic.ValidationError),
    ):
        client.report(run_id, 1, [observation])
    assert len(client.spool) == 0


@pytest.mark.parametrize(
    ("config", "budget", "count", "feasible", "drawn"),
    [case[1:] for case in UNIFORM_SPLITS],
    ids=[case[0] for case in UNIFORM_SPLITS],
)
def test_the_fallback_split_is_the_services_uniform(
    service_url: str, run_id: str, config: dict[str, Any], budget: int, count: int,
    feasible: bool, drawn: list[int] | None,
) -> None:  # fmt: skip
    prompts = [f"p{i}" for i in range(count)]
    with BudgetClient(service_url) as client:
        known = client.put_run(run_id, strategy="uniform", **config).config  # what the client keeps
        if not feasible:
            with pytest.raises(InvalidRequestError) as service:
                client.allocate(run_id, prompts, budget, step=0, drawn=drawn)
            with pytest.raises(InvalidRequestError) as fallback:
                uniform_split(budget, count, known, drawn)
            assert service.value.code == fallback.value.code == "infeasible_budget"
            assert service.value.field == fallback.value.field == "budget"
            assert fallback.value.body["error"]["message"] == service.value.body["error"]["message"]
            return
        counts = client.allocate(run_id, prompts, budget, step=0, drawn=drawn).counts
    assert uniform_split(budget, count, known, drawn) == counts
    assert sum(counts) <= budget


def test_a_top_up_falls_back_to_even_totals(run_id: str) -> None:
    """The service down during a top-up: the fallback evens out the step's totals, not the
    additional samples, and never spends more than the additional budget."""
    with BudgetClient(NOBODY, retry=RetryPolicy(attempts=1)) as client:
        allocation = client.allocate(run_id, ["a", "b", "c"], 6, step=3, drawn=[6, 0, 2])
    assert allocation.fallback
    assert allocation.counts == [0, 4, 2]  # totals 6, 4, 4
