"""From stored per-prompt statistics to the estimates the allocator consumes.

Pure numpy, no I/O. The store keeps sufficient statistics per prompt (discounted sample and
accepted counts, gradient-norm sum and count, last step) and the same pooled over the run;
`estimate` turns them into p_hat, g_hat and, for `gvm`, the posterior expected cost.

Why posterior expectations: the allocator minimises J(n) = sum_i c_i / n_i with
c_i = G_i^2 / (p_i + alpha p_i^(1-beta)). With p_i unknown, the expected objective under the
posterior is sum_i E[c_i] / n_i, minimised by n_i ~ sqrt(E[c_i]) - not by plugging p_hat into c.
The difference matters most for prompts with 0 of N' pilot samples accepted: p_hat = 0 says
"never", c(0) = 0, while the posterior still gives real weight to p near the cost's peak
p* = (alpha (beta - 1))^(1/beta) (about 0.03 for the defaults).

Model (all documented defaults live in AllocationParams):
- p_i ~ Beta(mu kappa, (1 - mu) kappa), mu = the run's pooled acceptance rate (smoothed by half
  a pseudo-success), kappa fitted to the batch's spread of rates by the method of moments with
  the binomial noise removed (`fit_prior`), or `prior_strength` when the batch is too small
  for a fit. Posterior Beta(mu kappa + accepted, (1 - mu) kappa + samples - accepted).
- G_i: the mean reported gradient norm shrunk toward the run's pooled mean with
  `grad_prior_strength` pseudo-norms. Norms of rejected samples, when a trainer reports them,
  count as evidence too, rescaled to the accepted samples' level by `rejected_norm_scale`
  (fitted within prompts that have both kinds); a prompt with 0 of N' accepted then has a G
  of its own instead of the pooled mean. E[c_i] ~ g_hat_i^2 E_post[h(p_i)], h(p) =
  p^(beta-1) / (p^beta + alpha) (G's posterior spread is ignored). With algo = "grpo",
  h(p) = p (1 - p) (closed form). A run that never reported a (nonzero) norm - external
  trainers such as verl - allocates from acceptance alone: G = 1 everywhere.
- Decay: statistics last updated at step s and read at step t count 0.5 ** ((t - s) / half_life).
  The store applies it at write time; `estimate` applies it from last_step to the query step.
- `gvm-paper` (and prior_strength = 0) use the raw ratios: p_hat = accepted / samples,
  g_hat = grad_norm_sum / grad_norm_count, exactly, as the published code does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from budget_service.engine.cost import regularised_cost
from budget_service.engine.params import F64, AllocationParams, InvalidStatisticsError

__all__ = [
    "Estimates",
    "PromptStatistics",
    "RunTotals",
    "decay_factor",
    "estimate",
    "fit_prior_strength",
    "posterior_expected_cost",
    "posterior_mean",
    "rejected_norm_scale",
]

ArrayLike = F64 | list[float] | tuple[float, ...]

# Empirical-Bayes fit of the prior strength: needs this many prompts with >= 2 samples, and
# keeps kappa in a range where the Beta prior stays proper and not absurdly confident.
FIT_MIN_PROMPTS = 16
KAPPA_MIN, KAPPA_MAX = 0.05, 1000.0


@dataclass(frozen=True, slots=True)
class PromptStatistics:
    """One entry per prompt of a batch, in request order, as stored (decayed to last_step)."""

    samples: F64  # discounted sample count (0 for an unseen prompt)
    accepted: F64  # discounted accepted count
    grad_norm_sum: F64  # discounted sum of accepted samples' gradient norms
    grad_norm_count: F64  # discounted number of norms in that sum
    last_step: NDArray[np.int64]  # step of the last update (anything for unseen prompts)
    rejected_grad_norm_sum: F64 | None = None  # the same for rejected samples (None: zeros)
    rejected_grad_norm_count: F64 | None = None

    @classmethod
    def unseen(cls, m: int) -> PromptStatistics:
        """m prompts the run has never observed."""
        zero = np.zeros(m)
        return cls(zero, zero, zero, zero, np.zeros(m, np.int64), zero, zero)

    def rejected_norms(self) -> tuple[F64, F64]:
        """Sum and count of the rejected samples' norms (zeros when none were reported)."""
        zero = np.zeros(self.samples.shape)
        s, c = self.rejected_grad_norm_sum, self.rejected_grad_norm_count
        return (zero if s is None else s), (zero if c is None else c)

    def __len__(self) -> int:
        return int(self.samples.shape[0])


@dataclass(frozen=True, slots=True)
class RunTotals:
    """The same statistics pooled over every prompt of the run, as stored."""

    samples: float = 0.0
    accepted: float = 0.0
    grad_norm_sum: float = 0.0
    grad_norm_count: float = 0.0
    last_step: int = 0
    rejected_grad_norm_sum: float = 0.0
    rejected_grad_norm_count: float = 0.0


@dataclass(frozen=True, slots=True)
class Estimates:
    """What the allocator consumes, one entry per prompt."""

    p_hat: F64  # acceptance rate: posterior mean (gvm) or raw ratio (gvm-paper)
    g_hat: F64  # gradient norm
    # E_post[c_i] for the (alpha, beta, algo) in cost_key; None: the allocator plugs in p_hat
    expected_cost: F64 | None = None
    explore: NDArray[np.bool_] | None = None  # unseen or never accepted; None: p_hat == 0
    cost_key: tuple[float, float, str] | None = None
    prior_mean: float = math.nan  # the Beta prior's mean and strength (nan: no prior)
    prior_strength: float = math.nan
    # Each prompt's Beta posterior on p, Beta(a, b) (None: no posterior; p_hat is plugged in).
    # `knapsack` and the GRPO top-up take expectations over it.
    posterior_a: F64 | None = None
    posterior_b: F64 | None = None

    @classmethod
    def from_rates(
        cls, p: ArrayLike, g: ArrayLike, explore: NDArray[np.bool_] | None = None
    ) -> Estimates:
        """Known (or raw) rates: what gvm-paper and the benchmarks feed in."""
        return cls(
            p_hat=np.asarray(p, dtype=np.float64),
            g_hat=np.asarray(g, dtype=np.float64),
            explore=explore,
        )

    def explore_mask(self) -> NDArray[np.bool_]:
        return self.explore if self.explore is not None else self.p_hat == 0

    def validate(self) -> None:
        """InvalidStatisticsError naming the first bad value: p_hat in [0, 1], g_hat and
        expected_cost finite and >= 0, every array p_hat's shape."""
        fields: list[tuple[str, F64 | None, float, float]] = [
            ("p_hat", self.p_hat, 0.0, 1.0),
            ("g_hat", self.g_hat, 0.0, math.inf),
            ("expected_cost", self.expected_cost, 0.0, math.inf),
        ]
        m = self.p_hat.shape
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


def decay_factor(
    elapsed_steps: float | NDArray[np.number], half_life_steps: float | None
) -> float | F64:
    """0.5 ** (elapsed / half_life): the weight of evidence `elapsed` steps old (1 with no decay).

    Negative elapsed times (a query for a step before the last update) count as 0.
    """
    if half_life_steps is None:
        if np.ndim(elapsed_steps) == 0:
            return 1.0
        return np.ones(np.shape(elapsed_steps))
    elapsed = np.maximum(np.asarray(elapsed_steps, dtype=np.float64), 0.0)
    factor = np.exp2(-elapsed / half_life_steps)
    return float(factor) if factor.ndim == 0 else factor


def estimate(
    stats: PromptStatistics, totals: RunTotals, step: int, params: AllocationParams
) -> Estimates:
    """Estimates for one batch at `step` (see the module docstring for the model)."""
    _validate(stats, totals)
    samples, accepted = stats.samples, np.minimum(stats.accepted, stats.samples)
    g_sum, g_count = stats.grad_norm_sum, stats.grad_norm_count
    explore = accepted <= 0
    if params.strategy == "gvm-paper":
        return Estimates(
            p_hat=_ratio(accepted, samples, 0.0),
            g_hat=_ratio(g_sum, g_count, 0.0),
            explore=explore,
        )

    f = decay_factor(step - stats.last_step, params.half_life_steps)
    ft = float(decay_factor(step - totals.last_step, params.half_life_steps))
    samples, accepted, g_sum, g_count = samples * f, accepted * f, g_sum * f, g_count * f
    r_sum, r_count = stats.rejected_norms()
    if r_count.any():  # rejected samples' norms, on the accepted samples' scale, join the evidence
        r_sum, r_count = r_sum * f, r_count * f
        scale = rejected_norm_scale(g_sum, g_count, r_sum, r_count, totals)
        g_sum, g_count = g_sum + scale * r_sum, g_count + r_count
    pooled_g = _pooled_norm(totals)
    if pooled_g is None or pooled_g <= 0:  # no gradient norms in this run: acceptance alone
        g_hat = np.ones_like(samples)
    elif params.prior_strength == 0 or params.grad_prior_strength == 0:
        g_hat = _ratio(g_sum, g_count, pooled_g)
    else:
        strength = params.grad_prior_strength
        g_hat = (g_sum + strength * pooled_g) / (g_count + strength)

    if params.prior_strength == 0:
        return Estimates(p_hat=_ratio(accepted, samples, 0.0), g_hat=g_hat, explore=explore)

    # Pooled rate, smoothed by half a pseudo-success so a run's mean is never exactly 0 or 1.
    mu = (totals.accepted * ft + 0.5) / (totals.samples * ft + 1.0)
    kappa = fit_prior_strength(samples, accepted) if params.fit_prior else None
    kappa = params.prior_strength if kappa is None else kappa
    a = mu * kappa + accepted
    b = (1.0 - mu) * kappa + (samples - accepted)
    if params.algo == "grpo":
        # GRPO's per-prompt variance ~ p (1 - p) G^2 (see cost.py): closed form.
        h = a * b / ((a + b) * (a + b + 1.0))
    else:
        h = posterior_expected_cost(a, b, params.alpha, params.beta)
    return Estimates(
        p_hat=a / (a + b),
        g_hat=g_hat,
        expected_cost=h * np.square(g_hat),
        explore=explore,
        cost_key=(params.alpha, params.beta, params.algo),
        prior_mean=mu,
        prior_strength=kappa,
        posterior_a=a,
        posterior_b=b,
    )


def rejected_norm_scale(
    g_sum: F64, g_count: F64, r_sum: F64, r_count: F64, totals: RunTotals
) -> float:
    """How much larger accepted samples' gradient norms run than rejected samples' (a correct
    and a wrong answer need not have the same norm). Fitted within the prompts that have both
    kinds, so prompt difficulty does not confound it: the ratio of their mean norms, each prompt
    weighted by c_a c_r / (c_a + c_r); else from the run totals; else 1 (no accepted norms to
    match: the rejected ones set the scale)."""
    both = (g_count > 0) & (r_count > 0)
    if int(both.sum()) >= FIT_MIN_PROMPTS:
        ga, gr, ca, cr = g_sum[both], r_sum[both], g_count[both], r_count[both]
        weight = ca * cr / (ca + cr)
        accepted_mean, rejected_mean = (weight * ga / ca).sum(), (weight * gr / cr).sum()
    else:
        accepted_mean = _ratio_of(totals.grad_norm_sum, totals.grad_norm_count)
        rejected_mean = _ratio_of(totals.rejected_grad_norm_sum, totals.rejected_grad_norm_count)
    if accepted_mean > 0 and rejected_mean > 0:
        return float(accepted_mean / rejected_mean)
    return 1.0


def _pooled_norm(totals: RunTotals) -> float | None:
    """The run's mean accepted-sample norm, else its mean rejected-sample norm (the scale the
    rejected ones are put on when there are no accepted ones); None when no norm was reported."""
    for s, c in (
        (totals.grad_norm_sum, totals.grad_norm_count),
        (totals.rejected_grad_norm_sum, totals.rejected_grad_norm_count),
    ):
        if c > 0:
            return s / c
    return None


def _ratio_of(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def _ratio(num: F64, den: F64, default: float) -> F64:
    out = np.full(num.shape, default)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _validate(stats: PromptStatistics, totals: RunTotals) -> None:
    m = stats.samples.shape
    names = ("samples", "accepted", "grad_norm_sum", "grad_norm_count", "last_step")
    optional = ("rejected_grad_norm_sum", "rejected_grad_norm_count")
    for name in names + tuple(n for n in optional if getattr(stats, n) is not None):
        values = np.asarray(getattr(stats, name))
        if values.ndim != 1 or values.shape != m:
            raise InvalidStatisticsError(
                f"stats.{name} has shape {values.shape}, stats.samples has {m}",
                field=f"stats.{name}",
            )
        bad = ~np.isfinite(values) | (values < 0) if name != "last_step" else ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidStatisticsError(
                f"stats.{name}[{i}] = {float(values[i])!r}: must be finite"
                + (" and >= 0" if name != "last_step" else ""),
                field=f"stats.{name}",
            )
    over = stats.accepted > stats.samples * (1 + 1e-9) + 1e-9
    if over.any():
        i = int(np.argmax(over))
        raise InvalidStatisticsError(
            f"stats.accepted[{i}] = {float(stats.accepted[i])!r} exceeds samples = "
            f"{float(stats.samples[i])!r}",
            field="stats.accepted",
        )
    for name in ("samples", "accepted", "grad_norm_sum", "grad_norm_count", *optional):
        value = getattr(totals, name)
        if not math.isfinite(value) or value < 0:
            raise InvalidStatisticsError(
                f"totals.{name} = {value!r}: must be finite and >= 0", field=f"totals.{name}"
            )


def fit_prior_strength(samples: F64, accepted: F64) -> float | None:
    """Method-of-moments strength kappa of a Beta prior from a batch's observed rates.

    For r_i = accepted_i / n_i with p_i ~ Beta(., .) of mean m and n_i draws each,
    E[(r_i - m)^2] = m (1 - m) (rho + (1 - rho) / n_i), rho = 1 / (kappa + 1): the binomial
    noise (1/n_i) is removed before reading the spread of the true rates. A U-shaped population
    (many prompts always or never solved) gives a small kappa - a prior that keeps a 0/8 prompt
    plausibly near p* - where a prior centred on the mean with a fixed strength would not.
    None when fewer than FIT_MIN_PROMPTS prompts have >= 2 samples or all rates are 0 or all 1.
    """
    use = samples >= 2.0
    if int(use.sum()) < FIT_MIN_PROMPTS:
        return None
    n = samples[use]
    r = accepted[use] / n
    mean = float(r.mean())
    if not 0.0 < mean < 1.0:
        return None
    spread = float(r.var(ddof=1)) / (mean * (1.0 - mean))
    noise = float(np.mean(1.0 / n))
    rho = (spread - noise) / (1.0 - noise)
    if rho <= 1.0 / (KAPPA_MAX + 1.0):
        return KAPPA_MAX
    return float(min(max(1.0 / rho - 1.0, KAPPA_MIN), KAPPA_MAX))


# --- posterior expectations -----------------------------------------------------------------------

# Quadrature in logit space x = log(p / (1 - p)), where the Beta density is proportional to
# p^a (1 - p)^b: smooth, log-concave, with exponential tails. Concentrated posteriors (Laplace
# scale <= 1) get a grid of _NODES points over +-_SPAN scales around their mode; diffuse ones
# (few observations under a U-shaped prior) a fixed grid over [-_EDGE, _EDGE], fine enough to
# resolve the cost's peak (about one logit unit wide). Beyond either grid the tails are
# integrated in closed form as exponentials carrying the edge's cost (at +-_EDGE the cost is
# flat to many digits). Checked against closed forms and a dense reference in
# tests/engine/test_estimates.py.
_NODES = 65
_SPAN = 6.0
_Z = np.linspace(-_SPAN, _SPAN, _NODES)
_EDGE = 40.0
_X = np.linspace(-_EDGE, _EDGE, 321)
_CHUNK = 4096
_DEDUPE_ABOVE = 8  # (a, b) pairs repeat a lot: compute each distinct pair once


def posterior_expected_cost(a: F64, b: F64, alpha: float, beta: float) -> F64:
    """E[p^(beta-1) / (p^beta + alpha)] for p ~ Beta(a_i, b_i), a, b > 0, vectorised."""
    return posterior_mean(a, b, lambda p: regularised_cost(p, 1.0, alpha, beta))


def posterior_mean(a: F64, b: F64, fn: Callable[[F64], F64]) -> F64:
    """E[fn(p)] for p ~ Beta(a_i, b_i), a, b > 0, for a smooth bounded-on-(0,1) fn.

    Repeated (a, b) pairs (common: counts are small integers) are computed once.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size > _DEDUPE_ABOVE:
        keys, inverse = np.unique(a + 1j * b, return_inverse=True)
        if keys.size < a.size:
            return _posterior_mean(keys.real.copy(), keys.imag.copy(), fn)[inverse]
    return _posterior_mean(a, b, fn)


def _posterior_mean(a: F64, b: F64, fn: Callable[[F64], F64]) -> F64:
    scale = np.sqrt((a + b) / (a * b))  # Laplace scale of the density in logit space
    mode = np.log(a / b)
    out = np.empty(a.shape)
    narrow = scale <= 1.0
    for rows, grid in ((np.flatnonzero(narrow), None), (np.flatnonzero(~narrow), _X)):
        for lo in range(0, rows.size, _CHUNK):
            part = rows[lo : lo + _CHUNK]
            if grid is None:
                x = mode[part, None] + scale[part, None] * _Z[None, :]
            else:
                x = np.broadcast_to(grid, (part.size, grid.size))
            out[part] = _integrate(x, a[part], b[part], fn)
    return out


def _integrate(x: F64, a: F64, b: F64, fn: Callable[[F64], F64]) -> F64:
    """Trapezoid over each row's uniform logit grid x, plus closed-form exponential tails."""
    sp_pos = np.logaddexp(0.0, x)  # softplus(x)  = -log(1 - p)
    sp_neg = sp_pos - x  # softplus(-x) = -log p
    logw = -a[:, None] * sp_neg - b[:, None] * sp_pos
    p = np.exp(-sp_neg)
    cost = fn(p)
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    step = x[:, 1] - x[:, 0]
    # tail mass beyond an edge: w(edge) / |l'(edge)|, l'(x) = a - (a + b) p
    tail_lo = w[:, 0] / np.maximum(a - (a + b) * p[:, 0], 1e-300)
    tail_hi = w[:, -1] / np.maximum((a + b) * p[:, -1] - a, 1e-300)
    body = w.sum(axis=1) - 0.5 * (w[:, 0] + w[:, -1])
    body_cost = (w * cost).sum(axis=1) - 0.5 * (w[:, 0] * cost[:, 0] + w[:, -1] * cost[:, -1])
    mass = step * body + tail_lo + tail_hi
    mean: F64 = (step * body_cost + tail_lo * cost[:, 0] + tail_hi * cost[:, -1]) / mass
    return mean
