"""The quantity every strategy trades off: the per-prompt cost c_i and the objective J(n).

The paper (Yao et al., GVM, arXiv 2505.02391) bounds the variance of the RAFT gradient by
sum_i G_i^2 / (p_i n_i) and regularises it (alpha, beta):

    minimise  J(n) = sum_i c_i / n_i,   c_i = G_i^2 / (p_i + alpha * p_i^(1 - beta))
                                            = G_i^2 / p_i / (1 + alpha / p_i^beta)
    subject to  sum_i n_i = N

whose continuous solution (Proposition 1) is n_i = N * w_i / sum_l w_l, w_i = sqrt(c_i).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from budget_service.engine.params import F64

__all__ = ["objective", "regularised_cost"]


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
    # c / max(n, 1) counts c once for each n = 0 prompt: take those back out (a dot product,
    # not cost[n == 0]: no branch on a mask that is often random)
    np.maximum(n, 1, out=out)
    np.divide(cost, out, out=out)
    return float(out.sum() - np.dot(cost, n == 0))
