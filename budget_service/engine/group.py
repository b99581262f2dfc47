"""GRPO top-ups that know the group so far (`algo = "grpo"`, `drawn` and `drawn_accepted` given).

A GRPO/RLOO group's gradient is zero while all its outcomes agree. With k of d samples accepted
so far this step, x more samples make the step's group n = d + x with K = k + Y correct,
Y ~ Binomial(x, p), p ~ the Beta(a, b) posterior (which already counts the k of d: they were
reported). The RLOO estimate of a prompt's gradient p (1 - p) delta then has mean
y_K delta and noise variance sigma^2 z_K, with

    y_K = K (n - K) / (n (n - 1)),   z_K = K (n - K) / (n (n - 1)^2),
    sigma^2 = G^2 - p (1 - p) |delta|^2   (E|score|^2 = G^2),   |delta| = SIGNAL_SHARE * G

(benchmarks/variance.py, `rloo_mse`). The per-prompt objective is its expected squared error:

    f(x) = G^2 sum_y P(Y = y) [ s^2 (y_K^2 - 2 y_K m1 + m2) + z_K (1 - s^2 m1) ]

with s = SIGNAL_SHARE, P(Y = y) the beta-binomial pmf, m1 = E[p (1 - p) | y] and
m2 = E[p^2 (1 - p)^2 | y] under Beta(a + y, b + x - y). An agreeing group (K = 0 or n) costs its
whole gradient, s^2 G^2 E[p^2 (1 - p)^2]; more samples buy the chance of a disagreement.

f is not convex everywhere: for a group that agrees so far (k = 0 or k = d) and totals up to
~18, one more sample can raise f (a single success in a small group gives a large, noisy
estimate) and the gains can rise with x. We minimise sum_i f_i over its convex envelope (the
gains made non-increasing by pooling adjacent violators, i.e. the greatest convex minorant of
each f_i on its window), which the greedy solves exactly; the integers are exact for f whenever
every chosen x_i sits on its envelope, and otherwise within sum_i (f_i - env_i)(x_i)
(`envelope_gap`, measured in tests/engine/test_topups_exact.py and docs/allocation.md).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
from numpy.typing import NDArray

from budget_service.engine.estimates import Estimates
from budget_service.engine.greedy import take_largest
from budget_service.engine.knapsack import log_gamma
from budget_service.engine.params import F64, I64, AllocationError

__all__ = ["SIGNAL_SHARE", "envelope_gap", "group_mse", "group_topup"]

# The table of f is O(width^2) per distinct prompt state: wider windows are refused.
_MAX_WIDTH = 1024

# |delta| / G: the share of a sample's score norm that is signal (the benchmark's DELTA_SHARE).
SIGNAL_SHARE = 0.5


def group_topup(
    estimates: Estimates, drawn: I64, accepted: I64, floor: I64, room: I64, need: int
) -> I64:
    """Additional samples past `floor` (totals), at most `room`, `need` in all, minimising
    sum_i f_i over the envelope of each f_i (see the module docstring)."""
    m = drawn.size
    width = max(16, 2 * math.ceil(need / m) + 2)
    while True:
        if width > _MAX_WIDTH:
            raise AllocationError(
                f"budget: a GRPO top-up weighs at most {_MAX_WIDTH} more samples per prompt; "
                "set max_samples or leave drawn_accepted out",
                field="budget",
                rule="budget_too_large_to_weigh",
            )
        window = np.minimum(room, width)
        gains = _envelope_gains(estimates, drawn, accepted, floor, width)
        taken = take_largest(partial(_columns, gains), floor, window, need)
        if not np.any((taken == window) & (window < room)):
            return taken
        width *= 2


def group_mse(estimates: Estimates, drawn: I64, accepted: I64, totals: I64) -> float:
    """sum_i f_i(totals_i - drawn_i): the expected RLOO error of the step's groups."""
    h = _table(*_posterior(estimates), drawn, accepted, totals - drawn, 1)[:, 0]
    return float(np.sum(np.square(estimates.g_hat) * h))


def envelope_gap(
    estimates: Estimates, drawn: I64, accepted: I64, floor: I64, totals: I64, width: int
) -> float:
    """sum_i (f_i - env_i) at totals: how far the envelope's integers can be from f's optimum."""
    a, b = _posterior(estimates)
    x0 = floor - drawn
    h = _table(a, b, drawn, accepted, x0, width + 1)
    gap = 0.0
    for i in range(drawn.size):
        env = _pooled(-np.diff(h[i]))
        j = int(totals[i] - floor[i])
        gap += float(estimates.g_hat[i] ** 2 * (h[i, j] - (h[i, 0] - env[:j].sum())))
    return gap


def _columns(gains: F64, rows: NDArray[np.intp], start: I64, width: int) -> F64:
    j = np.minimum(start[:, None] + np.arange(width)[None, :], gains.shape[1] - 1)
    out: F64 = gains[rows[:, None], j]
    return out


def _posterior(estimates: Estimates) -> tuple[F64, F64]:
    if estimates.posterior_a is None or estimates.posterior_b is None:
        # no posterior (raw ratios): a confident Beta around p_hat stands in for the plug-in
        p = np.clip(estimates.p_hat, 1e-9, 1 - 1e-9)
        return p * 1e9, (1 - p) * 1e9
    return estimates.posterior_a, estimates.posterior_b


def _envelope_gains(estimates: Estimates, drawn: I64, accepted: I64, floor: I64, width: int) -> F64:
    """G^2 times the envelope's gains f(x) - f(x + 1), x from each prompt's floor, `width` of
    them; rows with equal (a, b, k, d, floor) are computed once."""
    a, b = _posterior(estimates)
    keys = np.column_stack((a, b, accepted, drawn, floor))
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    ua, ub = unique[:, 0].astype(np.float64), unique[:, 1].astype(np.float64)
    ud, uk, uf = (unique[:, c].astype(np.int64) for c in (3, 2, 4))
    h = _table(ua, ub, ud, uk, uf - ud, width + 1)
    env = np.array([_pooled(-np.diff(row)) for row in h]).reshape(len(unique), width)
    out: F64 = env[inverse.reshape(-1)] * np.square(estimates.g_hat)[:, None]
    return out


def _pooled(gains: F64) -> F64:
    """The non-increasing sequence closest to `gains` (pool adjacent violators, equal weights):
    the slopes of the greatest convex minorant of f."""
    sums: list[float] = []
    sizes: list[int] = []
    for g in gains.tolist():
        sums.append(g)
        sizes.append(1)
        while len(sums) > 1 and sums[-2] / sizes[-2] < sums[-1] / sizes[-1]:
            s, c = sums.pop(), sizes.pop()
            sums[-1] += s
            sizes[-1] += c
    return np.repeat(np.array(sums) / np.array(sizes), sizes)


def _table(a: F64, b: F64, drawn: I64, accepted: I64, x0: I64, width: int) -> F64:
    """h[i, j] = f_i(x0_i + j) / G_i^2 for j < width (totals d + x >= 2); each column is one
    pass over (prompt, y) arrays."""
    s2 = SIGNAL_SHARE**2
    out = np.empty((a.size, width))
    a, b = a[:, None], b[:, None]
    d, k = drawn.astype(np.float64)[:, None], accepted.astype(np.float64)[:, None]
    for j in range(width):
        x = (x0 + j).astype(np.float64)[:, None]
        n = d + x
        y = np.arange(int(x.max()) + 1, dtype=np.float64)[None, :]
        live = y <= x
        # beta-binomial pmf of Y: P(0) = prod_{t<x} (b+t)/(a+b+t), then the ratios
        # P(y+1)/P(y) = (x-y)/(y+1) (a+y)/(b+x-y-1); rows past their x are masked
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = np.where(y[:, :-1] < x, (x - y[:, :-1]) / (y[:, :-1] + 1), 0.0)
            ratio = ratio * (a + y[:, :-1]) / np.where(live[:, 1:], b + x - y[:, :-1] - 1, 1.0)
        first = np.exp(_log_rising(b, x) - _log_rising(a + b, x))
        pmf = first * np.cumprod(np.concatenate((np.ones_like(x), ratio), axis=1), axis=1)
        ay, by = a + y, np.where(live, b + x - y, 1.0)
        sy = ay + by
        m1 = ay * by / (sy * (sy + 1))
        m2 = m1 * (ay + 1) * (by + 1) / ((sy + 2) * (sy + 3))
        K = k + y
        yk = K * (n - K) / (n * (n - 1))
        zk = yk / (n - 1)
        term = s2 * (yk * yk - 2 * yk * m1 + m2) + zk * (1 - s2 * m1)
        out[:, j] = np.where(live, pmf * term, 0.0).sum(axis=1)
    return out


def _log_rising(base: F64, count: F64) -> F64:
    """log of base (base + 1) ... (base + count - 1), per entry."""
    out: F64 = log_gamma(base + count) - log_gamma(base)
    return out
