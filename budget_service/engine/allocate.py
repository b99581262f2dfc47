"""How many samples each prompt gets: `allocate(estimates, budget, params)`.

Strategies (params.strategy):
- `gvm` (default): the exact integer minimiser of J(n) = sum_i c_i / n_i (cost.py) under
  min/max/explore bounds, with the total rounded down to a multiple of `align_to`, and costs c_i
  taken as posterior expectations (estimates.py) so uncertain prompts are neither starved nor
  flooded.
- `uniform`: the most even split the bounds allow (the same solver with equal costs).
- `gvm-paper`: the published rule, reproduced to the integer (paper.py).

A new strategy is a branch in `allocate`, next to these.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from budget_service.engine.cost import objective, regularised_cost
from budget_service.engine.estimates import Estimates
from budget_service.engine.paper import paper_allocation
from budget_service.engine.params import (
    CODE,
    F64,
    I64,
    AllocationError,
    AllocationParams,
    AllocationPlan,
    InfeasibleBudgetError,
    InvalidStatisticsError,
    Reason,
)
from budget_service.engine.solver import cost_scale, even_split, solve

__all__ = ["allocate"]


def allocate(estimates: Estimates, budget: int, params: AllocationParams) -> AllocationPlan:
    """Samples per prompt for one batch (see the module docstring for the strategies)."""
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 0:
        raise AllocationError(f"budget must be an integer >= 0, not {budget!r}", field="budget")
    if estimates.p_hat.size == 0:
        raise InfeasibleBudgetError(
            "the batch is empty: no prompts to allocate to", field="prompts"
        )
    _validate(estimates)
    match params.strategy:
        case "gvm" | "uniform":
            return _within_bounds(estimates, int(budget), params)
        case "gvm-paper":
            return paper_allocation(estimates, int(budget), params)


def _within_bounds(estimates: Estimates, budget: int, params: AllocationParams) -> AllocationPlan:
    """`gvm` and `uniform`: the bounds, the costs, then the solver or the even split."""
    m = estimates.p_hat.size
    lower, upper, explore, N = _bounds(estimates, budget, params)
    cost = _plugin_cost(estimates, params)
    uniform = even_split(lower, upper, N)
    if params.strategy == "uniform":
        samples, q = uniform, math.nan
        weights = np.full(m, 1.0 / m)
    else:
        samples, q = solve(cost, lower, upper, N)
        weights = np.sqrt(cost)
        total_root = float(weights.sum())
        if total_root > 0:
            weights /= total_root
        else:
            weights[:] = 1.0 / m
    return AllocationPlan(
        samples=samples,
        weights=weights,
        reason_codes=_reason_codes(cost, samples, lower, upper, explore, q, N, params),
        total=int(samples.sum()),
        budget=budget,
        predicted_variance=objective(cost, samples),
        uniform_variance=objective(cost, uniform),
    )


def _plugin_cost(estimates: Estimates, params: AllocationParams) -> F64:
    """The per-prompt cost c_i the allocator minimises with: the estimates' posterior
    expectation when they carry one for these params, else c(p_hat, g_hat) plugged in."""
    if estimates.expected_cost is not None:
        key = (params.alpha, params.beta, params.algo)
        if estimates.cost_key != key:
            raise AllocationError(
                f"estimates carry costs for (alpha, beta, algo)={estimates.cost_key}, not {key}: "
                "compute them with the same params"
            )
        return estimates.expected_cost
    if params.algo == "grpo":
        return np.square(estimates.g_hat) * estimates.p_hat * (1.0 - estimates.p_hat)
    return regularised_cost(estimates.p_hat, estimates.g_hat, params.alpha, params.beta)


def _validate(estimates: Estimates) -> None:
    fields: list[tuple[str, F64 | None, float, float]] = [
        ("p_hat", estimates.p_hat, 0.0, 1.0),
        ("g_hat", estimates.g_hat, 0.0, math.inf),
        ("expected_cost", estimates.expected_cost, 0.0, math.inf),
    ]
    m = estimates.p_hat.shape
    for name, values, low, high in fields:
        if values is None:
            continue
        if values.shape != m:
            raise InvalidStatisticsError(
                f"{name} has shape {values.shape}, p_hat has {m}", field=name
            )
        lo, hi = float(values.min()), float(values.max())
        if low <= lo and hi <= high and math.isfinite(hi):  # NaN fails every comparison
            continue
        bad = ~(np.isfinite(values) & (values >= low) & (values <= high))
        i = int(np.argmax(bad))
        raise InvalidStatisticsError(
            f"{name}[{i}] = {float(values[i])!r} is not a finite number in [{low}, {high}]",
            field=name,
        )


def _bounds(
    estimates: Estimates, budget: int, params: AllocationParams
) -> tuple[I64, I64, NDArray[np.bool_], int]:
    """Per-prompt bounds, the explore mask and the aligned budget; InfeasibleBudgetError if
    the bounds cannot meet it. The explore floor shrinks (not below min_samples) when the
    floors together would exceed the budget: exploration must never make a request fail."""
    m = estimates.p_hat.size
    k = params.align_to
    N = budget // k * k
    low = params.lower_bound
    cap = params.max_samples
    aligned = f"budget {budget}" + (
        f" (aligned down to {N} for align_to={k})" if budget != N else ""
    )
    if low * m > N:
        raise InfeasibleBudgetError(
            f"{aligned} is below the floor: {m} prompts x min_samples {low} = {low * m}"
            + (" (GRPO needs 2 per prompt)" if low > params.min_samples else ""),
            field="budget",
        )
    if cap is not None and cap * m < N:
        raise InfeasibleBudgetError(
            f"{aligned} is above the cap: {m} prompts x max_samples {cap} = {cap * m}",
            field="budget",
        )
    upper = np.full(m, N if cap is None else cap, np.int64)
    explore = estimates.explore_mask()
    n_explore = int(np.count_nonzero(explore))
    floor = min(params.explore_samples, N if cap is None else cap)
    if n_explore and floor > low:
        room = (N - low * (m - n_explore)) // n_explore
        lower = np.where(explore, max(low, min(floor, room)), low)
    else:
        lower = np.full(m, low, np.int64)
    return lower, upper, explore, N


def _reason_codes(
    cost: F64,
    samples: I64,
    lower: I64,
    upper: I64,
    explore: NDArray[np.bool_],
    q: float,
    total: int,
    params: AllocationParams,
) -> NDArray[np.int8]:
    """gvm unless a bound binds: the rule wanted fewer than l_i (floor, or explore when l_i is
    the explore floor) or more than u_i (cap). What gvm wants is K_i = #units with marginal gain
    >= 1/q (q from solver.solve, on costs scaled like there); what uniform wants is the even
    share."""
    m = samples.size
    codes = np.full(m, CODE[Reason.gvm], np.int8)
    checks = [(samples == lower, Reason.floor)]
    if params.max_samples is not None:  # without a cap, upper is just the budget
        checks.append((samples == upper, Reason.cap))
    scale = cost_scale(float(cost.max()))
    for at_bound, reason in checks:
        idx = np.flatnonzero(at_bound)
        if idx.size == 0:
            continue
        if math.isnan(q):  # uniform
            wanted = np.full(idx.size, total / m)
        else:
            c = cost[idx] * scale
            with np.errstate(invalid="ignore"):  # 0 * inf: a zero-cost prompt wants nothing
                wanted = np.where(c > 0, np.floor(0.5 + np.sqrt(0.25 + c * q)), 0.0)
        if reason == Reason.floor:
            binds = idx[wanted < lower[idx]]
            explored = explore[binds] & (lower[binds] > params.lower_bound)
            codes[binds] = np.where(explored, CODE[Reason.explore], CODE[Reason.floor])
        else:
            codes[idx[wanted > upper[idx]]] = CODE[Reason.cap]
    return codes
