"""`gvm-paper`: the published rule (RLHFlow/GVM, em/stage_2_calc_sample_size.py and its trainer),
reproduced to the integer.

    w_i = G_i / sqrt(p_i + alpha / p_i^(beta - 1))   (0 when G_i == 0 or p_i == 0)
    r_i = w_i / sum_l w_l                            (summed left to right, as Python's `sum`)
    filter_threshold > 0:    r_i = 0 where p_i > threshold
    filter_insufficient > 0: r_i = 0 unless p_i * r_i * N >= filter_insufficient
    r_i = r_i / sum_l r_l; n = round(r N) (half to even), then +-1 on the largest residuals
    (np.argsort order) until sum n = N; then the trainer pads the total up to a multiple of
    align_to: +1 per prompt in np.argsort(n)[::-1] order, cycling.

Bounds and exploration do not apply. If every ratio is 0 (the published code divides by zero)
the budget is split evenly. Each step does the published code's floating-point operations in
its order, so the integers are the same (tests/engine/test_allocation_paper.py checks them against a
plain loop, benchmarks/published_rule.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from budget_service.engine.cost import objective
from budget_service.engine.estimates import Estimates
from budget_service.engine.params import CODE, F64, I64, AllocationParams, AllocationPlan, Reason
from budget_service.engine.solver import split_evenly

__all__ = ["paper_allocation", "paper_weights", "sequential_sum"]


_CHUNK = 1 << 16  # values per step of every loop here: fewer numpy calls, cache-sized arrays


def paper_allocation(estimates: Estimates, budget: int, params: AllocationParams) -> AllocationPlan:
    """The published rule's plan for validated estimates (see the module docstring).

    Each stage runs over _CHUNK prompts at a time, all its steps while they are in cache, and
    J(n) is summed while the rounded counts are (then corrected for the few the fix-up moves):
    at 10^6 prompts ~1.06x faster than whole-array steps (each a pass over 8 MB), and ~1.07x
    faster than chunks of 2^14 (each step a numpy call: ~1 us apiece adds up)."""
    p, g, N = estimates.p_hat, estimates.g_hat, budget
    threshold, insufficient = params.filter_threshold, params.filter_insufficient
    m = p.size
    chunks = [slice(start, start + _CHUNK) for start in range(0, m, _CHUNK)]
    weights, ratios = np.empty(m), np.empty(m)
    total = 0.0
    for c in chunks:
        w = paper_weights(p[c], g[c], params.alpha, params.beta, out=weights[c])
        total = sequential_sum(w, total)
    if math.isnan(total) and np.signbit(p).any():  # p = -0.0 (valid: it is 0) made a NaN
        return paper_allocation(replace(estimates, p_hat=p + 0.0), budget, params)
    total_w, total = total or 1.0, 0.0  # total 0: every w is 0, and so is every ratio
    top = 0.0  # the largest ratio, for the size of the reciprocal table below
    for c in chunks:
        r = np.divide(weights[c], total_w, out=ratios[c])
        if threshold:
            r[p[c] > threshold] = 0.0
        if insufficient:
            r[~(p[c] * r * N >= insufficient)] = 0.0
        total = sequential_sum(r, total)
        top = max(top, float(r.max()))
    predicted = 0.0  # J(n) = sum_i c_i / n_i, with c_i = w_i^2 (the regularised cost)
    if total == 0:  # no weight left
        samples = split_evenly(m, N)
        ratios = np.full(m, 1.0 / m)
        codes = np.full(m, CODE[Reason.gvm], np.int8)
    else:
        samples, residuals = np.empty(m, np.int64), np.empty(m)
        inverse = _reciprocals(math.ceil(top / total * N))
        squares = 0.0  # sum_i w_i^2, for the uniform objective below
        for c in chunks:
            r = ratios[c]
            r /= total
            scaled = r * N
            rounded = np.rint(scaled)
            samples[c] = rounded
            np.subtract(scaled, rounded, out=residuals[c])
            cost = np.square(weights[c], out=scaled)
            squares += float(cost.sum())
            if inverse is None:
                predicted += objective(cost, samples[c], scratch=rounded)
            else:  # 1 / n_i from the table (0 for n_i = 0): no term for an unsampled prompt;
                # every n_i is inside the table, so "wrap" (no bounds check: 2x faster) is safe
                inverses = inverse.take(samples[c], mode="wrap")
                predicted += float(np.einsum("i,i->", cost, inverses))
        error = N - int(samples.sum())
        if error:  # +-1 for a few prompts: their terms of J change with them
            moved = _fix_up(residuals, abs(error), error > 0)
            cost = np.square(weights[moved])
            predicted -= objective(cost, samples[moved])
            samples[moved] += 1 if error > 0 else -1
            predicted += objective(cost, samples[moved])
        codes = (ratios == 0).view(np.int8)  # 1 where filtered, else 0 (gvm's code)
        codes *= np.int8(CODE[Reason.filtered])
    padding = -N % params.align_to  # the trainer's, after the fix-up
    if padding:
        rounds, rest = divmod(padding, m)
        first = _largest(samples, rest)  # the order before any padding
        samples += rounds
        samples[first] += 1
    if padding or total == 0:  # J of the final counts, anew
        predicted = sum(objective(np.square(weights[c]), samples[c]) for c in chunks)
    # the even split gives v + 1 samples to the first `extra` prompts, v to the others
    v, extra = divmod(N, m)
    if total == 0:  # the loop above did not run
        squares = float(np.einsum("i,i->", weights, weights))
    more = float(np.einsum("i,i->", weights[:extra], weights[:extra]))
    uniform = more / (v + 1) + ((squares - more) / v if v else 0.0)
    return AllocationPlan(
        samples=samples,
        weights=ratios,
        reason_codes=codes,
        total=N + padding,
        budget=budget,
        predicted_variance=predicted,
        uniform_variance=uniform,
    )


_RECIPROCALS_UP_TO = 1 << 16  # counts above this (rare) take objective()'s divisions


def _reciprocals(top: int) -> F64 | None:
    """[0, 1, 1/2, ..., 1/top]: J's 1 / n_i as one gather from a table in cache, in place of a
    division and two clamps per prompt (~2 ms of ~12 at 10^6 prompts); None when counts can
    be too large for a small table. The fix-up moves a count by at most 1, hence top + 1."""
    if top + 1 > _RECIPROCALS_UP_TO:
        return None
    table = np.zeros(top + 2)
    np.divide(1.0, np.arange(1, top + 2), out=table[1:])
    return table


_BLOCK = 1 << 14  # values per step of sequential_sum
_STRETCH = 1 << 9  # values the chain carries the running sum across its binade's top
_TOP = 2.0**53
_TINY = 2.0**-960  # below this, 1 / (the running sum's spacing) overflows


def sequential_sum(values: F64, start: float = 0.0) -> float:
    """start + values[0] + values[1] + ..., one rounding per addition, left to right (the
    published `sum`, not numpy's pairwise one), bit for bit, for values >= 0 or NaN.

    A chain of 10^6 dependent additions (np.cumsum) takes ~3 ms; most blocks go in one step:
    while the running sum s stays in its binade [2^(e-1), 2^e), every float there is a multiple
    of u = 2^(e-53), so fl(s + x) = s + rint(x / u) u for x >= 0 - unless x / u is halfway
    between integers (then the result's parity decides). A block without halfway values whose
    rounded total keeps s below 2^e therefore adds exactly. Otherwise its whole stretches
    before the first halfway value, or before the one where s leaves its binade, add exactly;
    the chain takes that stretch, and the rest of the block goes round again. NaN or inf, or a
    running sum too small to scale by: the chain, for the whole block.
    """
    s, i = start, 0
    while i < values.size:
        x = values[i : i + _BLOCK]
        i += x.size
        if not _TINY <= s < math.inf:
            s = _chain(x, s)
            continue
        scale = math.ldexp(1.0, 53 - math.frexp(s)[1])  # 1 / u, exact
        base = s * scale  # an integer in [2^52, 2^53)
        with np.errstate(over="ignore", invalid="ignore"):  # inf, NaN: the chain
            q = x * scale  # exact
            r = np.rint(q)
            t = float(r.sum())  # whole numbers below 2^53: exact in any order
            q -= r  # +-0.5 at a halfway value
        halfway = not (q.max() < 0.5 and q.min() > -0.5)
        if not halfway and base + t < _TOP:
            s = (base + t) / scale
            continue
        if not math.isfinite(t):
            s = _chain(x, s)
            continue
        whole = x.size // _STRETCH * _STRETCH
        ends = base + np.cumsum(r[:whole].reshape(-1, _STRETCH).sum(axis=1))  # exact
        exact = int(np.searchsorted(ends, _TOP))  # stretches that keep s below 2^53
        if halfway:
            exact = min(exact, int(np.argmax(np.abs(q) >= 0.5)) // _STRETCH)
        s = float(ends[exact - 1] if exact else base) / scale
        chained = min((exact + 1) * _STRETCH, x.size)
        s = _chain(x[exact * _STRETCH : chained], s)
        i -= x.size - chained  # the rest of the block goes round again
    return s


def _chain(values: F64, start: float) -> float:
    """start + values[0] + values[1] + ..., one dependent addition at a time."""
    return float(np.cumsum(np.concatenate(([start], values)))[-1])


def paper_weights(p: F64, g: F64, alpha: float, beta: float, out: F64 | None = None) -> F64:
    """w = G / sqrt(p + alpha / p^(beta - 1)), 0 where p or G is 0: element for element the
    published loop's numbers (the same IEEE operations in the same order). A p of -0.0 gives
    NaN when alpha > 0 and beta > 1 (alpha / -0.0 = -inf); paper_allocation handles it."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # beta = 2: pow(p, 1.0) is p itself, exactly (tested), so it is skipped
        w = np.divide(alpha, p if beta == 2.0 else np.power(p, beta - 1.0), out=out)
        w += p
        np.sqrt(w, out=w)
        np.divide(g, w, out=w)
    if not (alpha > 0 and beta > 1.0):  # else p = 0 gives alpha / 0 = inf, so w = 0 already
        w[(g == 0) | (p == 0)] = 0.0
    return w


def _fix_up(residuals: F64, count: int, short: bool) -> I64:
    """The prompts the published fix-up moves: np.argsort(keys)[:count] as a set, keys =
    -residuals when short, else residuals (residuals = scaled - rounded, bit for bit the
    published ones), without a full sort unless a tie straddles the cut (then argsort itself
    decides, on the published keys). Residuals spread over [-0.5, 0.5]: a pre-cut keeps the
    partition small. The order inside the set does not matter: every index gets the same
    +-1."""
    bar = 0.5 - 8.0 * (count + 1) / residuals.size
    pool = np.flatnonzero(residuals >= bar if short else residuals <= -bar)
    if count < pool.size:  # else the pre-cut was too tight for this spread
        keys = residuals[pool]
        if short:
            np.negative(keys, out=keys)
        part = np.argpartition(keys, count)
        cut = keys[part[count]]  # the (count+1)-th smallest; everything after it is >= cut
        head = part[:count]
        if bool((keys[head] < cut).all()):  # and every key outside the pool is above cut
            return pool[head]
    return np.argsort(np.negative(residuals) if short else residuals)[:count]


def _largest(sizes: I64, count: int) -> I64:
    """The set np.argsort(sizes)[::-1][:count] - the prompts the published trainer pads
    first - by a partition when the count-th and (count+1)-th largest sizes differ; when they
    are tied, argsort's order among equal sizes decides (unstable, and reversed by [::-1]), so
    the full argsort runs."""
    m = sizes.size
    if count == 0:
        return np.empty(0, np.intp)
    part = np.partition(sizes, (m - count - 1, m - count))
    if part[m - count - 1] < part[m - count]:
        return np.flatnonzero(sizes >= part[m - count])
    return np.argsort(sizes)[::-1][:count]
