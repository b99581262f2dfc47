"""Paired statistics for learning curves: the endpoint, its test, the samples ratio, its interval.

Shared by the learning benchmark and the simulator so both report the same figures the same way.
Curves are arrays of shape (seeds, points) over a common x axis of generated samples (pilot
included); arms are paired by seed (same prompts, same order, same held-out set).

- `auc`: the primary endpoint, fixed in advance: per seed, the area under the held-out curve
  over the samples axis, divided by its length (the curve's mean height, in accuracy units).
- `sign_flip_test`: the within-seed permutation test on paired differences (swapping two arms'
  labels within a seed flips the sign of its difference): exact up to 16 seeds, Monte Carlo above.
- `samples_to_reach` / `samples_ratio`: generated samples an arm needs to reach uniform's final
  accuracy, over uniform's total, on seed-mean curves (inf: never reached within its budget).
- `bootstrap_ratio`: a percentile interval for that ratio, resampling seeds (pairs kept).
- `holm`: Holm's step-down adjustment for the number of comparisons made.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]

EXACT_UP_TO = 16  # seeds: 2**16 sign patterns enumerated; Monte Carlo above


def auc(x: F64, curves: F64) -> F64:
    """Per-seed mean height of the curve over x (trapezoid area / (x[-1] - x[0]))."""
    y = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    widths = np.diff(np.asarray(x, dtype=np.float64))
    area = (0.5 * (y[:, 1:] + y[:, :-1]) * widths).sum(axis=1)
    result: F64 = area / float(widths.sum())
    return result


def sign_flip_test(
    differences: Sequence[float] | F64, *, resamples: int = 100_000, seed: int = 0
) -> float:
    """Two-sided p-value of the mean paired difference under the null that each difference is
    as likely negative as positive (within-seed label exchange). The observed pattern counts as
    one of the resamples, so a Monte Carlo p-value is never 0."""
    d = np.asarray(differences, dtype=np.float64)
    observed = abs(float(d.mean()))
    tolerance = 1e-12 * max(observed, 1e-300)  # a flip equal to the observed one is "as extreme"
    if d.size <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        means = np.abs(signs @ d) / d.size
        return float(np.mean(means >= observed - tolerance))
    rng = np.random.default_rng(seed)
    extreme = 0
    for lo in range(0, resamples, 10_000):
        signs = rng.choice((-1.0, 1.0), size=(min(10_000, resamples - lo), d.size))
        extreme += int(np.count_nonzero(np.abs(signs @ d) / d.size >= observed - tolerance))
    return (extreme + 1) / (resamples + 1)


def samples_to_reach(x: F64, y: F64, target: float) -> float:
    """x at which y first reaches `target`, linear between points; inf if it never does."""
    above = np.flatnonzero(np.asarray(y) >= target)
    if above.size == 0:
        return math.inf
    k = int(above[0])
    if k == 0:
        return float(x[0])
    x0, x1, y0, y1 = float(x[k - 1]), float(x[k]), float(y[k - 1]), float(y[k])
    return x0 + (x1 - x0) * (target - y0) / (y1 - y0)


def samples_ratio(x: F64, mine: F64, uniform: F64) -> float:
    """Samples `mine` needs to reach uniform's final accuracy, over uniform's total, on the
    seed-mean curves (arrays (seeds, points) on the shared axis x)."""
    target = float(np.mean(uniform, axis=0)[-1])
    return samples_to_reach(x, np.mean(mine, axis=0), target) / float(x[-1])


@dataclass(frozen=True, slots=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float


def bootstrap_ratio(
    x: F64,
    mine: F64,
    uniform: F64,
    *,
    level: float = 0.9,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """`samples_ratio` and its percentile bootstrap interval, seeds resampled in pairs
    (a resample that never reaches the target counts as inf, so the upper end may be inf)."""
    rng = np.random.default_rng(seed)
    n = mine.shape[0]
    ratios = np.empty(resamples)
    for r in range(resamples):
        rows = rng.integers(0, n, n)
        ratios[r] = samples_ratio(x, mine[rows], uniform[rows])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(ratios, [tail, 1.0 - tail], method="inverted_cdf")
    return Interval(samples_ratio(x, mine, uniform), float(low), float(high), level)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error over all the comparisons given)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * float(p[i])))
        adjusted[i] = running
    return adjusted.tolist()
