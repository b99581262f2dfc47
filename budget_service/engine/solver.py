"""The exact integer minimiser of J(n) = sum_i c_i / n_i under per-prompt bounds (`gvm`), its
continuous relaxation (water-filling), and the most even split the bounds allow (`uniform`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from budget_service.engine.params import F64, I64

__all__ = [
    "continuous_allocation",
    "cost_scale",
    "even_split",
    "kth_largest",
    "solve",
    "solve_integer",
    "split_evenly",
]

# Above this many prompts the water level is first found on a strided sample.
_SAMPLE = 1 << 16


def continuous_allocation(cost: F64, total: float, lower: F64, upper: F64) -> F64:
    """Water-filling: x_i = clip(sqrt(c_i / lam), l_i, u_i) with sum x = total.

    The continuous optimum of J under the bounds (KKT: c_i / x_i^2 = lam on free prompts).
    Zero-cost prompts sit at l_i unless every other prompt is capped (then they share the rest
    evenly). Requires sum l <= total <= sum u.
    """
    s = np.sqrt(np.asarray(cost, dtype=np.float64))
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    pos = s > 0
    zero = ~pos
    x = lower.copy()
    rest = total - float(lower[zero].sum())
    if pos.any() and float(upper[pos].sum()) > rest:
        t, _ = _water_level(s[pos], lower[pos], upper[pos], rest)
        x[pos] = np.clip(s[pos] * t, lower[pos], upper[pos])
    else:  # every c > 0 prompt capped; the others share what is left evenly
        x[pos] = upper[pos]
        rest = total - float(x[pos].sum())
        t, _ = _water_level(np.ones(int(zero.sum())), lower[zero], upper[zero], rest)
        x[zero] = np.clip(t, lower[zero], upper[zero])
    return x


def _water_level(s: F64, lower: F64, upper: F64, total: float) -> tuple[float, float]:
    """The root t of phi(t) = sum clip(s_i t, l_i, u_i) = total (s > 0), and phi'(t) there.

    phi is piecewise linear and nondecreasing: Newton lands exactly on the root once it is on
    the right piece; a step that leaves the bracket is replaced by bisection.
    """
    if s.size == 0:
        return 0.0, 0.0
    t_lo, t_hi = 0.0, math.inf
    t = total / float(s.sum())
    tol = 1e-12 * max(abs(total), 1.0)
    y = np.empty_like(s)
    tmp = np.empty_like(s)
    slope = 0.0
    for _ in range(200):
        np.multiply(s, t, out=y)
        free = y > lower
        free &= y < upper
        slope = float(np.multiply(s, free, out=tmp).sum())
        np.maximum(y, lower, out=y)
        np.minimum(y, upper, out=y)
        f = float(y.sum()) - total
        if abs(f) <= tol:
            break
        if f > 0:
            t_hi = t
        else:
            t_lo = t
        if slope > 0:
            t_new = t - f / slope
        else:  # every prompt at a bound: jump to the next breakpoint in the right direction
            with np.errstate(divide="ignore", invalid="ignore"):  # s = 0: never moves
                edge = lower / s if f < 0 else upper / s
            ahead = edge[edge > t] if f < 0 else edge[edge < t]
            t_new = float(ahead.min() if f < 0 else ahead.max()) if ahead.size else math.nan
        if not t_lo < t_new < t_hi:
            t_new = 0.5 * (t_lo + t_hi) if math.isfinite(t_hi) else 2.0 * t_lo + 1.0
        if t_new == t:
            break
        t = t_new
    return t, slope


def solve_integer(cost: F64, lower: I64, upper: I64, total: int) -> I64:
    """The exact integer minimiser of sum_i c_i / n_i s.t. sum n = total, lower <= n <= upper.

    Separable convex, so the optimum takes the `total` units with the largest marginal gains:
    the k-th unit of prompt i lowers J by c_i (1/(k-1) - 1/k) = c_i / (k (k-1)) (the first unit
    of a c > 0 prompt is worth +inf). With K_i(mu) = #units with gain >= mu
    = floor(1/2 + sqrt(1/4 + c_i / mu)), F(mu) = sum clip(K_i(mu), l_i, u_i) is a step function:
    we bracket its crossing of `total` starting from the continuous water level (a few O(m)
    passes), keep every unit above the bracket and pick the missing ones inside it exactly, by
    (gain desc, k asc, index asc). The integer optimum need not lie within floor/ceil of the
    continuous one (a prompt with a large n_i can take several extra units before a small one
    takes its next), so no such shortcut is used.

    Ties go to the smaller count, then the lower index: deterministic, and equivariant under
    permutations up to exchanging prompts with equal (c_i, l_i, u_i). c_i = 0 prompts stay at
    l_i unless every c > 0 prompt is capped. Requires sum l <= total <= sum u.
    """
    return solve(np.asarray(cost, dtype=np.float64), lower, upper, int(total))[0]


def solve(cost: F64, lower: I64, upper: I64, total: int) -> tuple[I64, float]:
    """solve_integer, plus q = 1 / (the marginal gain of the last unit taken) on costs scaled
    by cost_scale (0 or inf at the extremes; see _threshold)."""
    lo, hi = lower, upper
    if cost.min() <= 0:  # c = 0 prompts: pinned at their floor (K(mu) = 0 for every mu > 0)
        pos = cost > 0
        if not pos.any():
            return even_split(lower, upper, total), math.inf
        hi = np.where(pos, upper, lower)
        capped = int(hi.sum())
        if total >= capped:  # every c > 0 prompt capped: the others share the rest evenly
            n = hi.copy()
            zero = ~pos
            n[zero] = even_split(lower[zero], upper[zero], total - capped + int(lower[zero].sum()))
            return n, math.inf
    if int(lo.min()) < 1:  # first units are worth +inf: too few of them to go round?
        first = (lo == 0) & (hi > 0)
        short = total - int(lo.sum())
        if short <= int(np.count_nonzero(first)):
            n = lo.copy()
            n[np.flatnonzero(first)[:short]] += 1
            return n, 0.0
        lo = np.where(first, 1, lo)
    if total >= int(hi.sum()):
        return hi.copy(), math.inf
    return _threshold(cost, _compact(lo), _compact(hi), total)


def _compact(bound: I64) -> F64 | float:
    """A per-prompt bound as a float scalar when it is the same everywhere (faster passes)."""
    low = int(bound.min())
    return float(low) if low == int(bound.max()) else bound.astype(np.float64)


def _pick(bound: F64 | float, index: NDArray[np.intp] | slice) -> F64 | float:
    return bound if isinstance(bound, float) else bound[index]


def cost_scale(cost_max: float) -> float:
    """A power of two bringing the largest cost near 1 when it is far from it (exact scaling:
    keeps the threshold q = 1/mu clear of under- and overflow); 1 otherwise."""
    if 2.0**-100 <= cost_max <= 2.0**100 or cost_max <= 0:
        return 1.0
    # At most 2**1023: a subnormal cost_max would otherwise need a scale past the float range.
    return math.ldexp(1.0, min(-math.frexp(cost_max)[1], 1023))


def _threshold(c: F64, lo: F64 | float, hi: F64 | float, total: int) -> tuple[I64, float]:
    """Greedy by threshold (see solve_integer), for bounds with every first unit taken:
    lo >= 1 where c > 0, lo = hi where c = 0, and sum lo < total < sum hi.

    Works on x = log q, q = 1/mu: K_i = floor(1/2 + sqrt(1/4 + c_i q)) units have gain >= 1/q
    and F(x) = sum clip(K_i, lo_i, hi_i) is a nondecreasing step function. We bracket
    F = total over all prompts, narrow the bracket over the prompts whose count differs
    between its ends only, and pick the units left between the ends exactly. Returns the
    integers and q at the last unit taken (on costs scaled by cost_scale).
    """
    scale = cost_scale(float(c.max()))
    if scale != 1.0:
        c = c * scale
    # Start at the continuous water level, from a strided sample when the batch is large.
    stride = max(1, c.size // _SAMPLE)
    s = np.sqrt(c[::stride])
    if not s.any():  # the sample only hit pinned zero-cost prompts
        stride, s = 1, np.sqrt(c)
    lo_s = np.broadcast_to(_pick(lo, slice(None, None, stride)), s.shape).copy()  # contiguous:
    hi_s = np.broadcast_to(_pick(hi, slice(None, None, stride)), s.shape).copy()  # faster passes
    share = min(max(total * s.size / c.size, float(lo_s.sum())), float(hi_s.sum()))
    t, slope = _water_level(s, lo_s, hi_s, share)
    slope *= c.size / s.size
    # dF/dx ~ sum over free prompts of sqrt(c q) / 2 = t * slope / 2 near the water level
    rate = max(0.5 * t * slope, 1.0)
    band = max(4096, int(8.0 * math.sqrt(rate)))

    low, high = _bracket(_counter(c, lo, hi, 0), 2.0 * math.log(t), total, rate, band, 0)
    if high.f - low.f > band:  # narrow, counting only the prompts between the two ends
        active = np.flatnonzero(low.k != high.k)
        offset = low.f - int(low.k[active].sum())
        count = _counter(c[active], _pick(lo, active), _pick(hi, active), offset)
        sub_low = _End(low.x, low.f, low.k[active])
        sub_high = _End(high.x, high.f, high.k[active])
        sub_low, sub_high = _bracket(count, low.x, total, rate, band, 6, sub_low, sub_high)
        sure = low.k.astype(np.int64)
        sure[active] = sub_low.k
        c_band, k_low, k_high, where = c[active], sub_low.k, sub_high.k, active
        low = sub_low
    else:
        sure = low.k.astype(np.int64)
        c_band, k_low, k_high, where = c, low.k, high.k, None
    need = total - low.f
    if need == 0:
        return sure, _exp(low.x)

    # The units between the two ends: pick the `need` best exactly, by (gain desc, k asc,
    # index asc) - a partition on the gain, then an ordering of the ties at the cut only.
    cand = np.flatnonzero(k_high != k_low)
    counts = (k_high[cand] - k_low[cand]).astype(np.int64)
    if int(counts.max()) == 1:  # one unit per prompt (usual): no expansion needed
        owner = cand
        k = k_low[cand] + 1.0
    else:
        owner = np.repeat(cand, counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        k = k_low[owner] + 1.0 + (np.arange(owner.size) - first)
    gain = c_band[owner] / (k * (k - 1.0))  # k >= 2: first units are always in `sure`
    if need < gain.size:
        cut = kth_largest(gain, need)
        above = np.flatnonzero(gain > cut)
        tied = np.flatnonzero(gain == cut)  # distinct owners (gains fall with k), ascending
        if k[tied].min() != k[tied].max():
            tied = tied[np.argsort(k[tied], kind="stable")]
        pick = np.concatenate((above, tied[: need - above.size]))
    else:
        pick = np.arange(gain.size)
    extra = np.bincount(owner[pick], minlength=k_low.size)  # per prompt of the band
    if where is None:
        sure += extra
    else:
        sure[where] += extra
    last_gain = float(gain[pick].min())  # 0 when a subnormal cost's gain underflows
    return sure, 1.0 / last_gain if last_gain > 0 else math.inf


def kth_largest(values: F64, k: int) -> float:
    """The k-th largest of values (1 <= k <= size), as np.partition finds it - without its
    slowdown (20x) when most values are equal, as where a prompt group shares one cost: a
    value frequent in a sample is split off first and the search goes on in one side."""
    if values.size > 4096:
        common, freq = np.unique(values[:: values.size // 256], return_counts=True)
        if int(freq.max()) * 8 >= int(freq.sum()):
            v = float(common[int(np.argmax(freq))])
            greater = values[values > v]
            if k <= greater.size:
                return kth_largest(greater, k)
            k -= greater.size + int(np.count_nonzero(values == v))
            return v if k <= 0 else kth_largest(values[values < v], k)
    return float(np.partition(values, values.size - k)[values.size - k])


_EXP_MAX = 700.0  # math.exp overflows past ~709.78; c e^x with x up to 1400 covers any c > 0


def _exp(x: float) -> float:
    return math.exp(x) if x < _EXP_MAX else math.inf


@dataclass(frozen=True, slots=True)
class _End:
    """One end of the bracket: x = log q, F(x) and the per-prompt counts there."""

    x: float
    f: int
    k: F64


def _counter(c: F64, lo: F64 | float, hi: F64 | float, offset: int) -> Callable[[float], _End]:
    """x -> F(x): offset + sum clip(floor(1/2 + sqrt(1/4 + c e^x)), lo, hi), with the counts."""

    def count(x: float) -> _End:
        if x < _EXP_MAX:
            k = np.multiply(c, math.exp(x))
        else:  # e^x overflows, c e^x need not (a tiny c is the only prompt left free)
            half = math.exp(0.5 * min(x, 2.0 * _EXP_MAX))
            with np.errstate(over="ignore"):
                k = np.multiply(c, half)
                k *= half
        k += 0.25
        np.sqrt(k, out=k)
        k += 0.5
        np.floor(k, out=k)
        np.fmax(k, lo, out=k)  # fmax/fmin: a pinned c = 0 prompt at q = inf gives 0 * inf
        np.fmin(k, hi, out=k)
        return _End(x, offset + int(k.sum()), k)

    return count


def _bracket(
    count: Callable[[float], _End],
    x0: float,
    total: int,
    rate: float,
    band: int,
    rounds: int,
    low: _End | None = None,
    high: _End | None = None,
) -> tuple[_End, _End]:
    """Ends low.x <= high.x with low.f <= total <= high.f: first found by secant-sized steps
    that overshoot the target (growing until it is crossed), then narrowed by regula falsi for
    at most `rounds` evaluations while more than `band` units lie between them and each round
    removes a good share of them. A jump of F at a single x (many prompts with equal costs)
    cannot be narrowed; the caller handles it."""
    step = 0.0
    width = math.inf  # units between the ends at the last narrowing round
    last: tuple[float, int] | None = None
    if low is None and high is None:
        start = count(x0)
        low = start if start.f <= total else None
        high = start if start.f >= total else None
        last = (start.x, start.f)
        step = (total - start.f) / rate
    for _ in range(200):
        if low is not None and high is not None:
            if high.f - low.f <= band or rounds == 0 or high.f - low.f > 0.7 * width:
                return low, high  # narrow enough, or stuck at a jump
            rounds -= 1
            width = high.f - low.f
            share = min(max((total - low.f) / (high.f - low.f), 0.05), 0.95)
            x = low.x + share * (high.x - low.x)
        else:
            assert last is not None
            x = last[0] + step
        end = count(x)
        if last is not None and end.f != last[1] and end.x != last[0]:
            step = (total - end.f) / ((end.f - last[1]) / (end.x - last[0]))
        if low is None or high is None:  # overshoot, and keep growing until crossed
            step = math.copysign(min(max(2.0 * abs(step), 1e-6), 50.0), step or total - end.f)
        last = (end.x, end.f)
        if end.f <= total and (low is None or end.x > low.x):
            low = end
        if end.f >= total and (high is None or end.x < high.x):
            high = end
    raise AssertionError("integer threshold search did not converge")  # pragma: no cover


def even_split(lower: I64, upper: I64, total: int) -> I64:
    """The most even integer split within bounds (solve_integer with equal costs, same ties):
    n_i = clip(v, l_i, u_i) for the largest level v that fits, then one more unit for the
    lowest-index prompts sitting at v. Requires sum l <= total <= sum u."""
    m = lower.size
    if m == 0:
        return lower.copy()
    v = total // m
    if int(lower.max()) <= v < int(upper.min()):  # no bound binds: total // m each, +1 first
        return split_evenly(m, total)
    fill = _level_fill(lower, upper)
    v_lo, v_hi = int(lower.min()), int(upper.max())
    if fill(v_hi) <= total:
        v_lo = v_hi
    while v_hi - v_lo > 1:  # fill(v_lo) <= total < fill(v_hi)
        mid = (v_lo + v_hi) // 2
        if fill(mid) <= total:
            v_lo = mid
        else:
            v_hi = mid
    v = v_lo
    n: I64 = np.minimum(np.maximum(lower, v), upper)
    rest = total - int(n.sum())
    if rest > 0:
        n[np.flatnonzero((n == v) & (upper > v))[:rest]] += 1
    return n


def _level_fill(lower: I64, upper: I64) -> Callable[[int], int]:
    """v -> sum clip(v, l_i, u_i) = sum max(l_i, v) - sum max(v - u_i, 0), O(log m) per call
    after one pass over the bounds (histograms; bounds usually take a few values)."""
    lv, lc = _value_counts(lower)
    uv, uc = _value_counts(upper)
    l_cnt = np.concatenate(([0], np.cumsum(lc)))
    l_sum = np.concatenate(([0], np.cumsum(lv * lc)))
    u_cnt = np.concatenate(([0], np.cumsum(uc)))
    u_sum = np.concatenate(([0], np.cumsum(uv * uc)))

    def fill(v: int) -> int:
        i = int(np.searchsorted(lv, v))  # bounds below v: max(l, v) = v
        j = int(np.searchsorted(uv, v))  # caps below v: they give back v - u
        below_l = v * int(l_cnt[i]) + int(l_sum[-1] - l_sum[i])
        over_u = v * int(u_cnt[j]) - int(u_sum[j])
        return below_l - over_u

    return fill


def _value_counts(values: I64) -> tuple[I64, I64]:
    """Sorted distinct values and their counts (a histogram when the range is small)."""
    low, high = int(values.min()), int(values.max())
    if high - low <= 4 * values.size + 64:
        counts = np.bincount(values - low)
        present = np.flatnonzero(counts)
        return present.astype(np.int64) + low, counts[present].astype(np.int64)
    distinct, counts = np.unique(values, return_counts=True)
    return distinct.astype(np.int64), counts.astype(np.int64)


def split_evenly(m: int, total: int) -> I64:
    """even_split without bounds: total // m each, one more for the first total % m."""
    n = np.full(m, total // m, np.int64)
    n[: total % m] += 1
    return n
