"""Every strategy's integers are the exact optimum of its own objective, with and without
`drawn` (top-ups): brute force over every integer vector with the right total within the
bounds, on small instances drawn by hypothesis. GRPO top-ups are exact on their convex
envelope; against f itself the gap is bounded by `envelope_gap` and measured."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budget_service.engine import (
    AllocationError,
    AllocationParams,
    Estimates,
    InfeasibleBudgetError,
    PromptStatistics,
    RunTotals,
    allocate,
    estimate,
    objective,
)
from budget_service.engine.group import envelope_gap, group_mse
from budget_service.engine.knapsack import knapsack_gains, knapsack_value, log_gamma


def _instance(seed: int, m: int, params: AllocationParams) -> Estimates:
    """Estimates from a pilot of a U-shaped mix, through `estimate` (posteriors included)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.3, 0.3, m)
    n = rng.integers(0, 6, m).astype(np.float64)
    acc = rng.binomial(n.astype(int), p).astype(np.float64)
    g = rng.uniform(0.5, 2.0, m)
    stats = PromptStatistics(n, acc, g * acc, acc, np.zeros(m, np.int64))
    totals = RunTotals(float(n.sum()), float(acc.sum()), float((g * acc).sum()), float(acc.sum()))
    return estimate(stats, totals, 0, params)


def _vectors(lower: list[int], upper: list[int], total: int) -> list[tuple[int, ...]]:
    ranges = [range(lo, hi + 1) for lo, hi in zip(lower, upper, strict=True)]
    return [t for t in itertools.product(*ranges) if sum(t) == total]


def _brute_force(
    est: Estimates, budget: int, params: AllocationParams, drawn: np.ndarray
) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
    """Every feasible vector of totals, and the bounds, built from the contract's rules (not
    from the engine): totals in [max(l_i, d_i), max(u_i, d_i)], sum = aligned budget + sum d."""
    N = budget // params.align_to * params.align_to
    low = params.lower_bound
    explore = est.explore_mask()
    floor = min(params.explore_samples, params.max_samples or 10**9)
    # the explore floor, shrunk (not below low) until the floors fit the budget
    f = max(floor, low)
    while f > low and np.maximum(np.where(explore, f, low) - drawn, 0).sum() > N:
        f -= 1
    lower = np.maximum(np.where(explore, f, low), drawn)
    cap = params.max_samples if params.max_samples is not None else N + int(drawn.max())
    upper = np.maximum(cap, drawn)
    return _vectors(lower.tolist(), upper.tolist(), N + int(drawn.sum())), lower, upper


def _starved(cost: np.ndarray, totals: tuple[int, ...] | np.ndarray) -> int:
    return int(((np.asarray(totals) == 0) & (cost > 0)).sum())


def _cost(est: Estimates) -> np.ndarray:
    assert est.expected_cost is not None
    return est.expected_cost


strategies = st.sampled_from(["gvm", "uniform", "knapsack"])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    m=st.integers(1, 4),
    budget=st.integers(0, 14),
    strategy=strategies,
    algo=st.sampled_from(["raft", "grpo"]),
    min_samples=st.integers(0, 2),
    cap=st.sampled_from([None, 4, 6]),
    align=st.sampled_from([1, 2]),
    with_drawn=st.booleans(),
)
def test_each_strategy_is_the_exact_optimum_of_its_objective(
    seed: int,
    m: int,
    budget: int,
    strategy: str,
    algo: str,
    min_samples: int,
    cap: int | None,
    align: int,
    with_drawn: bool,
) -> None:
    params = AllocationParams(
        strategy=strategy,  # type: ignore[arg-type]
        algo=algo,  # type: ignore[arg-type]
        min_samples=min_samples,
        max_samples=cap,
        align_to=align,
    )
    est = _instance(seed, m, params)
    rng = np.random.default_rng(seed + 1)
    drawn = rng.integers(0, 7, m) if with_drawn else np.zeros(m, np.int64)
    vectors, _, _ = _brute_force(est, budget, params, drawn)
    if not vectors:
        with pytest.raises(InfeasibleBudgetError):
            allocate(est, budget, params, drawn if with_drawn else None)
        return
    plan = allocate(est, budget, params, drawn if with_drawn else None)
    totals = plan.samples + drawn
    assert (plan.samples >= 0).all()
    assert plan.total == int(plan.samples.sum()) == budget // align * align
    assert tuple(totals.tolist()) in vectors  # within the bounds, the right total
    cost = _cost(est)
    if strategy == "gvm":
        # a c > 0 prompt left at 0 costs +inf (the objective reported leaves it out): first
        # the fewest starved prompts, then J among the vectors that starve none
        starved = min(_starved(cost, v) for v in vectors)
        assert _starved(cost, totals) == starved
        if starved == 0:
            best = min(objective(cost, np.array(v)) for v in vectors if not _starved(cost, v))
            assert objective(cost, totals) <= best * (1 + 1e-12) + 1e-300
    elif strategy == "knapsack":
        best = max(knapsack_value(est, np.array(v)) for v in vectors)
        assert knapsack_value(est, totals) >= best - 1e-12 * max(abs(best), 1e-300)
    else:  # uniform: the most even totals (smallest sum of squares) the bounds allow
        best_sq = min(sum(x * x for x in v) for v in vectors)
        assert int((totals**2).sum()) == best_sq
    # the objectives are reported on the totals
    assert plan.predicted_variance == pytest.approx(objective(cost, totals), rel=1e-12)


def test_without_drawn_nothing_changes() -> None:
    params = AllocationParams()
    est = _instance(3, 50, params)
    plain = allocate(est, 400, params)
    zero = allocate(est, 400, params, np.zeros(50, np.int64))
    assert (plain.samples == zero.samples).all()
    assert plain.predicted_variance == zero.predicted_variance
    assert plain.reasons == zero.reasons


def test_a_prompt_over_its_cap_gets_nothing_and_the_rest_is_spent() -> None:
    params = AllocationParams(max_samples=8)
    est = _instance(5, 4, params)
    drawn = np.array([12, 0, 0, 0])
    plan = allocate(est, 12, params, drawn)
    assert plan.samples[0] == 0
    assert plan.total == 12
    assert ((plan.samples + drawn)[1:] <= 8).all()


def test_infeasible_top_ups_name_budget_floor_and_cap() -> None:
    params = AllocationParams(min_samples=4, max_samples=6)
    est = _instance(7, 3, params)
    with pytest.raises(InfeasibleBudgetError, match=r"below the floor.*already drawn") as floor:
        allocate(est, 3, params, np.array([2, 2, 4]))  # needs 2 + 2 more
    assert floor.value.field == "budget"
    with pytest.raises(InfeasibleBudgetError, match=r"above the cap.*already drawn") as cap:
        allocate(est, 5, params, np.array([6, 5, 3]))  # room for 0 + 1 + 3 = 4
    assert cap.value.field == "budget"


def test_gvm_paper_refuses_drawn_instead_of_ignoring_it() -> None:
    params = AllocationParams(strategy="gvm-paper", prior_strength=0)
    est = Estimates.from_rates([0.2, 0.5], [1.0, 1.0])
    with pytest.raises(AllocationError, match="no top-ups") as error:
        allocate(est, 8, params, [4, 4])
    assert error.value.field == "drawn"


@pytest.mark.parametrize(
    ("drawn", "accepted", "field"),
    [
        ([1, 2], None, "drawn"),
        ([1, -1, 2], None, "drawn[1]"),
        ([1, 2.5, 2], None, "drawn[1]"),
        ([1, 2, 2], [1, 3, 0], "drawn_accepted[1]"),
        ([1, 2, 2], [0, -1, 0], "drawn_accepted[1]"),
        (None, [0, 0, 0], "drawn_accepted"),
    ],
)
def test_bad_drawn_names_the_field_and_index(
    drawn: list[float] | None, accepted: list[int] | None, field: str
) -> None:
    params = AllocationParams()
    est = _instance(9, 3, params)
    with pytest.raises(AllocationError) as error:
        allocate(est, 6, params, drawn, accepted)  # type: ignore[arg-type]
    assert error.value.field == field


def test_knapsack_gains_match_the_closed_form_moments() -> None:
    # E[p^k (1-p)^j] under Beta(a, b) against math.lgamma, and the value's increments
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.01, 30, 200), rng.uniform(0.01, 30, 200)
    for x in (a, b, a + 17.5):
        expected = np.array([math.lgamma(v) for v in x])
        assert np.allclose(log_gamma(x), expected, rtol=1e-13, atol=1e-13)
    est = Estimates(a / (a + b), np.ones(200), posterior_a=a, posterior_b=b)

    floor = rng.integers(1, 9, 200)
    gains = knapsack_gains(est, floor)(np.arange(200), np.zeros(200, np.int64), 6)
    for j in range(6):
        step = [
            knapsack_value(_one(est, i), np.array([floor[i] + j + 1]))
            - knapsack_value(_one(est, i), np.array([floor[i] + j]))
            for i in range(200)
        ]
        assert np.allclose(gains[:, j], step, rtol=1e-8, atol=1e-15)
    assert (np.diff(gains, axis=1) <= 0).all()  # concave: gains fall with n


def _one(est: Estimates, i: int) -> Estimates:
    assert est.posterior_a is not None
    assert est.posterior_b is not None
    return Estimates(
        est.p_hat[i : i + 1],
        est.g_hat[i : i + 1],
        posterior_a=est.posterior_a[i : i + 1],
        posterior_b=est.posterior_b[i : i + 1],
    )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), m=st.integers(1, 4), budget=st.integers(0, 12))
def test_grpo_top_ups_are_exact_on_the_envelope_and_within_its_gap(
    seed: int, m: int, budget: int
) -> None:
    params = AllocationParams(algo="grpo")
    est = _instance(seed, m, params)
    rng = np.random.default_rng(seed + 2)
    drawn = rng.integers(0, 6, m)
    accepted = rng.binomial(drawn, 0.5)
    vectors, lower, _ = _brute_force(est, budget, params, drawn)
    if not vectors:
        with pytest.raises(InfeasibleBudgetError):
            allocate(est, budget, params, drawn, accepted)
        return
    plan = allocate(est, budget, params, drawn, accepted)
    totals = plan.samples + drawn
    assert tuple(totals.tolist()) in vectors
    best = min(group_mse(est, drawn, accepted, np.array(v)) for v in vectors)
    got = group_mse(est, drawn, accepted, totals)
    gap = envelope_gap(est, drawn, accepted, lower, totals, int(totals.max() - lower.min()) + 1)
    assert best - 1e-12 <= got <= best + gap + 1e-12


@pytest.mark.parametrize(
    ("params", "accepted"),
    [(AllocationParams(strategy="knapsack"), None), (AllocationParams(algo="grpo"), [1, 1])],
)
def test_a_budget_too_large_to_weigh_unit_by_unit_is_refused(
    params: AllocationParams, accepted: list[int] | None
) -> None:
    est = _instance(11, 2, params)
    with pytest.raises(AllocationError) as error:
        allocate(est, 10**9, params, [2, 2], accepted)
    assert error.value.field == "budget"
