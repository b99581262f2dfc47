"""How much gradient variance each allocation strategy leaves, on synthetic prompts.

Setting (the issue's calibration): 256 prompts, N' = 8 pilot samples each, a budget of 8 samples
per prompt, at least 1 each. True acceptance rates p_i come from four difficulty mixes; true
gradient norms G_i ~ lognormal(0, 0.5) (prompt-to-prompt spread); one sample's norm is G_i times
lognormal noise (log-sd 0.3). As in RAFT and the published code, norms are reported for accepted
samples only, so a prompt with 0/8 tells nothing about its G - unless the trainer also reports
the rejected samples' norms (the optional `rejected_grad_norm*` fields; rows "norms of every
pilot sample"), which the estimator puts on the accepted norms' scale.

Each strategy sees only the pilot (through the same `estimate` / `allocate` calls the service
makes) and is scored with the TRUE p and G on the paper's regularised objective
J(n) = sum_i c_i / n_i, c_i = G_i^2 / (p_i + alpha p_i^(1-beta)) (prompts given 0 samples are left
out of J and counted as "starved" instead: their term is not estimated at all). The oracle is
the continuous optimum of J with the true p and G under the same bounds; "bound: any pilot-only
allocation" is a floor for every allocator that sees only the pilot (pilot_information_bound).

Monte Carlo check: the realised variance of the Lemma-1 estimator
sum_i 1/(n_i p_i) sum_{accepted j} g_ij, for gradients g = mu_i + noise whose second moment is
G_i^2 / (1 + alpha / p_i^beta), |mu_i| = 0.3 of its root: its variance is
sum_i (c_i - |mu_i|^2) / n_i, the objective the allocation targets up to the mean term. Starved
prompts add no variance: their term is missing from the estimate altogether (bias).

GRPO: the RLOO (leave-one-out baseline) estimator of each prompt's policy gradient
E[r s] = p (1 - p) delta_i, scores s with mean (1 - p) delta_i if correct, -p delta_i if wrong,
|delta_i| = 0.5 G_i, E|s|^2 = G_i^2 (norms from every pilot sample: GRPO trains on all; one row
with the accepted samples' norms only, all that the v1 contract carries). Its mean squared error
is computed exactly (a sum over the binomial count of correct samples) and checked by an
explicit Monte Carlo on one batch.

Top-ups (`topup_study`, u-shaped mix): every protocol at the same TOTAL of 16 samples per prompt
per step, the pilot counted (and trained on): uniform; today's protocol (pilot 8, then 8 per
prompt by gvm, the service not told what was drawn); gvm and knapsack with the pilot passed as
`drawn`, in one shot (8 + 8), two rounds (4 + 6 + 6) and three (2 + 4 + 5 + 5), every round
reported before the next is asked for; gvm-paper on the same schedules as repeated one-shot
rounds (it has no `drawn`); the one-shot floor (pilot_information_bound, pilot counted) and the
oracle. RAFT rows are scored on J with the true p and G; GRPO rows on the RLOO MSE given the
step's realised groups (rloo_mse_given), including gvm's group-aware top-up (`drawn_accepted`).
Every sample index of a prompt is drawn once per batch and shared by all rows.

Run: python benchmarks/variance.py [--trials 200]   (about 3 minutes on 2 cores)
Writes benchmarks/results/variance.json and variance.png.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _report import RESULTS, machine, write_json
from numpy.typing import NDArray

from budget_service.engine import (
    Algo,
    AllocationParams,
    Estimates,
    PromptStatistics,
    RunTotals,
    Strategy,
    allocate,
    continuous_allocation,
    estimate,
    objective,
    posterior_expected_cost,
    posterior_mean,
    regularised_cost,
)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

M, PILOT, PER_PROMPT = 256, 8, 8
BUDGET = M * PER_PROMPT
ALPHA, BETA = 1e-3, 2.0
G_SPREAD, NORM_NOISE = 0.5, 0.3
MEAN_SHARE = 0.3  # RAFT model: |mu_i| / sqrt(E|g|^2)
DELTA_SHARE = 0.5  # GRPO model: |delta_i| / G_i
DIM = 4
MC_TRIALS, MC_REPS = 20, 400

MIXES = {  # Beta(a, b) of the true acceptance rates
    "uniform": (1.0, 1.0),
    "u-shaped": (0.3, 0.3),
    "easy": (4.0, 1.5),
    "hard": (1.5, 4.0),
}


@dataclass
class Batch:
    p: F64
    g: F64
    stats: PromptStatistics  # norms of accepted samples (RAFT, the published code)
    totals: RunTotals
    stats_all: PromptStatistics  # and of the rejected ones (rejected_grad_norm_*: GRPO trains
    totals_all: RunTotals  # on all of them; a RAFT trainer may report them at a pass's cost)


def draw_batch(rng: np.random.Generator, mix: tuple[float, float]) -> Batch:
    """True p and G, and the pilot statistics a trainer would post."""
    p = rng.beta(*mix, M)
    g = rng.lognormal(0.0, G_SPREAD, M)
    correct = rng.random((M, PILOT)) < p[:, None]
    k = correct.sum(axis=1).astype(np.float64)
    norms = g[:, None] * rng.lognormal(-(NORM_NOISE**2) / 2, NORM_NOISE, (M, PILOT))

    def post(with_rejected: bool) -> tuple[PromptStatistics, RunTotals]:
        """The accepted samples' norms, and the rejected samples' in their own fields."""
        rejected = ~correct if with_rejected else np.zeros_like(correct)
        sums = [(norms * kind).sum(axis=1) for kind in (correct, rejected)]
        counts = [kind.sum(axis=1).astype(np.float64) for kind in (correct, rejected)]
        stats = PromptStatistics(
            samples=np.full(M, float(PILOT)),
            accepted=k,
            grad_norm_sum=sums[0],
            grad_norm_count=counts[0],
            last_step=np.zeros(M, np.int64),
            rejected_grad_norm_sum=sums[1],
            rejected_grad_norm_count=counts[1],
        )
        totals = RunTotals(
            samples=float(M * PILOT),
            accepted=float(k.sum()),
            grad_norm_sum=float(sums[0].sum()),
            grad_norm_count=float(counts[0].sum()),
            rejected_grad_norm_sum=float(sums[1].sum()),
            rejected_grad_norm_count=float(counts[1].sum()),
        )
        return stats, totals

    stats, totals = post(with_rejected=False)
    stats_all, totals_all = post(with_rejected=True)
    return Batch(p, g, stats, totals, stats_all, totals_all)


def run(batch: Batch, params: AllocationParams, *, all_norms: bool = False) -> I64:
    """What the service does: estimates from the statistics, then the allocation."""
    stats, totals = (
        (batch.stats_all, batch.totals_all) if all_norms else (batch.stats, batch.totals)
    )
    est = estimate(stats, totals, 0, params)
    return allocate(est, BUDGET, params).samples


# --- RAFT: the strategies -------------------------------------------------------------------------

DEFAULT = AllocationParams()
# Continuous allocations (bounds, not strategies): scored on J only.
CONTINUOUS = ("bound: any pilot-only allocation", "oracle (continuous, true p and G)")


def plug_in_posterior_mean(batch: Batch) -> I64:
    """Ablation: the same posterior, but its mean plugged into c (no expectation)."""
    est = estimate(batch.stats, batch.totals, 0, DEFAULT)
    return allocate(
        Estimates.from_rates(est.p_hat, est.g_hat, est.explore), BUDGET, DEFAULT
    ).samples


def bayes_bound(mix: tuple[float, float], *, true_g: bool) -> Callable[[Batch], I64]:
    """Information floor: posterior expected costs under the TRUE population prior (unknown to
    any real allocator), with G as estimated - or the true G."""

    def allocate_bayes(batch: Batch) -> I64:
        est = estimate(batch.stats, batch.totals, 0, DEFAULT)
        k = batch.stats.accepted
        h = posterior_expected_cost(mix[0] + k, mix[1] + PILOT - k, ALPHA, BETA)
        g2 = np.square(batch.g if true_g else est.g_hat)
        costs = Estimates(est.p_hat, est.g_hat, h * g2, est.explore, est.cost_key)
        return allocate(costs, BUDGET, DEFAULT).samples

    return allocate_bayes


def with_true_g(batch: Batch) -> I64:
    """Diagnostic: gvm's posterior over p (fitted prior), with the true G in place of g_hat."""
    est = estimate(batch.stats, batch.totals, 0, DEFAULT)
    assert est.expected_cost is not None
    cost = est.expected_cost / np.square(est.g_hat) * np.square(batch.g)
    return allocate(
        Estimates(est.p_hat, est.g_hat, cost, est.explore, est.cost_key), BUDGET, DEFAULT
    ).samples


def with_g_spread(batch: Batch) -> I64:
    """Ablation: E[G^2] instead of g_hat^2 - the shrunk norm's posterior variance added, with
    the TRUE between-prompt variance of G (an upper bound on what estimating it could give)."""
    est = estimate(batch.stats, batch.totals, 0, DEFAULT)
    assert est.expected_cost is not None
    tau2 = (math.exp(G_SPREAD**2) - 1.0) * math.exp(G_SPREAD**2)  # Var G, lognormal(0, s)
    s = DEFAULT.grad_prior_strength
    g2 = np.square(est.g_hat) + tau2 * s / (batch.stats.grad_norm_count + s)
    cost = est.expected_cost / np.square(est.g_hat) * g2
    return allocate(
        Estimates(est.p_hat, est.g_hat, cost, est.explore, est.cost_key), BUDGET, DEFAULT
    ).samples


def pilot_information_bound(
    blind: NDArray[np.bool_], c: F64, budget: int = BUDGET, floor: float = 1.0
) -> F64:
    """A floor for ANY allocator that sees only the pilot: the continuous optimum of J with the
    true cost of every prompt that had an accepted pilot sample, and for the prompts with 0/N'
    (`blind`: the same data for all of them, no norm reported) one shared count, sized with
    their true total cost. Expected J is lowest with equal counts for exchangeable prompts (J is
    convex), and knowing the rest exactly only helps, so no pilot-only allocation beats this on
    average. `budget` and `floor`: the step's total and each prompt's least count (the pilot,
    when it is counted).
    """
    m0 = int(blind.sum())
    top = float(budget)
    if m0 == 0:
        return continuous_allocation(c, top, np.full(M, floor), np.full(M, top))
    # the 0/N' prompts as one block: n0 each, J = sum c / n0 = (m0 sum c) / (m0 n0)
    cost = np.append(c[~blind], m0 * c[blind].sum())
    lower = np.append(np.full(M - m0, floor), m0 * floor)
    x = continuous_allocation(cost, top, lower, np.full(cost.size, top))
    n = np.empty(M)
    n[~blind] = x[:-1]
    n[blind] = x[-1] / m0
    return n


def strategies(mix: tuple[float, float]) -> dict[str, Callable[[Batch], I64]]:
    return {
        "uniform": lambda b: run(b, AllocationParams(strategy="uniform")),
        "gvm-paper": lambda b: run(b, AllocationParams(strategy="gvm-paper")),
        "gvm": lambda b: run(b, DEFAULT),
        "gvm, fixed prior (strength 2)": lambda b: run(b, AllocationParams(fit_prior=False)),
        "gvm, raw ratios (prior_strength 0)": lambda b: run(b, AllocationParams(prior_strength=0)),
        "gvm, norms of every pilot sample": lambda b: run(b, DEFAULT, all_norms=True),
        "ablation: posterior mean plugged in": plug_in_posterior_mean,
        "ablation: E[G^2] with the true spread of G": with_g_spread,
        "diagnostic: gvm with the true G": with_true_g,
        "bound: Bayes with the true prior": bayes_bound(mix, true_g=False),
        "bound: Bayes with the true prior and G": bayes_bound(mix, true_g=True),
    }


def raft_variance_exact(n: I64, p: F64, c: F64) -> float:
    """E|estimate - E estimate|^2 of the Lemma-1 estimator in our gradient model: served
    prompts only (a starved prompt's term is not estimated at all: bias, not variance)."""
    mu2 = MEAN_SHARE**2 * c * p  # |mu_i|^2 = share^2 E|g|^2, E|g|^2 = c p
    served = n > 0
    return float(np.sum((c[served] - mu2[served]) / n[served]))


def raft_variance_monte_carlo(rng: np.random.Generator, n: I64, p: F64, c: F64) -> float:
    """The same, by simulation: accepted counts, then the sum of that many gradients."""
    second = c * p  # E|g|^2
    mu = rng.normal(size=(M, DIM))
    mu *= (MEAN_SHARE * np.sqrt(second) / np.linalg.norm(mu, axis=1))[:, None]
    sigma = np.sqrt(second * (1 - MEAN_SHARE**2) / DIM)
    accepted = rng.binomial(np.broadcast_to(n, (MC_REPS, M)), p)
    sums = accepted[..., None] * mu + np.sqrt(accepted)[..., None] * sigma[:, None] * rng.normal(
        size=(MC_REPS, M, DIM)
    )
    served = n > 0
    weight = np.where(served, 1.0 / (np.maximum(n, 1) * p), 0.0)
    error = (weight[None, :, None] * sums - (mu * served[:, None])[None]).sum(axis=1)
    return float(np.mean(np.sum(error**2, axis=1)))


def raft_study(mix_name: str, trials: int, seed: int) -> dict[str, Any]:
    mix = MIXES[mix_name]
    rng = np.random.default_rng(seed)
    rows = strategies(mix)
    per: dict[str, dict[str, list[float]]] = {
        name: {"to_uniform": [], "to_oracle": [], "starved": [], "var": [], "var_mc": []}
        for name in [*rows, *CONTINUOUS]
    }
    integer_gap: list[float] = []
    for trial in range(trials):
        batch = draw_batch(rng, mix)
        c = regularised_cost(batch.p, batch.g, ALPHA, BETA)
        ones, top = np.ones(M), np.full(M, float(BUDGET))
        oracle = continuous_allocation(c, float(BUDGET), ones, top)
        j_oracle = objective(c, oracle)
        allocations = {name: fn(batch) for name, fn in rows.items()}
        j_uniform = objective(c, allocations["uniform"])
        var_uniform = raft_variance_exact(allocations["uniform"], batch.p, c)
        mc = trial < MC_TRIALS
        mc_uniform = (
            raft_variance_monte_carlo(rng, allocations["uniform"], batch.p, c) if mc else 0.0
        )
        bound = pilot_information_bound(batch.stats.accepted == 0, c)
        continuous = zip(CONTINUOUS, (bound, oracle), strict=True)
        for name, n in [*allocations.items(), *continuous]:
            j = objective(c, n)
            per[name]["to_uniform"].append(j / j_uniform)
            per[name]["to_oracle"].append(j / j_oracle)
            per[name]["starved"].append(float(np.sum((n == 0) & (batch.p > 0))))
            if name in CONTINUOUS:
                continue
            per[name]["var"].append(raft_variance_exact(n, batch.p, c) / var_uniform)
            if mc:
                per[name]["var_mc"].append(
                    raft_variance_monte_carlo(rng, n, batch.p, c) / mc_uniform
                )
        # gvm's integers against the continuous optimum of the same objective on its estimates
        est = estimate(batch.stats, batch.totals, 0, DEFAULT)
        assert est.expected_cost is not None
        floor = np.where(est.explore_mask(), max(DEFAULT.explore_samples, 1), 1).astype(float)
        relaxed = continuous_allocation(est.expected_cost, float(BUDGET), floor, top)
        integer_gap.append(
            objective(est.expected_cost, allocations["gvm"]) / objective(est.expected_cost, relaxed)
            - 1.0
        )
    summary = {name: summarise(values) for name, values in per.items()}
    return {
        "mix": {"name": mix_name, "beta": list(mix)},
        "strategies": summary,
        "gvm_integer_gap": {"mean": float(np.mean(integer_gap)), "max": float(np.max(integer_gap))},
    }


def summarise(values: dict[str, list[float]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, xs in values.items():
        if not xs:
            out[key] = None
            continue
        arr = np.array(xs)
        out[key] = float(arr.mean())
        if key == "to_oracle":
            out["to_oracle_p10"], out["to_oracle_p90"] = (
                float(v) for v in np.percentile(arr, [10, 90])
            )
        if key == "var_mc":
            out["var_mc_se"] = (
                float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else None
            )
    return out


def sweep(mix_name: str, trials: int, seed: int) -> dict[str, float]:
    """Defaults: prior strength (fixed vs fitted), norm shrinkage, explore floor, min_samples;
    J / oracle on the same batches."""
    variants = {
        "fitted prior (default)": DEFAULT,
        **{
            f"fixed prior, strength {s:g}": AllocationParams(fit_prior=False, prior_strength=s)
            for s in (0.5, 1.0, 2.0, 4.0, 8.0)
        },
        **{
            f"norm shrinkage, grad_prior_strength {s:g}": AllocationParams(grad_prior_strength=s)
            for s in (0.0, 0.25, 1.0, 2.0)
        },
        **{f"explore_samples {e}": AllocationParams(explore_samples=e) for e in (0, 1, 4)},
        **{
            f"raw ratios, explore_samples {e}": AllocationParams(
                prior_strength=0, explore_samples=e
            )
            for e in (0, 1, 2, 4, 8)
        },
        "min_samples 2": AllocationParams(min_samples=2),
    }
    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(trials):
        batch = draw_batch(rng, MIXES[mix_name])
        c = regularised_cost(batch.p, batch.g, ALPHA, BETA)
        j_oracle = objective(
            c, continuous_allocation(c, float(BUDGET), np.ones(M), np.full(M, float(BUDGET)))
        )
        for name, params in variants.items():
            scores[name].append(objective(c, run(batch, params)) / j_oracle)
    return {name: float(np.mean(v)) for name, v in scores.items()}


# --- GRPO -----------------------------------------------------------------------------------------


def rloo_mse(n: I64, p: F64, g: F64) -> float:
    """Exact E|RLOO - grad|^2 summed over prompts, grad_i = p (1 - p) delta_i.

    With K correct out of n, RLOO = (1/(n-1)) sum_j (r_j - rbar) s_j has mean
    K (n - K) / (n (n - 1)) delta and noise variance sigma^2 d K (n - K) / (n (n - 1)^2); n < 2
    gives no estimate (its error is the whole gradient).
    """
    delta2 = (DELTA_SHARE * g) ** 2
    noise2 = g**2 - p * (1 - p) * delta2  # sigma^2 d: E|s|^2 = G^2
    truth = p * (1 - p)
    out = truth**2 * delta2
    for size in np.unique(n[n >= 2]):
        idx = np.flatnonzero(n == size)
        k = np.arange(size + 1)
        comb = np.array([math.comb(int(size), int(j)) for j in k], dtype=np.float64)
        pmf = comb * p[idx, None] ** k * (1 - p[idx, None]) ** (size - k)
        y = k * (size - k) / (size * (size - 1))
        var_y = (pmf * y**2).sum(axis=1) - truth[idx] ** 2
        out[idx] = delta2[idx] * var_y + noise2[idx] * truth[idx] / (size - 1)
    return float(out.sum())


def rloo_mse_monte_carlo(rng: np.random.Generator, n: I64, p: F64, g: F64, reps: int) -> float:
    """The same by explicit simulation: rewards, score vectors, the RLOO sum."""
    delta = rng.normal(size=(M, DIM))
    delta *= (DELTA_SHARE * g / np.linalg.norm(delta, axis=1))[:, None]
    sigma = np.sqrt((g**2 - p * (1 - p) * (DELTA_SHARE * g) ** 2) / DIM)
    truth = (p * (1 - p))[:, None] * delta
    width = int(n.max())
    used = np.arange(width)[None, :] < n[:, None]
    total = 0.0
    for _ in range(reps):
        r = (rng.random((M, width)) < p[:, None]) & used
        mean = np.where(r[..., None], (1 - p)[:, None, None], -p[:, None, None]) * delta[:, None]
        s = mean + sigma[:, None, None] * rng.normal(size=(M, width, DIM))
        rbar = r.sum(axis=1, keepdims=True) / np.maximum(n, 1)[:, None]
        est = (((r - rbar) * used)[..., None] * s).sum(axis=1) / np.maximum(n - 1, 1)[:, None]
        est[n < 2] = 0.0
        total += float(np.sum((est - truth) ** 2))
    return total / reps


def grpo_study(mix_name: str, trials: int, seed: int) -> dict[str, Any]:
    mix = MIXES[mix_name]
    rng = np.random.default_rng(seed)
    check_rng = np.random.default_rng(seed + 1000)  # the check draws apart: rows can be added
    raft2 = AllocationParams(min_samples=2)
    grpo = AllocationParams(algo="grpo")

    def raft_times_mixed(batch: Batch) -> I64:
        est = estimate(batch.stats_all, batch.totals_all, 0, raft2)
        k = batch.stats.accepted
        a = est.prior_mean * est.prior_strength + k
        b = (1 - est.prior_mean) * est.prior_strength + PILOT - k
        h = posterior_mean(
            a,
            b,
            lambda q: (
                regularised_cost(q, 1.0, ALPHA, BETA) * (1 - q**PER_PROMPT - (1 - q) ** PER_PROMPT)
            ),
        )
        costs = Estimates(est.p_hat, est.g_hat, h * est.g_hat**2, est.explore, est.cost_key)
        return allocate(costs, BUDGET, raft2).samples

    rows: dict[str, Callable[[Batch], I64]] = {
        "uniform": lambda b: run(b, AllocationParams(strategy="uniform", algo="grpo")),
        "gvm, RAFT cost, min 2": lambda b: run(b, raft2, all_norms=True),
        "gvm, RAFT cost x P(mixed group)": raft_times_mixed,
        "gvm, algo=grpo (p(1-p) G^2)": lambda b: run(b, grpo, all_norms=True),
        # what the v1 contract carries: norms of accepted samples only
        "gvm, algo=grpo, accepted samples' norms only": lambda b: run(b, grpo),
        "bound: algo=grpo with true p and G": lambda b: (
            allocate(Estimates.from_rates(b.p, b.g), BUDGET, grpo).samples
        ),
    }
    ratios: dict[str, list[float]] = {name: [] for name in rows}
    mc_check: dict[str, dict[str, float]] = {}
    for trial in range(trials):
        batch = draw_batch(rng, mix)
        allocations = {name: fn(batch) for name, fn in rows.items()}
        base = rloo_mse(allocations["uniform"], batch.p, batch.g)
        for name, n in allocations.items():
            ratios[name].append(rloo_mse(n, batch.p, batch.g) / base)
        if trial == 0:  # the exact formula against an explicit simulation, on one batch
            for name, n in allocations.items():
                mc_check[name] = {
                    "exact": rloo_mse(n, batch.p, batch.g),
                    "monte_carlo": rloo_mse_monte_carlo(check_rng, n, batch.p, batch.g, reps=300),
                }
    return {
        "mix": {"name": mix_name, "beta": list(mix)},
        "mse_to_uniform": {name: float(np.mean(v)) for name, v in ratios.items()},
        "exact_vs_monte_carlo_first_batch": mc_check,
    }


# --- top-ups: every protocol at the same total per step, the pilot counted ------------------------

TOTAL_PER_PROMPT = 16  # the step's samples per prompt on average, every round's (the pilot's too)
TOPUP_MIX = "u-shaped"
TODAY = "today: pilot 8, then gvm without drawn"
SCHEDULES = {  # samples per prompt: the pilot (the same for every prompt), then each top-up
    "one-shot (8 + 8)": (8, 8),
    "two rounds (4 + 6 + 6)": (4, 6, 6),
    "three rounds (2 + 4 + 5 + 5)": (2, 4, 5, 5),
}
CHUNK = 256  # pre-drawn samples per prompt, extended on demand


@dataclass(frozen=True)
class Protocol:
    """How a step spends its samples: a pilot, then allocations of the rest, round by round."""

    params: AllocationParams
    rounds: tuple[int, ...]  # per prompt: the pilot, then each round's budget / M
    drawn: bool = True  # each round tells the service what was drawn (today's protocol: no)
    accepted: bool = False  # and what was accepted (`drawn_accepted`: GRPO's group state)
    all_norms: bool = False  # the rejected samples' norms are reported too


class Outcomes:
    """Every sample a protocol could draw in one trial, drawn ahead: the j-th sample of prompt i
    is the same whichever protocol draws it (common random numbers across the rows)."""

    def __init__(self, rng: np.random.Generator, p: F64, g: F64) -> None:
        self.rng, self.p, self.g = rng, p, g
        self.correct = np.zeros((M, 0), bool)
        self.norms = np.zeros((M, 0))
        self.sums: list[F64] = []

    def draw(self, start: I64, count: I64) -> tuple[I64, F64, F64]:
        """Accepted count, accepted norms' sum, rejected norms' sum of each prompt's samples
        start_i .. start_i + count_i - 1."""
        end = start + count
        while self.correct.shape[1] < int(end.max()):  # whole chunks, in order: reproducible
            noise = self.rng.lognormal(-(NORM_NOISE**2) / 2, NORM_NOISE, (M, CHUNK))
            self.correct = np.hstack([self.correct, self.rng.random((M, CHUNK)) < self.p[:, None]])
            self.norms = np.hstack([self.norms, self.g[:, None] * noise])
            self.sums = []
        if not self.sums:
            parts = (self.correct, self.norms * self.correct, self.norms * ~self.correct)
            self.sums = [
                np.pad(np.cumsum(a, axis=1, dtype=np.float64), ((0, 0), (1, 0))) for a in parts
            ]
        k, acc, rej = (
            np.take_along_axis(s, end[:, None], 1)[:, 0]
            - np.take_along_axis(s, start[:, None], 1)[:, 0]
            for s in self.sums
        )
        return k.round().astype(np.int64), acc, rej


def play(protocol: Protocol, outcomes: Outcomes) -> tuple[I64, I64]:
    """The step's totals and accepted counts: the pilot, then each round allocated from the
    statistics reported so far, through `estimate`/`allocate` as the service does."""
    drawn, accepted = np.zeros(M, np.int64), np.zeros(M, np.int64)
    norm_sum, rejected_sum = np.zeros(M), np.zeros(M)
    for r, per_prompt in enumerate(protocol.rounds):
        x = np.full(M, per_prompt, np.int64)
        if r > 0:
            rejected = drawn - accepted if protocol.all_norms else np.zeros(M, np.int64)
            counts = [a.astype(np.float64) for a in (drawn, accepted, rejected)]
            sums = (norm_sum, rejected_sum if protocol.all_norms else np.zeros(M))
            stats = PromptStatistics(
                counts[0], counts[1], sums[0], counts[1], np.zeros(M, np.int64), sums[1], counts[2]
            )
            totals = RunTotals(
                *(float(v.sum()) for v in (counts[0], counts[1], sums[0], counts[1])),
                rejected_grad_norm_sum=float(sums[1].sum()),
                rejected_grad_norm_count=float(counts[2].sum()),
            )
            est = estimate(stats, totals, 0, protocol.params)
            x = allocate(
                est,
                per_prompt * M,
                protocol.params,
                drawn=drawn if protocol.drawn else None,
                drawn_accepted=accepted if protocol.accepted else None,
            ).samples
        k, acc, rej = outcomes.draw(drawn, x)
        drawn, accepted = drawn + x, accepted + k
        norm_sum, rejected_sum = norm_sum + acc, rejected_sum + rej
    return drawn, accepted


def topup_protocols(algo: Algo) -> dict[str, Protocol]:
    """uniform; today's protocol; gvm, knapsack (with `drawn`) and gvm-paper (repeated one-shot
    rounds: it has no top-ups) on each schedule; under GRPO the group-aware top-up too."""
    grpo = algo == "grpo"

    def params(strategy: Strategy) -> AllocationParams:
        return AllocationParams(strategy=strategy, algo=algo)

    total = (TOTAL_PER_PROMPT,)
    rows = {
        f"uniform, {TOTAL_PER_PROMPT} per prompt": Protocol(params("uniform"), total),
        TODAY: Protocol(params("gvm"), (8, 8), drawn=False, all_norms=grpo),
    }
    for label, rounds in SCHEDULES.items():
        rows[f"gvm, {label}"] = Protocol(params("gvm"), rounds, all_norms=grpo)
        if grpo:
            rows[f"gvm, group-aware, {label}"] = Protocol(
                params("gvm"), rounds, accepted=True, all_norms=True
            )
        else:
            rows[f"gvm, norms of every sample, {label}"] = Protocol(
                params("gvm"), rounds, all_norms=True
            )
        rows[f"knapsack, {label}"] = Protocol(params("knapsack"), rounds, all_norms=grpo)
        rows[f"gvm-paper, {label}, no drawn"] = Protocol(params("gvm-paper"), rounds, drawn=False)
    return rows


def rloo_mse_given(n: I64, k: I64, p: F64, g: F64) -> float:
    """E|RLOO - grad|^2 given the step's groups (k_i correct of n_i): the realised group's bias
    delta^2 (y_K - p (1 - p))^2 plus its noise sigma^2 z_K (see rloo_mse). Its mean over draws
    is rloo_mse for fixed n; unlike rloo_mse, it scores allocations that depend on outcomes."""
    delta2 = (DELTA_SHARE * g) ** 2
    truth = p * (1 - p)
    noise2 = g**2 - truth * delta2
    pairs = np.maximum(n * (n - 1), 1)
    y, z = k * (n - k) / pairs, k * (n - k) / (pairs * np.maximum(n - 1, 1))
    out = np.where(n >= 2, delta2 * (y - truth) ** 2 + noise2 * z, truth**2 * delta2)
    return float(out.sum())


def topup_study(trials: int, seed: int) -> dict[str, Any]:
    """RAFT's J and GRPO's RLOO MSE of every protocol, true p and G, same batches, same draws."""
    mix = MIXES[TOPUP_MIX]
    rng = np.random.default_rng(seed)
    total = TOTAL_PER_PROMPT * M
    raft_rows, grpo_rows = topup_protocols("raft"), topup_protocols("grpo")
    one_shot_floor = f"bound: any one-shot allocation after a pilot of {PILOT} (counted)"
    oracle, grpo_oracle = "oracle (continuous, true p and G)", "oracle: algo=grpo, true p and G"
    raft: dict[str, list[float]] = {name: [] for name in [*raft_rows, one_shot_floor, oracle]}
    grpo: dict[str, list[float]] = {name: [] for name in [*grpo_rows, grpo_oracle]}
    for _ in range(trials):
        p, g = rng.beta(*mix, M), rng.lognormal(0.0, G_SPREAD, M)
        outcomes = Outcomes(np.random.default_rng(rng.integers(2**63)), p, g)
        c = regularised_cost(p, g, ALPHA, BETA)
        for name, protocol in raft_rows.items():
            raft[name].append(objective(c, play(protocol, outcomes)[0]))
        blind = outcomes.draw(np.zeros(M, np.int64), np.full(M, PILOT))[0] == 0
        raft[one_shot_floor].append(objective(c, pilot_information_bound(blind, c, total, PILOT)))
        top = np.full(M, float(total))
        raft[oracle].append(objective(c, continuous_allocation(c, float(total), np.ones(M), top)))
        for name, protocol in grpo_rows.items():
            grpo[name].append(rloo_mse_given(*play(protocol, outcomes), p, g))
        n = allocate(Estimates.from_rates(p, g), total, AllocationParams(algo="grpo")).samples
        k = outcomes.draw(np.zeros(M, np.int64), n)[0]
        grpo[grpo_oracle].append(rloo_mse_given(n, k, p, g))
    return {
        "mix": {"name": TOPUP_MIX, "beta": list(mix)},
        "samples_per_prompt": TOTAL_PER_PROMPT,
        "schedules": {label: list(rounds) for label, rounds in SCHEDULES.items()},
        "raft": side_by_side(raft, TODAY, oracle),
        "grpo": side_by_side(grpo, TODAY, grpo_oracle),
    }


def side_by_side(scores: dict[str, list[float]], today: str, oracle: str) -> dict[str, Any]:
    """Per row: the mean score and its ratios to today's protocol and to the oracle (means of
    per-batch ratios), and which top-up protocol is best."""
    base, best = np.array(scores[today]), np.array(scores[oracle])
    rows = {
        name: {
            "mean": float(np.mean(v)),
            "to_today": float(np.mean(np.array(v) / base)),
            "to_oracle": float(np.mean(np.array(v) / best)),
        }
        for name, v in scores.items()
    }
    topups = [name for name in rows if name.startswith(("gvm,", "knapsack,"))]
    return {"rows": rows, "best_topup": min(topups, key=lambda name: rows[name]["to_oracle"])}


# --- report ---------------------------------------------------------------------------------------


def plot(raft: dict[str, Any], grpo: dict[str, Any], topups: dict[str, Any], path: str) -> None:
    fig, (left, right, last) = plt.subplots(
        1, 3, figsize=(22, 6), gridspec_kw={"width_ratios": [3, 1.3, 2]}
    )
    names = [
        "gvm-paper",
        "gvm",
        "gvm, norms of every pilot sample",
        "ablation: posterior mean plugged in",
        "bound: Bayes with the true prior",
        "bound: Bayes with the true prior and G",
        CONTINUOUS[0],
        "oracle (continuous, true p and G)",
    ]
    mixes = list(raft)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [raft[mix]["strategies"][name]["to_uniform"] for mix in mixes]
        xs = np.arange(len(mixes)) + (i - len(names) / 2 + 0.5) * width
        label = (
            "gvm-paper (J over served prompts; starved on the bar)" if name == "gvm-paper" else name
        )
        bars = left.bar(xs, values, width, label=label)
        if name == "gvm-paper":
            for x, mix, bar in zip(xs, mixes, bars, strict=True):
                starved = raft[mix]["strategies"][name]["starved"]
                left.text(
                    x,
                    bar.get_height(),
                    f"{starved:.0f}\nstarved",
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
    left.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    left.set_xticks(np.arange(len(mixes)), mixes)
    left.set_ylabel("regularised objective J, true p and G (uniform = 1)")
    left.set_ylim(0, 1.5)  # room for the legend above the bars
    left.set_title(f"RAFT: {M} prompts, {PILOT} pilot samples, {PER_PROMPT} per prompt")
    left.legend(fontsize=7, loc="upper left")
    gmixes = list(grpo)
    gnames = list(next(iter(grpo.values()))["mse_to_uniform"])
    gwidth = 0.8 / len(gnames)
    for i, name in enumerate(gnames):
        xs = np.arange(len(gmixes)) + (i - len(gnames) / 2 + 0.5) * gwidth
        right.bar(xs, [grpo[mix]["mse_to_uniform"][name] for mix in gmixes], gwidth, label=name)
    right.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    right.set_xticks(np.arange(len(gmixes)), gmixes)
    right.set_ylabel("RLOO gradient MSE (uniform = 1)")
    right.set_title("GRPO")
    right.set_ylim(0, 1.45)
    right.legend(fontsize=7, loc="upper right")
    names = list(dict.fromkeys([*topups["raft"]["rows"], *topups["grpo"]["rows"]]))
    ys = np.arange(len(names))
    for offset, side in ((-0.2, "raft"), (0.2, "grpo")):
        rows = topups[side]["rows"]
        values = [rows[name]["to_today"] if name in rows else np.nan for name in names]
        last.barh(
            ys + offset,
            values,
            0.4,
            label=f"{side.upper()} ({'J' if side == 'raft' else 'RLOO MSE'})",
        )
    last.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    last.axvline(0.9, color="gray", linewidth=0.8, linestyle=":")
    last.set_yticks(ys, names, fontsize=7)
    last.invert_yaxis()
    last.set_xlim(0, 2)
    last.set_xlabel("today's protocol = 1 (the pilot counted, same total)")
    last.set_title(f"Top-ups, {TOPUP_MIX}, {TOTAL_PER_PROMPT} per prompt")
    last.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="batches per difficulty mix")
    parser.add_argument("--sweep-trials", type=int, default=100)
    parser.add_argument("--grpo-trials", type=int, default=60)
    parser.add_argument("--topup-trials", type=int, default=100, help="batches of the top-ups")
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args()
    started = time.perf_counter()
    load_before = machine()["loadavg"]

    raft = {name: raft_study(name, args.trials, args.seed + i) for i, name in enumerate(MIXES)}
    sweeps = {
        name: sweep(name, args.sweep_trials, args.seed + 10 + i)
        for i, name in enumerate(("u-shaped", "uniform"))
    }
    grpo = {
        name: grpo_study(name, args.grpo_trials, args.seed + 20 + i)
        for i, name in enumerate(("u-shaped", "uniform"))
    }
    topups = topup_study(args.topup_trials, args.seed + 30)

    print(f"RAFT: J with the true p and G, mean over {args.trials} batches per mix")
    header = f"{'strategy':42s}" + "".join(f"{mix:>22s}" for mix in raft)
    print(header)
    print(f"{'':42s}" + "".join(f"{'/unif /oracle starved':>22s}" for _ in raft))
    for name in raft["u-shaped"]["strategies"]:
        cells = []
        for mix in raft:
            s = raft[mix]["strategies"][name]
            cells.append(f"{s['to_uniform']:6.3f} {s['to_oracle']:6.3f} {s['starved']:6.1f}")
        print(f"{name:42s}" + "".join(f"{c:>22s}" for c in cells))
    print(
        f"\nMonte Carlo variance of the Lemma-1 estimator / uniform (first {MC_TRIALS} batches;"
        " exact mean over all in brackets)"
    )
    for name in raft["u-shaped"]["strategies"]:
        if name in CONTINUOUS:
            continue
        cells = []
        for mix in raft:
            row = raft[mix]["strategies"][name]
            cells.append(f"{row['var_mc']:.3f} ({row['var']:.3f})")
        print(f"{name:42s}" + "".join(f"{c:>22s}" for c in cells))
    print("\ngvm integer objective vs the continuous optimum on the same estimates:")
    for mix in raft:
        gap = raft[mix]["gvm_integer_gap"]
        print(f"  {mix:10s} mean {100 * gap['mean']:.3f}%  max {100 * gap['max']:.3f}%")
    print("\nDefaults (J / oracle, mean):")
    for name in sweeps["u-shaped"]:
        u_shaped, flat = sweeps["u-shaped"][name], sweeps["uniform"][name]
        print(f"  {name:44s} u-shaped {u_shaped:.3f}   uniform {flat:.3f}")
    print("\nGRPO: RLOO gradient MSE / uniform")
    for name in grpo["u-shaped"]["mse_to_uniform"]:
        print(
            f"  {name:40s}"
            + "".join(f"{mix} {grpo[mix]['mse_to_uniform'][name]:.3f}   " for mix in grpo)
        )

    for side, score in (("RAFT", "J"), ("GRPO", "RLOO MSE")):
        print(
            f"\nTop-ups ({side}, {TOPUP_MIX}, {TOTAL_PER_PROMPT} per prompt in all, the pilot "
            f"counted): {score} / today's protocol, / oracle"
        )
        for name, row in topups[side.lower()]["rows"].items():
            print(f"  {name:62s} {row['to_today']:.3f}  {row['to_oracle']:.3f}")

    u = raft["u-shaped"]["strategies"]["gvm"]
    best = topups["raft"]["rows"][topups["raft"]["best_topup"]]
    targets = {
        "gvm_to_uniform_u_shaped": {
            "value": u["to_uniform"],
            "target": 0.8,
            "met": u["to_uniform"] <= 0.8,
        },
        "gvm_to_oracle_u_shaped": {
            "value": u["to_oracle"],
            "target": 1.15,
            "met": u["to_oracle"] <= 1.15,
        },
        "gvm_integer_gap_u_shaped_max": {
            "value": raft["u-shaped"]["gvm_integer_gap"]["max"],
            "target": 0.02,
            "met": raft["u-shaped"]["gvm_integer_gap"]["max"] <= 0.02,
        },
        "best_topup_to_today_u_shaped": {
            "value": best["to_today"],
            "target": 0.9,
            "met": best["to_today"] <= 0.9,
        },
        "best_topup_to_oracle_u_shaped": {
            "value": best["to_oracle"],
            "target": 1.25,
            "met": best["to_oracle"] <= 1.25,
        },
    }
    print("\nTargets (u-shaped):")
    for key, t in targets.items():
        verdict = "met" if t["met"] else "NOT met"
        print(f"  {key:32s} {t['value']:.4f}  target {t['target']}  {verdict}")
    rows = raft["u-shaped"]["strategies"]
    limits = {  # J / oracle on the same batches: where the gap to the oracle comes from
        "gvm": u["to_oracle"],
        "bayes_true_prior": rows["bound: Bayes with the true prior"]["to_oracle"],
        "any_pilot_only_allocator_floor": rows[CONTINUOUS[0]]["to_oracle"],
        "gvm_norms_of_every_pilot_sample": rows["gvm, norms of every pilot sample"]["to_oracle"],
        "gvm_true_g": rows["diagnostic: gvm with the true G"]["to_oracle"],
        "bayes_true_prior_and_g": rows["bound: Bayes with the true prior and G"]["to_oracle"],
    }
    print("\nWhat limits gvm / oracle (u-shaped):")
    for key, value in limits.items():
        print(f"  {key:34s} {value:.4f}")
    payload = {
        "benchmark": "variance",
        "setting": {
            "prompts": M,
            "pilot_samples": PILOT,
            "budget_per_prompt": PER_PROMPT,
            "min_samples": DEFAULT.min_samples,
            "alpha": ALPHA,
            "beta": BETA,
            "g_log_sd": G_SPREAD,
            "norm_noise_log_sd": NORM_NOISE,
            "trials": args.trials,
            "sweep_trials": args.sweep_trials,
            "grpo_trials": args.grpo_trials,
            "topup_trials": args.topup_trials,
            "monte_carlo": {"batches": MC_TRIALS, "repetitions": MC_REPS},
            "seed": args.seed,
        },
        "raft": raft,
        "defaults_sweep_to_oracle": sweeps,
        "grpo": grpo,
        "topups": topups,
        "targets": targets,
        "limits_u_shaped_to_oracle": limits,
        "machine": {**machine(), "loadavg_before": load_before},
        "seconds": time.perf_counter() - started,
    }
    write_json("variance", payload)
    plot(raft, grpo, topups, str(RESULTS / "variance.png"))
    print(f"\nwrote {RESULTS / 'variance.json'} and variance.png in {payload['seconds']:.0f} s")


if __name__ == "__main__":
    main()
