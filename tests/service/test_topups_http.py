"""Top-ups (`drawn`, `drawn_accepted`) over real HTTP against the live service and real Redis:
the samples are additional, the bounds and the budget rules hold, the variances are on the
totals, and every bad input is a 422 in the one error shape naming the field and the index."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from budget_service.engine import AllocationParams, PromptStatistics, RunTotals, estimate, objective
from budget_service.schemas import Allocation, ErrorResponse

IDS = ["p0", "p1", "p2", "p3", "p4"]
PILOT = [(4, 0), (4, 1), (4, 2), (4, 4), (2, 1)]  # (samples, accepted) reported this step


@pytest.fixture
def client(service_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, timeout=10) as client:
        yield client


def _run(client: httpx.Client, run_id: str, **config: Any) -> str:
    base = f"/v1/runs/{run_id}"
    assert client.put(base, json=config).status_code == 201
    observations = [
        {"prompt_id": i, "samples": n, "accepted": k, "grad_norm_sum": 1.5 * k,
         "grad_norm_count": k}
        for i, (n, k) in zip(IDS, PILOT, strict=True)
    ]  # fmt: skip
    report = {"report_id": "pilot-3", "step": 3, "observations": observations}
    assert client.post(f"{base}/observations", json=report).status_code == 200
    return base


def _allocate(client: httpx.Client, base: str, **body: Any) -> httpx.Response:
    return client.post(f"{base}/allocations", json={"prompt_ids": IDS, "step": 3, **body})


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    ErrorResponse.model_validate(response.json())
    return response.json()["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("strategy", ["gvm", "uniform", "knapsack"])
def test_a_top_up_answers_additional_samples_within_bounds_on_totals(
    client: httpx.Client, run_id: str, strategy: str
) -> None:
    base = _run(client, run_id, strategy=strategy, min_samples=3, max_samples=9, align_to=4)
    drawn = [n for n, _ in PILOT]
    answer = _allocate(client, base, budget=23, drawn=drawn, drawn_accepted=[k for _, k in PILOT])
    assert answer.status_code == 200, answer.text
    plan = Allocation.model_validate(answer.json())
    samples = np.array([item.samples for item in plan.items])
    totals = samples + drawn
    assert plan.budget == 23  # the additional budget, as asked
    assert plan.total == int(samples.sum()) == 20  # aligned down to a multiple of 4
    assert (samples >= 0).all()
    assert ((totals >= 3) & (totals <= 9)).all()
    # the variances are the objective on the totals, from the service's own estimates
    stats = PromptStatistics(
        np.array([n for n, _ in PILOT], float),
        np.array([k for _, k in PILOT], float),
        np.array([1.5 * k for _, k in PILOT]),
        np.array([k for _, k in PILOT], float),
        np.full(5, 3),
    )
    total = sum(n for n, _ in PILOT)
    accepted = sum(k for _, k in PILOT)
    params = AllocationParams(strategy=strategy, min_samples=3, max_samples=9, align_to=4)  # type: ignore[arg-type]
    est = estimate(stats, RunTotals(total, accepted, 1.5 * accepted, accepted, 3), 3, params)
    assert est.expected_cost is not None
    assert plan.predicted_variance == pytest.approx(objective(est.expected_cost, totals))
    # the latest allocation is the top-up as served
    latest = client.get(f"{base}/allocations/latest").json()
    assert latest == answer.json()


def test_without_drawn_the_answer_is_unchanged(client: httpx.Client, run_id: str) -> None:
    base = _run(client, run_id)
    plain = _allocate(client, base, budget=30).json()
    zero = _allocate(client, base, budget=30, drawn=[0] * 5).json()
    assert plain["items"] == zero["items"]
    assert plain["predicted_variance"] == zero["predicted_variance"]


def test_a_grpo_top_up_uses_the_group_so_far(client: httpx.Client, run_id: str) -> None:
    base = _run(client, run_id, algo="grpo")
    drawn = [n for n, _ in PILOT]
    group = _allocate(client, base, budget=20, drawn=drawn, drawn_accepted=[k for _, k in PILOT])
    plain = _allocate(client, base, budget=20, drawn=drawn)
    assert group.status_code == plain.status_code == 200
    for answer in (group, plain):
        assert sum(item["samples"] for item in answer.json()["items"]) == 20


def test_gvm_paper_refuses_drawn(client: httpx.Client, run_id: str) -> None:
    base = _run(client, run_id, strategy="gvm-paper", prior_strength=0)
    error = _error(_allocate(client, base, budget=20, drawn=[1] * 5))
    assert error["field"] == "drawn"
    assert "no top-ups" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"drawn": [1, 2, 3, 4]}, "drawn[4]"),
        ({"drawn": [1, 2, 3, 4, 5, 6]}, "drawn[5]"),
        ({"drawn": [1, 2, 3, -1, 5]}, "drawn[3]"),
        ({"drawn": [1, 2, 3, 1.5, 5]}, "drawn[3]"),
        ({"drawn": [1, 2, 3, "4", 5]}, "drawn[3]"),
        ({"drawn": [1, 2, 3, 4, 5], "drawn_accepted": [0, 0, 4, 0, 0]}, "drawn_accepted[2]"),
        ({"drawn": [1, 2, 3, 4, 5], "drawn_accepted": [0, 0, 0]}, "drawn_accepted[3]"),
        ({"drawn": [1, 2, 3, 4, 5], "drawn_accepted": [0, -2, 0, 0, 0]}, "drawn_accepted[1]"),
        ({"drawn_accepted": [0, 0, 0, 0, 0]}, "drawn_accepted"),
    ],
)
def test_bad_drawn_is_a_422_naming_the_field_and_index(
    client: httpx.Client, run_id: str, body: dict[str, Any], field: str
) -> None:
    base = _run(client, run_id)
    error = _error(_allocate(client, base, budget=20, **body))
    assert error["field"] == field
    assert error["details"][0]["field"] == field


def test_a_budget_below_the_floors_left_is_a_422_naming_budget(
    client: httpx.Client, run_id: str
) -> None:
    base = _run(client, run_id, min_samples=4)
    error = _error(_allocate(client, base, budget=5, drawn=[4, 4, 0, 4, 2]))  # needs 4 + 2
    assert error["field"] == "budget"
    assert "below the floor" in error["message"]
    assert "already drawn" in error["message"]
