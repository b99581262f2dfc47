"""How many samples each prompt gets: GVM allocation, exact under bounds and alignment.

Pure numpy, no I/O. The service calls `allocate(estimates, budget, params)`; estimates come from
`budget_service.engine.estimates`.

The paper (Yao et al., GVM, arXiv 2505.02391) bounds the variance of the RAFT gradient by
sum_i G_i^2 / (p_i n_i) and regularises it (alpha, beta):

    minimise  J(n) = sum_i c_i / n_i,   c_i = G_i^2 / (p_i + alpha * p_i^(1 - beta))
                                            = G_i^2 / p_i / (1 + alpha / p_i^beta)
    subject to  sum_i n_i = N

whose continuous solution (Proposition 1) is n_i = N * w_i / sum_l w_l, w_i = sqrt(c_i).

Strategies:
- `gvm-paper`: the published rule (RLHFlow/GVM, em/stage_2_calc_sample_size.py and its trainer),
  reproduced to the integer: weights, the two filters, round-and-fix-up, padding to `align_to`.
- `gvm` (default): the exact integer minimiser of J under min/max/explore bounds, with the total
  rounded down to a multiple of `align_to`, and costs c_i taken as posterior expectations (see
  estimates.py) so uncertain prompts are neither starved nor flooded.
- `uniform`: the most even split the bounds allow (the same solver with equal costs).

Errors (all `ValueError`s, the service maps them to 422)::

    AllocationError               bad parameters
     +-- InfeasibleBudgetError    the bounds cannot meet the budget, or the batch is empty
     +-- InvalidStatisticsError   NaN, inf, negative or out-of-range statistics or estimates
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from budget_service.engine.estimates import Estimates

__all__ = [
    "Algo",
    "AllocationError",
    "AllocationParams",
    "AllocationPlan",
    "InfeasibleBudgetError",
    "InvalidStatisticsError",
    "Reason",
    "Strategy",
    "allocate",
    "continuous_allocation",
    "even_split",
    "objective",
    "regularised_cost",
    "solve_integer",
]

Strategy = Literal["gvm", "gvm-paper", "uniform"]
Algo = Literal["raft", "grpo"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

# Above this many prompts the water level is first found on a strided sample.
_SAMPLE = 1 << 16


class AllocationError(ValueError):
    """The allocation cannot be computed as asked; `field` names the culprit when known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InfeasibleBudgetError(AllocationError):
    """No allocation meets the budget within the per-prompt bounds (or the batch is empty)."""


class InvalidStatisticsError(AllocationError):
    """A statistic or estimate is NaN, infinite, negative or otherwise out of range."""


class Reason(StrEnum):
    """Why a prompt got its count (the values are the wire strings)."""

    gvm = "gvm"  # set by the strategy's rule (GVM weights; the even split for `uniform`)
    floor = "floor"  # held at min_samples (the rule wanted fewer)
    cap = "cap"  # held at max_samples (the rule wanted more)
    explore = "explore"  # held at the explore floor: unseen or never-accepted prompt
    filtered = "filtered"  # dropped by gvm-paper (p = 0, G = 0, or one of its two filters)


_REASONS = np.array(list(Reason), dtype=object)
_GVM, _FLOOR, _CAP, _EXPLORE, _FILTERED = range(5)


@dataclass(frozen=True, slots=True)
class AllocationParams:
    """Allocation settings of a run; the single source of truth for defaults.

    Defaults and why (measured by benchmarks/variance.py, see README "How the allocation works"):
    - min_samples=1: every prompt is sampled, so the gradient estimate stays unbiased (a prompt
      with 0 samples drops its term); GRPO raises it to 2 (a group of 1 has no baseline).
    - prior_strength=2: pseudo-samples of the Beta prior on p when the batch is too small to
      fit the prior's strength from its spread (`fit_prior`, on by default). 0 = raw ratios.
    - grad_prior_strength=0.5: pseudo-norms pulling a prompt's gradient norm toward the run's
      pooled mean (measured flat between 0.25 and 1, worse at 2 and above).
    - explore_samples=2: never-solved prompts keep two tries instead of being dropped; with the
      posterior costs they usually get more anyway, so the floor rarely binds.
    """

    strategy: Strategy = "gvm"
    alpha: float = 1e-3
    beta: float = 2.0
    min_samples: int = 1
    max_samples: int | None = None
    align_to: int = 1
    filter_threshold: float | None = None  # gvm-paper only; None or 0 = off
    filter_insufficient: float | None = None  # gvm-paper only; None or 0 = off
    prior_strength: float = 2.0
    half_life_steps: float | None = None
    explore_samples: int = 2
    algo: Algo = "raft"
    fit_prior: bool = True  # empirical Bayes: fit the Beta prior's strength to the batch
    grad_prior_strength: float = 0.5

    def __post_init__(self) -> None:
        if self.strategy not in get_args(Strategy):
            raise AllocationError(
                f"strategy must be one of {get_args(Strategy)}, not {self.strategy!r}",
                field="strategy",
            )
        if self.algo not in get_args(Algo):
            raise AllocationError(
                f"algo must be one of {get_args(Algo)}, not {self.algo!r}", field="algo"
            )
        _check_real("alpha", self.alpha, low=0.0)
        _check_real("beta", self.beta, low=0.0)
        if self.beta < 1.0 and self.strategy != "gvm-paper":
            raise AllocationError(
                f"beta = {self.beta} < 1 makes the cost infinite as p -> 0; {self.strategy} "
                "needs beta >= 1 (gvm-paper takes any beta)",
                field="beta",
            )
        _check_real("prior_strength", self.prior_strength, low=0.0)
        _check_real("grad_prior_strength", self.grad_prior_strength, low=0.0)
        for name in ("filter_threshold", "filter_insufficient"):
            value = getattr(self, name)
            if value is not None:
                _check_real(name, value, low=0.0)
        if self.half_life_steps is not None:
            _check_real("half_life_steps", self.half_life_steps, low=0.0)
            if self.half_life_steps == 0:
                raise AllocationError(
                    "half_life_steps must be > 0 (or None)", field="half_life_steps"
                )
        _check_int("min_samples", self.min_samples, low=0)
        _check_int("explore_samples", self.explore_samples, low=0)
        _check_int("align_to", self.align_to, low=1)
        if self.max_samples is not None:
            _check_int("max_samples", self.max_samples, low=0)
            if self.max_samples < self.min_samples:
                raise AllocationError(
                    f"max_samples ({self.max_samples}) < min_samples ({self.min_samples})",
                    field="max_samples",
                )

    @property
    def lower_bound(self) -> int:
        """Per-prompt floor: min_samples, and at least 2 under GRPO (a group needs a baseline)."""
        return max(self.min_samples, 2) if self.algo == "grpo" else self.min_samples


def _check_real(name: str, value: float, *, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AllocationError(f"{name} must be a finite number, not {value!r}", field=name)
    if value < low:
        raise AllocationError(f"{name} must be >= {low}, not {value!r}", field=name)


def _check_int(name: str, value: int, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise AllocationError(f"{name} must be an integer, not {value!r}", field=name)
    if value < low:
        raise AllocationError(f"{name} must be >= {low}, not {value!r}", field=name)


@dataclass(frozen=True, slots=True)
class AllocationPlan:
    """Samples per prompt (request order) and what the choice is expected to buy.

    `total` is sum(samples): the aligned budget for gvm and uniform (never above `budget`), and
    for gvm-paper possibly above it, by the published trainer's padding to `align_to`.
    `predicted_variance` is J(n) = sum_i c_i / n_i on the estimates' costs (prompts with 0
    samples left out); `uniform_variance` is the same for the `uniform` integers at this budget
    and these bounds.
    """

    samples: I64
    weights: F64  # normalised share: w_i / sum w (gvm-paper: its final ratios; uniform: 1/m)
    reason_codes: NDArray[np.int8]  # index into list(Reason); see `reasons`
    total: int
    budget: int
    predicted_variance: float
    uniform_variance: float

    @property
    def reasons(self) -> list[Reason]:
        """One Reason per prompt (built on access: ~20 ms per million prompts)."""
        reasons: list[Reason] = _REASONS[self.reason_codes].tolist()
        return reasons


# --- the cost -----------------------------------------------------------------------------------


def regularised_cost(p: F64, g: F64 | float, alpha: float, beta: float) -> F64:
    """c = G^2 p^(beta-1) / (p^beta + alpha) = G^2 / (p + alpha p^(1-beta)); 0 where p or G is 0.

    The first form is finite at small p for any beta >= 1; the published code's convention
    (weight 0 when p == 0 or G == 0) is kept for all beta.
    """
    p = np.asarray(p, dtype=np.float64)
    g2 = np.square(np.asarray(g, dtype=np.float64))
    c: F64
    if beta == 2.0 and alpha > 0:  # the default, without the two power() calls
        c = g2 * p / (p * p + alpha)
        return c
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        head = np.power(p, beta - 1.0)
        c = g2 * head / (head * p + alpha)
    # beta > 1: only 0/0 at p = 0 (alpha = 0) needs fixing; beta <= 1: the convention
    c = np.nan_to_num(c, nan=0.0) if beta > 1.0 else np.where((p > 0) & (g2 > 0), c, 0.0)
    return c


def objective(
    cost: F64, samples: NDArray[np.integer] | F64, *, scratch: F64 | None = None
) -> float:
    """J(n) = sum_i c_i / n_i over prompts with n_i > 0 (`scratch`: a float buffer to reuse)."""
    n = np.asarray(samples)
    out = np.empty(cost.shape) if scratch is None else scratch
    if n.size == 0 or n.min() > 0:
        return float(np.divide(cost, n, out=out).sum())  # int n is cast in chunks, no copy
    # c / max(n, 1) counts c once for each n = 0 prompt: take those back out
    np.maximum(n, 1, out=out)
    np.divide(cost, out, out=out)
    return float(out.sum() - cost[n == 0].sum())


# --- gvm and uniform: the exact integer minimiser -------------------------------------------------


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
    return _solve(np.asarray(cost, dtype=np.float64), lower, upper, int(total))[0]


def _solve(cost: F64, lower: I64, upper: I64, total: int) -> tuple[I64, float]:
    """solve_integer, plus q = 1 / (the marginal gain of the last unit taken) on costs scaled
    by _cost_scale (0 or inf at the extremes; see _threshold)."""
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


def _cost_scale(cost_max: float) -> float:
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
    integers and q at the last unit taken (on costs scaled by _cost_scale).
    """
    scale = _cost_scale(float(c.max()))
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
        cut = _kth_largest(gain, need)
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


def _kth_largest(values: F64, k: int) -> float:
    """The k-th largest of values (1 <= k <= size), as np.partition finds it - without its
    slowdown (20x) when most values are equal, as where a prompt group shares one cost: a
    value frequent in a sample is split off first and the search goes on in one side."""
    if values.size > 4096:
        common, freq = np.unique(values[:: values.size // 256], return_counts=True)
        if int(freq.max()) * 8 >= int(freq.sum()):
            v = float(common[int(np.argmax(freq))])
            greater = values[values > v]
            if k <= greater.size:
                return _kth_largest(greater, k)
            k -= greater.size + int(np.count_nonzero(values == v))
            return v if k <= 0 else _kth_largest(values[values < v], k)
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
        return _even(m, total)
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


# --- gvm-paper: the published rule ----------------------------------------------------------------

# Exact sequential sums (see _sequential_add): the first _SEQ_HEAD values go through the plain
# chain; then chunks of _SEQ_CHUNK values at a time, cut short where the running sum is expected
# to leave its binade, located to _SEQ_BLOCK values where it does anyway; more than
# _SEQ_MAX_TIES halfway cases in a chunk: the plain chain.
_SEQ_HEAD = 1 << 16
_SEQ_CHUNK = 1 << 16
_SEQ_BLOCK = 1 << 9
_SEQ_NEAR = 1 << 12  # a binade's top expected within this many values: the plain chain across
_SEQ_MAX_TIES = 64
_TWO_53 = 2.0**53
_SEQ_TINY = 2.0**-960  # below this the grid spacing of the running sum is not a safe scale


def _accumulate(values: F64, carry: float) -> float:
    """carry + values[0] + values[1] + ..., one rounding per addition, in order."""
    run = np.empty(values.size + 1)
    run[0] = carry
    run[1:] = values
    np.add.accumulate(run, out=run)
    return float(run[-1])


def _stream_sum(
    s: float, values: F64, position: int, scratch: F64, *, clean: bool = False
) -> float:
    """s + the next values of Python's left-to-right `sum` (the published code's), bit for
    bit, when it has taken `position` values so far: the first _SEQ_HEAD values of a sum go
    through the plain chain (the running sum changes binade often while it is small), the rest
    through _sequential_add, told the mean value so far (where the sum's binade ends)."""
    if position < _SEQ_HEAD:
        head = min(values.size, _SEQ_HEAD - position)
        s = _accumulate(values[:head], s)
        values, position = values[head:], position + head
    mean = max(s, 0.0) / position if position else 0.0
    return _sequential_add(s, values, scratch, clean=clean, mean=mean)


def _sequential_add(
    s: float, values: F64, scratch: F64, *, clean: bool = False, mean: float = 0.0
) -> float:
    """s + values[0] + values[1] + ..., left to right as Python's `sum` (the published
    code's) adds, bit for bit, not numpy's pairwise sum - without a chain of one dependent
    addition per value where it can be avoided.

    While the running sum s stays in one binade [2^e, 2^(e+1)), every float there (s included)
    is a multiple of u = 2^(e-52), so for x >= 0: fl(s + x) = s + rint(x/u) u, except when x/u
    is exactly halfway between integers (the tie then goes to the even multiple, which depends
    on s). Over a chunk: q = x/u is exact (u is a power of two), r = rint(q), and t = sum(r) is
    an exact integer sum in any order; if s/u + t stays below 2^53 (the binade's top), the chain
    would have ended at s + t u, exactly. Halfway values are resolved in order with the running
    parity; where s leaves its binade, the chunk is kept up to the block before the crossing and
    the plain chain carries s across. Negative or non-finite values: the plain chain throughout.
    `scratch`: 2 * _SEQ_CHUNK floats; `clean`: the caller knows no value is negative or NaN
    (inf is fine); `mean`: the expected value (0: unknown), to cut a chunk short of where s
    would leave its binade (speed only: a crossing inside a chunk is found and handled anyway).
    Checked against np.add.accumulate in tests/test_allocation_paper.py.
    """
    n = values.size
    if n == 0:
        return s
    if not (clean or values.min() >= 0.0):  # negative or NaN
        return _accumulate(values, s)
    q_buf, r_buf = scratch[:_SEQ_CHUNK], scratch[_SEQ_CHUNK:]
    i = 0
    with np.errstate(over="ignore", invalid="ignore"):  # inf: caught by the crossing test
        while i < n:
            if not math.isfinite(s):
                return _accumulate(values[i:], s)
            if s < _SEQ_TINY:  # not yet in a binade whose spacing we can scale by
                size = min(n - i, _SEQ_BLOCK)
                s = _accumulate(values[i : i + size], s)
                i += size
                continue
            e = math.frexp(s)[1]  # s in [2^(e-1), 2^e): spacing u = 2^(e-53)
            scale = math.ldexp(1.0, 53 - e)  # 1 / u
            base = s * scale  # s / u, an integer in [2^52, 2^53)
            room = _TWO_53 - base
            size = min(n - i, _SEQ_CHUNK)
            pace = mean * scale  # values to the binade's top at this pace: room / pace
            ahead = room / pace if pace > 0 else math.inf
            if ahead < size:  # at the last piece's pace: stop short of the top, or step across
                if ahead < _SEQ_NEAR:  # it with the plain chain when it is near
                    step = min(n - i, int(1.5 * ahead) + _SEQ_BLOCK)
                    s = _accumulate(values[i : i + step], s)
                    i += step
                    continue
                size = int(0.97 * ahead)
            q = np.multiply(values[i : i + size], scale, out=q_buf[:size])
            r = np.rint(q, out=r_buf[:size])
            t = float(r.sum())
            frac = np.subtract(q, r, out=q)  # +-0.5 exactly at a halfway value
            tied = bool(frac.max() >= 0.5) or bool(frac.min() <= -0.5)
            if t < room and not tied:
                s = (base + t) / scale
                mean = t / (size * scale)
                i += size
                continue
            ties = np.flatnonzero(np.abs(frac) == 0.5) if tied else np.empty(0, np.intp)
            if ties.size > _SEQ_MAX_TIES:
                s = _accumulate(values[i : i + size], s)
                i += size
                continue
            keep = size
            if t + ties.size >= room:  # s may leave the binade: keep the blocks before that
                whole = size // _SEQ_BLOCK * _SEQ_BLOCK
                blocks = np.add.accumulate(r[:whole].reshape(-1, _SEQ_BLOCK).sum(axis=1))
                found = int(np.searchsorted(blocks, room - ties.size, side="left"))
                keep = min(found * _SEQ_BLOCK, whole)
            total, start = base, 0
            for k in ties[ties < keep].tolist():  # each tie +1 at most: still below 2^53
                total += float(r[start:k].sum())
                low = total + math.floor(float(frac[k]) + float(r[k]))  # frac + r: the q
                total = low + 1.0 if low % 2.0 else low
                start = k + 1
            total += float(r[start:keep].sum())
            s = total / scale
            i += keep
            if keep < size:  # across the binade's top with the plain chain
                step = min(n - i, _SEQ_BLOCK)
                s = _accumulate(values[i : i + step], s)
                i += step
    return s


def _paper_weights(p: F64, g: F64, alpha: float, beta: float, out: F64) -> F64:
    """w = G / sqrt(p + alpha / p^(beta - 1)) into `out`, 0 where p or G is 0: element for
    element the published loop's numbers (the same IEEE operations in the same order)."""
    w = out
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # beta = 2: pow(p, 1.0) is p itself, exactly (tested), so it is skipped
        np.divide(alpha, p if beta == 2.0 else np.power(p, beta - 1.0), out=w)
        w += p
        np.sqrt(w, out=w)
        np.divide(g, w, out=w)
    if not (beta > 1.0 and alpha > 0):  # otherwise p = 0 or G = 0 already gives w = 0
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


def _gvm_paper(estimates: Estimates, budget: int, params: AllocationParams) -> AllocationPlan:
    """RLHFlow/GVM's stage-2 rule, vectorised, same integers.

    w_i = G_i / sqrt(p_i + alpha / p_i^(beta - 1))   (0 when G_i == 0 or p_i == 0)
    r_i = w_i / sum_l w_l                            (Python's sequential sum)
    filter_threshold > 0:    r_i = 0 where p_i > threshold
    filter_insufficient > 0: r_i = 0 unless p_i * r_i * N >= filter_insufficient
    r_i = r_i / sum_l r_l; n = round(r N) (half to even), then +-1 on the largest residuals
    (np.argsort order) until sum n = N; then the trainer pads the total up to a multiple of
    align_to: +1 per prompt in np.argsort(n)[::-1] order, cycling.
    Bounds and exploration do not apply. If every ratio is 0 (the published code divides by
    zero) the budget is split evenly.

    Three passes over the prompts, each in _SEQ_CHUNK pieces that stay in cache while every
    step of the pass runs on them: (1) the range check, weights and their sequential sum (and
    the even split's objective when filters drop weights); (2) ratios, filters and their
    sequential sum; (3) final ratios, rounding, residuals, reasons and both objectives (from r,
    w up to a constant factor). The fix-up looks only at residuals near +-0.5.
    """
    p = estimates.p_hat
    g = estimates.g_hat
    m = p.size
    N = budget
    alpha, beta = params.alpha, params.beta
    if g.shape != p.shape:
        _validate(estimates)  # raises
    chunk = _SEQ_CHUNK
    scratch = np.empty(2 * chunk)  # the sums' buffers in passes 1 and 2, pass 3's after
    ratios = np.empty(m)  # w for now, divided in place below
    v, extra = divmod(N, m)  # the even split: v + 1 for the first `extra` prompts, v after
    clean = alpha > 0 and beta > 1.0  # then every w is in [0, inf]: no NaN (see _paper_weights)
    threshold, insufficient = params.filter_threshold, params.filter_insufficient
    filtering = bool(threshold or insufficient)  # else w is r times a constant, for every prompt
    total_w = head_sq = rest_sq = 0.0
    for start in range(0, m, chunk):
        end = min(start + chunk, m)
        p_part, g_part = p[start:end], g[start:end]
        # NaN fails every comparison; when clean, p < 0 makes w NaN and G = inf makes w inf
        # (or NaN), so the total checks those two (below) and two reductions go
        checked = p_part.max() <= 1.0 and g_part.min() >= 0.0
        if not (checked and (clean or (p_part.min() >= 0.0 and g_part.max() < math.inf))):
            _validate(estimates)  # raises, naming the first bad entry
        w = _paper_weights(p_part, g_part, alpha, beta, ratios[start:end])
        total_w = _stream_sum(total_w, w, start, scratch, clean=clean)
        if filtering:  # the even split's objective needs the weights the filters drop
            cut = min(max(extra - start, 0), end - start)
            head_sq += _dot(w[:cut], w[:cut])
            rest_sq += _dot(w[cut:], w[cut:])

    if clean and not total_w < math.inf:  # inf or NaN
        _validate(estimates)  # raises for p < 0 or G = inf; else an overflow, or p = -0.0:
        if math.isnan(total_w):  # alpha / -0.0 = -inf, where the published p == 0 holds
            return _gvm_paper(replace(estimates, p_hat=p + 0.0), budget, params)  # -0.0 -> 0.0
    clean = clean and math.isfinite(total_w)  # w / total_w: no inf / inf
    total_r = 0.0
    for start in range(0, m, chunk):
        r = ratios[start : start + chunk]
        if total_w != 0:  # else every w is 0
            r /= total_w
        if threshold:
            r[p[start : start + chunk] > threshold] = 0.0
        if insufficient:
            r[~(p[start : start + chunk] * r * N >= insufficient)] = 0.0
        total_r = _stream_sum(total_r, r, start, scratch, clean=clean)

    deficit = -N % params.align_to  # the trainer's padding, after the fix-up
    scale = (total_w * total_r) ** 2  # w_i^2 = r_i^2 * scale up to rounding where r_i > 0
    predicted = math.nan  # unless set below: from the true weights, at the end
    if total_r == 0:  # every w is 0 (then so is the even split's objective) or filtered
        ints = _even(m, N)
        ratios = np.full(m, 1.0 / m)
        codes = np.full(m, _GVM, np.int8)
    else:
        ints = np.empty(m, np.int64)
        codes = np.empty(m, np.int8)
        residuals = np.empty(m)
        whole = per_count = 0.0
        for start in range(0, m, chunk):
            end = min(start + chunk, m)
            r = ratios[start:end]
            if total_r != 1.0:
                r /= total_r
            scaled = np.multiply(r, N, out=scratch[: end - start])
            rounded = np.rint(scaled, out=scratch[chunk : chunk + end - start])
            whole += float(rounded.sum())  # whole numbers: exact below 2^53
            n_part = ints[start:end]
            np.copyto(n_part, rounded, casting="unsafe")  # whole numbers: exact
            dropped = codes[start:end].view(np.bool_)
            np.equal(r, 0.0, out=dropped)  # filtered, or weight 0
            np.subtract(scaled, rounded, out=residuals[start:end])
            if not filtering:
                cut = min(max(extra - start, 0), end - start)
                head_sq += _dot(r[:cut], r[:cut])
                rest_sq += _dot(r[cut:], r[cut:])
            # J = sum r^2 / n over n > 0 as sum r^2 / max(n, 1): exact while every n = 0
            # prompt has r = 0 (the usual case; else this chunk takes the slow path)
            if np.count_nonzero(dropped) + np.count_nonzero(n_part) == end - start:
                inverse = np.maximum(rounded, 1.0, out=scaled)
                per_count += _dot(np.divide(r, inverse, out=inverse), r)
            else:
                per_count += objective(np.square(r), n_part)
        if not filtering:
            head_sq *= scale
            rest_sq *= scale
        error = N - (int(whole) if whole < _TWO_53 else int(ints.sum()))
        # J from the ratios holds while every prompt with samples has its weight in them: no
        # padding, and no filtered prompt (r = 0, w > 0) or negative count from the fix-up
        from_ratios = deficit == 0
        if error:
            moved = _fix_up(residuals, abs(error), error > 0)
            before = ints[moved]
            ints[moved] += 1 if error > 0 else -1
            from_ratios = from_ratios and int(ints[moved].min()) >= 0
            from_ratios = from_ratios and not (filtering and bool((ratios[moved] == 0).any()))
            if from_ratios:  # the moved prompts' terms, from their old counts to the new
                squares = np.square(ratios[moved])
                per_count += objective(squares, ints[moved]) - objective(squares, before)
        codes *= np.int8(_FILTERED)
        if from_ratios:
            predicted = per_count * scale
    uniform_variance = head_sq / (v + 1) + (rest_sq / v if v else 0.0)  # n = 0: left out
    if deficit:
        rounds, rest = divmod(deficit, m)
        first = _largest(ints, rest)  # the order before any padding
        ints += rounds
        ints[first] += 1
    if math.isnan(predicted):  # zero-ratio prompts may hold samples: use the true weights
        w = _paper_weights(p, g, alpha, beta, np.empty(m))
        predicted = objective(np.square(w, out=w), ints)
    return AllocationPlan(
        samples=ints,
        weights=ratios,
        reason_codes=codes,
        total=int(N + deficit),
        budget=budget,
        predicted_variance=predicted,
        uniform_variance=uniform_variance,
    )


_DOT_PIECE = 8192  # OpenBLAS's ddot stays on one thread up to 10,000 elements


def _dot(a: F64, b: F64) -> float:
    """sum a_i b_i by BLAS ddot on pieces of _DOT_PIECE: 3-4x faster than einsum, and on one
    thread (BLAS threads cost more than they save on cache-sized vectors, by far on a busy
    machine)."""
    if a.size <= _DOT_PIECE:
        return float(np.dot(a, b))
    pieces = range(0, a.size, _DOT_PIECE)
    return sum(float(np.dot(a[i : i + _DOT_PIECE], b[i : i + _DOT_PIECE])) for i in pieces)


def _even(m: int, total: int) -> I64:
    """even_split without bounds: total // m each, one more for the first total % m."""
    n = np.full(m, total // m, np.int64)
    n[: total % m] += 1
    return n


# --- entry point ----------------------------------------------------------------------------------


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


def allocate(estimates: Estimates, budget: int, params: AllocationParams) -> AllocationPlan:
    """Samples per prompt for one batch (see the module docstring for the strategies)."""
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 0:
        raise AllocationError(f"budget must be an integer >= 0, not {budget!r}", field="budget")
    budget = int(budget)
    m = estimates.p_hat.size
    if m == 0:
        raise InfeasibleBudgetError(
            "the batch is empty: no prompts to allocate to", field="prompts"
        )
    if params.strategy == "gvm-paper":  # checks p_hat and g_hat itself, in cache-sized pieces
        if estimates.expected_cost is not None:
            _validate(estimates)
        return _gvm_paper(estimates, budget, params)
    _validate(estimates)

    lower, upper, explore, N = _bounds(estimates, budget, params)
    cost = _plugin_cost(estimates, params)
    uniform = even_split(lower, upper, N)
    scratch = np.empty(m)
    if params.strategy == "uniform":
        samples, q = uniform, math.nan
        weights = np.full(m, 1.0 / m)
    else:
        samples, q = _solve(cost, lower, upper, N)
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
        predicted_variance=objective(cost, samples, scratch=scratch),
        uniform_variance=objective(cost, uniform, scratch=scratch),
    )


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
    >= 1/q (q from _solve, on costs scaled like there); what uniform wants is the even share."""
    m = samples.size
    codes = np.full(m, _GVM, np.int8)
    checks = [(samples == lower, _FLOOR)]
    if params.max_samples is not None:  # without a cap, upper is just the budget
        checks.append((samples == upper, _CAP))
    scale = _cost_scale(float(cost.max()))
    for at_bound, code in checks:
        idx = np.flatnonzero(at_bound)
        if idx.size == 0:
            continue
        if math.isnan(q):  # uniform
            wanted = np.full(idx.size, total / m)
        else:
            c = cost[idx] * scale
            with np.errstate(invalid="ignore"):  # 0 * inf: a zero-cost prompt wants nothing
                wanted = np.where(c > 0, np.floor(0.5 + np.sqrt(0.25 + c * q)), 0.0)
        bound = lower[idx] if code == _FLOOR else upper[idx]
        binds = idx[wanted < bound] if code == _FLOOR else idx[wanted > bound]
        codes[binds] = code
        if code == _FLOOR:
            codes[binds[explore[binds] & (lower[binds] > params.lower_bound)]] = _EXPLORE
    return codes
