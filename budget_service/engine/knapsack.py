"""`knapsack`: Knapsack RL's value of a prompt's samples (Li et al., "Knapsack RL: Unlocking
Exploration of LLMs via Optimizing Budget Allocation", arXiv 2509.25849), maximised exactly.

A group of n samples of a prompt with success rate p carries a gradient only when it holds both
outcomes; the paper values it as that probability times an information gain p (1 - p)^2:

    v(n, p) = (1 - p^n - (1 - p)^n) p (1 - p)^2,     maximise sum_i E_post[v(n_i, p_i)]

with p_i under the Beta(a_i, b_i) posterior the estimates hold (estimates.py), not a plug-in.
The marginal gain

    v(n + 1, p) - v(n, p) = p^(n+1) (1 - p)^3 + p^2 (1 - p)^(n+2)

falls with n for every p, so its expectation does too, from n = 1 on (v(0) is 0 and v(1) is 0,
hence the floor of 1 in AllocationParams.lower_bound): the `need` largest gains are the exact
optimum (greedy.py). Under Beta(a, b), E[p^k (1 - p)^l] = B(a + k, b + l) / B(a, b): the first
gain of each prompt from log-gamma, the next ones by the ratios
(a + n + 1) / (a + b + n + 4) and (b + n + 2) / (a + b + n + 4). No gradient norms needed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from budget_service.engine.estimates import Estimates
from budget_service.engine.greedy import GainBlock
from budget_service.engine.params import F64, I64

__all__ = ["knapsack_gains", "knapsack_value", "log_gamma"]


def knapsack_gains(estimates: Estimates, floor: I64) -> GainBlock:
    """Gains of unit j past each prompt's `floor` (a total of floor + j -> floor + j + 1)."""
    a, b = estimates.posterior_a, estimates.posterior_b
    p = estimates.p_hat

    def gains(rows: NDArray[np.intp], start: I64, width: int) -> F64:
        n = (floor[rows] + start).astype(np.float64)[:, None] + np.arange(width)[None, :]
        if a is None or b is None:  # no posterior: p_hat plugged in
            q = p[rows, None]
            with np.errstate(under="ignore"):
                plugged: F64 = q ** (n + 1) * (1 - q) ** 3 + q**2 * (1 - q) ** (n + 2)
            return plugged
        ar, br = a[rows, None], b[rows, None]
        n0 = n[:, :1]
        s = ar + br
        # E[p^(n0+1) (1-p)^3] and E[p^2 (1-p)^(n0+2)] at each row's first column, then ratios
        first = np.exp(_log_moment(ar, br, n0 + 1, 3.0))
        second = np.exp(_log_moment(ar, br, 2.0, n0 + 2))
        step = n[:, :-1]
        with np.errstate(under="ignore"):
            first = first * np.cumprod(
                np.concatenate((np.ones_like(n0), (ar + step + 1) / (s + step + 4)), axis=1),
                axis=1,
            )
            second = second * np.cumprod(
                np.concatenate((np.ones_like(n0), (br + step + 2) / (s + step + 4)), axis=1),
                axis=1,
            )
        out: F64 = first + second
        return out

    return gains


def knapsack_value(estimates: Estimates, totals: I64) -> float:
    """sum_i E_post[v(n_i, p_i)]: the objective knapsack maximises (what tests compare)."""
    a, b, p = estimates.posterior_a, estimates.posterior_b, estimates.p_hat
    n = totals.astype(np.float64)
    if a is None or b is None:
        return float(np.sum((1 - p**n - (1 - p) ** n) * p * (1 - p) ** 2 * (n > 0)))
    # E[p (1-p)^2] - E[p^(n+1) (1-p)^2] - E[p (1-p)^(n+2)]
    value = (
        np.exp(_log_moment(a, b, 1.0, 2.0))
        - np.exp(_log_moment(a, b, n + 1, 2.0))
        - np.exp(_log_moment(a, b, 1.0, n + 2))
    )
    return float(np.sum(np.where(n > 0, value, 0.0)))


def _log_moment(a: F64, b: F64, k: F64 | float, j: F64 | float) -> F64:
    """log E[p^k (1 - p)^j] for p ~ Beta(a, b) = log B(a + k, b + j) - log B(a, b)."""
    out: F64 = (
        log_gamma(a + k)
        + log_gamma(b + j)
        - log_gamma(a + b + k + j)
        - log_gamma(a)
        - log_gamma(b)
        + log_gamma(a + b)
    )
    return out


# Lanczos approximation (g = 7, 9 terms): relative error ~1e-15 for x >= 1/2.
_G = 7.0
_LANCZOS = np.array([
    0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313,
    -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6,
    1.5056327351493116e-7,
])  # fmt: skip


def log_gamma(x: F64 | float) -> F64:
    """log Gamma(x) for x > 0, vectorised (numpy has none; math.lgamma is one value a call).
    Below 1/2, log Gamma(x) = log Gamma(x + 1) - log x."""
    x = np.asarray(x, dtype=np.float64)
    small = x < 0.5
    z = np.where(small, x + 1.0, x) - 1.0
    series = np.full(z.shape, _LANCZOS[0])
    for i in range(1, _LANCZOS.size):
        series += _LANCZOS[i] / (z + i)
    t = z + _G + 0.5
    out: F64 = 0.5 * np.log(2 * np.pi) + (z + 0.5) * np.log(t) - t + np.log(series)
    return np.where(small, out - np.log(np.where(small, x, 1.0)), out)
