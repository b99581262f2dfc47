"""How many samples each prompt gets: `allocate(estimates, budget, params)`.

Strategies (params.strategy):
- `gvm` (default): the exact integer minimiser of J(n) = sum_i c_i / n_i (cost.py) under
  min/max/explore bounds, with the total rounded down to a multiple of `align_to`, and costs c_i
  taken as posterior expectations (estimates.py) so uncertain prompts are neither starved nor
  flooded.
- `uniform`: the most even split the bounds allow (the same solver with equal costs).
- `gvm-paper`: the published rule, reproduced to the integer (paper.py).
- `knapsack`: Knapsack RL's value sum_i E_post[v(n_i, p_i)], maximised exactly (knapsack.py);
  needs no gradient norms.

Top-ups (`drawn`): the strategy optimises the step's totals t_i = drawn_i + x_i and answers the
additional x_i. Decision (checked by brute force in tests/engine/test_topups_exact.py): this is
the one-shot problem on totals, with bounds [max(l_i, d_i), max(u_i, d_i)] (x_i >= 0, so a prompt
already over its cap gets 0) and total N + sum d, N the aligned additional budget; so the same
solvers apply unchanged, the explore floor and the reasons are on totals, and the objective
reported is J on totals. With algo = "grpo" and `drawn_accepted`, `gvm` minimises the expected
RLOO error of the step's groups given what they hold (group.py) instead of J. `gvm-paper` is the
published one-shot rule: it has no top-ups, and `drawn` is refused rather than ignored.

A new strategy is a branch in `allocate`, next to these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from budget_service.engine.cost import objective, regularised_cost
from budget_service.engine.estimates import Estimates
from budget_service.engine.greedy import take_largest
from budget_service.engine.group import group_topup
from budget_service.engine.knapsack import knapsack_gains
from budget_service.engine.paper import paper_allocation
from budget_service.engine.params import (
    CODE,
    F64,
    I64,
    AllocationError,
    AllocationParams,
    AllocationPlan,
    InfeasibleBudgetError,
    Reason,
)
from budget_service.engine.solver import cost_scale, even_split, solve

__all__ = ["allocate"]


def allocate(
    estimates: Estimates,
    budget: int,
    params: AllocationParams,
    drawn: Sequence[int] | I64 | None = None,
    drawn_accepted: Sequence[int] | I64 | None = None,
) -> AllocationPlan:
    """Samples per prompt for one batch (see the module docstring for the strategies).

    `drawn`: samples of each prompt already drawn this step (and reported); the plan's samples
    are then the additional ones and `budget` the additional budget. `drawn_accepted`: how many
    of them were accepted (<= drawn); used by `gvm` under algo = "grpo".
    """
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 0:
        raise AllocationError(f"budget must be an integer >= 0, not {budget!r}", field="budget")
    if estimates.p_hat.size == 0:
        raise InfeasibleBudgetError(
            "the batch is empty: no prompts to allocate to", field="prompts"
        )
    estimates.validate()
    d, k = _drawn(drawn, drawn_accepted, estimates.p_hat.size)
    if params.strategy == "gvm-paper":
        if d is not None:
            raise AllocationError(
                "drawn: gvm-paper is the published one-shot rule and has no top-ups; "
                "use gvm, uniform or knapsack with drawn, or leave drawn out",
                field="drawn",
                rule="no_topups_in_gvm_paper",
            )
        return paper_allocation(estimates, int(budget), params)
    return _within_bounds(estimates, int(budget), params, d, k)


def _drawn(
    drawn: Sequence[int] | I64 | None, accepted: Sequence[int] | I64 | None, m: int
) -> tuple[I64 | None, I64 | None]:
    """`drawn` and `drawn_accepted` as int64 arrays, checked (AllocationError names the entry)."""
    if drawn is None:
        if accepted is not None:
            raise AllocationError("drawn_accepted is given without drawn", field="drawn_accepted")
        return None, None
    arrays: list[I64] = []
    for name, values in (("drawn", drawn), ("drawn_accepted", accepted)):
        if values is None:
            continue
        raw = np.asarray(values)
        if raw.shape != (m,):
            raise AllocationError(
                f"{name} has shape {raw.shape}, the batch has {m} prompts", field=name
            )
        if raw.dtype.kind not in "iu":  # floats, bools, objects: name the first non-int
            items = raw.tolist() if isinstance(values, np.ndarray) else list(values)
            i = next(j for j, v in enumerate(items) if type(v) is not int)
            raise AllocationError(
                f"{name}[{i}] = {items[i]!r} is not an integer", field=f"{name}[{i}]"
            )
        arr = raw.astype(np.int64)
        if arr.min() < 0:
            i = int(np.argmax(arr < 0))
            raise AllocationError(f"{name}[{i}] = {arr[i]} is negative", field=f"{name}[{i}]")
        arrays.append(arr)
    d = arrays[0]
    k = arrays[1] if len(arrays) > 1 else None
    if k is not None and bool((k > d).any()):
        i = int(np.argmax(k > d))
        raise AllocationError(
            f"drawn_accepted[{i}] = {k[i]} exceeds drawn[{i}] = {d[i]}",
            field=f"drawn_accepted[{i}]",
        )
    return d, k


def _within_bounds(
    estimates: Estimates,
    budget: int,
    params: AllocationParams,
    drawn: I64 | None,
    accepted: I64 | None,
) -> AllocationPlan:
    """Every strategy but gvm-paper: the bounds on the totals, the costs, then the strategy's
    exact optimiser; the answer is the totals less what was drawn."""
    m = estimates.p_hat.size
    d = np.zeros(m, np.int64) if drawn is None else drawn
    lower, upper, explore, N = _bounds(estimates, budget, params, d)
    total = N + int(d.sum())
    cost = _plugin_cost(estimates, params)
    uniform = even_split(lower, upper, total)
    need = total - int(lower.sum())  # units past the floors
    # the gvm solver's threshold, for its reasons (nan: uniform; None: the greedy strategies,
    # whose reasons are their bounds wherever a total sits at one)
    q: float | None = None
    weights = np.sqrt(cost)
    match params.strategy:
        case "uniform":
            totals, q = uniform, math.nan
            weights = np.full(m, 1.0 / m)
        case "knapsack":
            totals = lower + take_largest(
                knapsack_gains(estimates, lower), lower, upper - lower, need
            )
            weights = totals / max(total, 1)
        case _ if params.algo == "grpo" and accepted is not None:
            totals = lower + group_topup(estimates, d, accepted, lower, upper - lower, need)
        case _:
            totals, q = solve(cost, lower, upper, total)
    if params.strategy == "gvm":
        total_root = float(weights.sum())
        weights = weights / total_root if total_root > 0 else np.full(m, 1.0 / m)
    samples = totals - d
    return AllocationPlan(
        samples=samples,
        weights=weights,
        reason_codes=_reason_codes(cost, totals, lower, upper, explore, q, total, params),
        total=int(samples.sum()),
        budget=budget,
        predicted_variance=objective(cost, totals),
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


def _bounds(
    estimates: Estimates, budget: int, params: AllocationParams, drawn: I64
) -> tuple[I64, I64, NDArray[np.bool_], int]:
    """Per-prompt bounds on the totals drawn + x, the explore mask and the aligned additional
    budget N; InfeasibleBudgetError if the bounds cannot meet it. The explore floor shrinks (not
    below min_samples) when the floors together would exceed the budget: exploration must never
    make a request fail."""
    m = estimates.p_hat.size
    k = params.align_to
    N = budget // k * k
    low = params.lower_bound
    cap = params.max_samples
    already = int(drawn.sum())
    short_of_floor = int(np.maximum(low - drawn, 0).sum())
    aligned = f"budget {budget}" + (
        f" (aligned down to {N} for align_to={k})" if budget != N else ""
    )
    if short_of_floor > N:
        floors = f"{m} prompts x min_samples {low} = {low * m}"
        if already:
            floors += f", less the {already} already drawn, needs {short_of_floor}"
        raise InfeasibleBudgetError(
            f"{aligned} is below the floor: {floors}"
            + (" (GRPO needs 2 per prompt)" if low > params.min_samples else ""),
            field="budget",
        )
    if cap is not None and (room_under_cap := int(np.maximum(cap - drawn, 0).sum())) < N:
        caps = f"{m} prompts x max_samples {cap} = {cap * m}"
        if already:
            caps += f", less the {already} already drawn, leaves {room_under_cap}"
        raise InfeasibleBudgetError(f"{aligned} is above the cap: {caps}", field="budget")
    upper = drawn + N if cap is None else np.maximum(cap, drawn)
    explore = estimates.explore_mask()
    floor = min(params.explore_samples, N + int(drawn.max()) if cap is None else cap)
    lower = np.full(m, low, np.int64)
    if explore.any() and floor > low:

        def short(f: int) -> int:  # additional samples the floors need with explore floor f
            return int(np.maximum(np.where(explore, f, low) - drawn, 0).sum())

        hi = floor
        if short(hi) > N:  # the largest f in [low, floor) that fits: short(f) is monotone
            lo = low
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if short(mid) <= N else (lo, mid)
            hi = lo
        lower = np.where(explore, hi, low)
    return np.maximum(lower, drawn), upper, explore, N


def _reason_codes(
    cost: F64,
    samples: I64,
    lower: I64,
    upper: I64,
    explore: NDArray[np.bool_],
    q: float | None,
    total: int,
    params: AllocationParams,
) -> NDArray[np.int8]:
    """gvm unless a bound binds: the rule wanted fewer than l_i (floor, or explore when l_i is
    the explore floor) or more than u_i (cap). What gvm wants is K_i = #units with marginal gain
    >= 1/q (q from solver.solve, on costs scaled like there); what uniform wants is the even
    share; for knapsack and GRPO top-ups (q None) a total at a bound is held there. With
    `drawn`, everything is on totals: a prompt held at what it already drew reads `floor`."""
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
        if q is None:  # the bound binds wherever the total sits at it
            wanted = np.where(reason == Reason.floor, -1.0, math.inf) * np.ones(idx.size)
        elif math.isnan(q):  # uniform
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
