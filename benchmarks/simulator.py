"""A fast learner to screen allocation strategies: thousands of seeds in minutes, numpy only.

Every arm asks the product's engine (`budget_service.engine`: `estimate`, `allocate`) for its
samples, so the simulator screens the strategies the service serves, not re-implementations.
Its findings are to be checked against the real runs (benchmarks/learning.py), not reported
instead of them.

The learner. Prompt i answers right with p_i = sigmoid(theta_i),

    theta_i = c_i + sqrt(1 - w) a_i + sqrt(w) x_i . phi,

c_i its starting logit (drawn from the warm tiny model's per-level pass rates, `fit_level`),
a_i a prompt's own parameter, phi in R^D parameters shared by all prompts, x_i a unit feature
(a component common to all prompts, one per level, one per prompt), w the shared share. Held-out
prompts have their own c_j and x_j and are never trained on: they move through phi alone.

One sample's RAFT score (the gradient of log-prob of an accepted answer) is, per unit direction
d_i = grad theta_i, G_i (m (1 - p_i) d_i + sqrt(1 - m^2) eps), with eps isotropic noise of unit
mean square: the exact Bernoulli score (1 - p) carries the signal, the rest of a real network's
per-sample gradient is noise, and G_i (lognormal across prompts) scales both. The update is
lr times the trainer's estimator: the mean over the step's accepted samples (RAFT++ here takes
a token mean over accepted samples; `--estimator lemma1` takes the paper's per-prompt means
instead, whose variance is sum_i G_i^2 / (n_i p_i) / m^2). Curvature makes noise cost: every
logit drops by kappa / 2 |lr delta|^2 per step (the descent lemma's second-order term, through
which lower gradient variance buys progress in the GVM paper's analysis). Rejected samples
add nothing (RAFT). Prompts with 0 accepted samples add nothing.

Reports to the statistics store are what the trainer posts (samples, accepted, the accepted
samples' norms: G_i times lognormal noise), pilot and main draws alike; `estimate` reads them
with the run totals, as the service does. As in the trainer (trainer_client/trainer/train.py),
an arm may tell the engine its pilot as drawn (`allocate(..., drawn=, drawn_accepted=)`: the
allocation is then a top-up, the additional samples) or split a step into allocation rounds,
each reported before the next and each after the first a top-up of what the step drew so far.

Held-out accuracy is the exact mean of p_j over the held-out prompts (no sampling noise).

Run (docs/benchmarks.md, "Learning simulator"; about 2-5 minutes on 2 cores):

    python benchmarks/simulator.py                      # simulator.json and .png, 2,000 seeds
    python benchmarks/simulator.py --seeds 1000 --estimator lemma1 --name simulator_lemma1
    python benchmarks/simulator.py --seeds 1000 --signal 0.3 --name simulator_signal0.3
    python benchmarks/simulator.py --docs               # the docs' tables from those files
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from _report import RESULTS, machine, write_json
from numpy.typing import NDArray
from stats import auc, bootstrap_ratio, holm, sign_flip_test

from budget_service.engine import (
    AllocationParams,
    Estimates,
    PromptStatistics,
    RunTotals,
    allocate,
    estimate,
)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

# The warm tiny model's pass rates at temperature 1 before RL (warmup.json, README "The tiny model
# and the warm start"): per level, the mean and the share of prompts with 0 < k < 16 of 16.
WARM_PASS_RATES = {1: (0.43, 1.00), 2: (0.13, 0.75), 3: (0.012, 0.19), 4: (0.020, 0.25)}
WARM_DRAWS = 16


@dataclass(frozen=True)
class Settings:
    """The regime (docs/benchmarks.md, "Learning benchmark regime") and the learner's knobs."""

    pool: int = 1024  # training prompts, one pass
    batch: int = 64  # prompts per step
    per_prompt: int = 16  # samples per prompt per step on average, pilot included
    pilot: int = 8  # N' where an arm uses a pilot
    held_out: int = 256
    mix: tuple[int, ...] = (1, 4, 2, 1)  # weights of levels 1..4
    dim: int = 8  # shared parameters
    shared: float = 0.5  # w: share of a prompt's gradient direction on the shared parameters
    common: float = 0.3  # feature variance common to all prompts
    level: float = 0.4  # feature variance common to a level (the rest is the prompt's own)
    signal: float = 0.15  # m: |mean score| / root mean square score at p = 0
    grad_spread: float = 0.5  # G_i ~ lognormal(0, grad_spread)
    norm_noise: float = 0.3  # reported per-sample norm: G_i x lognormal(., norm_noise)
    # lr, kappa and m set on uniform alone (held-out 0.125 -> about 0.21 over the pass, noise
    # above signal in the update), before any other arm was run
    lr: float = 3.0
    curvature: float = 0.5  # kappa
    estimator: str = "trainer"  # "trainer": mean over accepted; "lemma1": per-prompt means

    @property
    def steps(self) -> int:
        return self.pool // self.batch

    @property
    def budget(self) -> int:
        return self.batch * self.per_prompt


@dataclass(frozen=True)
class Arm:
    """One way to spend a step's samples. `rule` picks the allocation of the main draw."""

    name: str
    rule: str  # uniform | filter | gvm | gvm-paper | knapsack | oracle | oracle-stale
    pilot: bool = False  # draw N' per prompt first and report it
    pilot_counted: bool = True  # the pilot counts as generated (False: the paper's accounting)
    pilot_trained: bool = True
    label: str = ""
    pilot_as_drawn: bool = False  # the allocation is told the pilot as drawn: a top-up of it
    # per-prompt samples of the step's first allocation rounds (the trainer's allocation_rounds:
    # (2, 4) is 2 x batch, then 4 x batch more); the last round takes the rest of the budget.
    # Every round is reported before the next, and each after the first is a top-up
    rounds: tuple[int, ...] = ()

    def round_budgets(self, budget: int, batch: int) -> tuple[int, ...]:
        """The step's main budget per allocation round (one round without `rounds`)."""
        first = tuple(r * batch for r in self.rounds)
        if sum(first) >= budget:
            raise ValueError(f"{self.name}: rounds {self.rounds} leave nothing for the last")
        return (*first, budget - sum(first))


ARMS = (
    Arm("uniform", "uniform", label="uniform: 16 per prompt"),
    Arm(
        "filter-only",
        "filter",
        pilot=True,
        label="pilot 8, then uniform over prompts with a success",
    ),
    Arm("gvm-paper", "gvm-paper", pilot=True, label="pilot 8, then the published rule"),
    Arm(
        "gvm-paper, pilot not trained",
        "gvm-paper",
        pilot=True,
        pilot_trained=False,
        label="as gvm-paper, the pilot only estimates",
    ),
    Arm("gvm", "gvm", pilot=True, label="pilot 8, then gvm (pilot reported, not told as drawn)"),
    Arm("gvm-online", "gvm", label="no pilot: gvm on the statistics of earlier steps"),
    Arm("oracle", "oracle", label="knows p and G now: exact minimiser of sum c_i / n_i"),
    Arm("oracle, stale", "oracle-stale", label="knows p and G as they were before training"),
    Arm(
        "gvm-paper, pilot free",
        "gvm-paper",
        pilot=True,
        pilot_counted=False,
        label="paper's accounting: pilot 8 not counted, then the rule over 16 per prompt",
    ),
    # added after the nine above; each arm's random stream is its position in ARMS, so these
    # leave the others' draws as they were
    Arm(
        "gvm, pilot as drawn",
        "gvm",
        pilot=True,
        pilot_as_drawn=True,
        label="pilot 8 told as drawn, then a gvm top-up",
    ),
    Arm(
        "knapsack",
        "knapsack",
        pilot=True,
        pilot_as_drawn=True,
        label="pilot 8 told as drawn, then a knapsack top-up",
    ),
    Arm(
        "gvm, 3 rounds",
        "gvm",
        rounds=(2, 4),
        label="no pilot: 2 per prompt by gvm, then 4 more, then the rest (each a top-up)",
    ),
)


# --- the prompts ---------------------------------------------------------------------------------


def fit_level(mean: float, mixed: float, draws: int = WARM_DRAWS) -> tuple[float, float]:
    """Beta(a, b) with the given mean whose share of prompts with 0 < k < draws of `draws`
    matches `mixed` (strength on a log grid; the largest when no spread is needed)."""
    strengths = np.logspace(-2, 3, 2001)
    a, b = mean * strengths, (1 - mean) * strengths

    lgamma = np.vectorize(math.lgamma)

    def log_beta(x: F64, y: F64) -> F64:
        out: F64 = lgamma(x) + lgamma(y) - lgamma(x + y)
        return out

    base = log_beta(a, b)
    share = 1 - np.exp(log_beta(a, b + draws) - base) - np.exp(log_beta(a + draws, b) - base)
    k = float(strengths[np.argmin(np.abs(share - mixed))])
    return mean * k, (1 - mean) * k


@dataclass
class Prompts:
    """Per seed (rows): starting logits, features, gradient scales and levels of m prompts."""

    logit0: F64  # (S, m)
    x: F64  # (S, m, D), unit rows
    g: F64  # (S, m)
    level: I64  # (S, m)


def draw_prompts(
    rng: np.random.Generator, seeds: int, m: int, s: Settings, directions: tuple[F64, F64]
) -> Prompts:
    shares = np.asarray(s.mix, dtype=np.float64) / sum(s.mix)
    level = rng.choice(np.arange(1, len(s.mix) + 1), size=(seeds, m), p=shares)
    fits = {lv: fit_level(*WARM_PASS_RATES[lv]) for lv in range(1, len(s.mix) + 1)}
    a = np.vectorize(lambda lv: fits[lv][0])(level)
    b = np.vectorize(lambda lv: fits[lv][1])(level)
    p = np.clip(rng.beta(a, b), 1e-4, 1 - 1e-4)
    common, by_level = directions  # (S, D), (S, levels, D)
    own = rng.standard_normal((seeds, m, s.dim)) / math.sqrt(s.dim)
    lv = by_level[np.arange(seeds)[:, None], level - 1]
    x = (
        math.sqrt(s.common) * common[:, None, :]
        + math.sqrt(s.level) * lv
        + math.sqrt(1 - s.common - s.level) * own
    )
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    g = rng.lognormal(0.0, s.grad_spread, (seeds, m))
    return Prompts(np.log(p / (1 - p)), x, g, level)


def unit(rng: np.random.Generator, shape: tuple[int, ...]) -> F64:
    v = rng.standard_normal(shape)
    unit_rows: F64 = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return unit_rows


# --- one arm, all seeds of a block ---------------------------------------------------------------


@dataclass
class Store:
    """The service's per-prompt statistics (no decay) and run totals, per seed."""

    samples: F64
    accepted: F64
    g_sum: F64
    g_count: F64
    last: I64
    totals: F64  # (S, 4): samples, accepted, g_sum, g_count

    @classmethod
    def empty(cls, seeds: int, m: int) -> Store:
        z = np.zeros((seeds, m))
        return cls(z.copy(), z.copy(), z.copy(), z.copy(), np.zeros((seeds, m), np.int64),
                   np.zeros((seeds, 4)))  # fmt: skip

    def report(self, idx: I64, n: I64, k: I64, norms: F64, step: int) -> None:
        rows = np.arange(idx.shape[0])[:, None]
        seen = n > 0
        self.samples[rows, idx] += n
        self.accepted[rows, idx] += k
        self.g_sum[rows, idx] += norms
        self.g_count[rows, idx] += k
        self.last[rows, idx] = np.where(seen, step, self.last[rows, idx])
        self.totals += np.stack([n.sum(1), k.sum(1), norms.sum(1), k.sum(1)], axis=1)

    def batch(self, seed: int, ix: I64) -> tuple[PromptStatistics, RunTotals]:
        stats = PromptStatistics(
            samples=self.samples[seed, ix],
            accepted=self.accepted[seed, ix],
            grad_norm_sum=self.g_sum[seed, ix],
            grad_norm_count=self.g_count[seed, ix],
            last_step=self.last[seed, ix],
        )
        n, k, gs, gc = self.totals[seed]
        return stats, RunTotals(float(n), float(k), float(gs), float(gc), int(self.last.max()))


def allocation(
    arm: Arm,
    budget: int,
    step: int,
    stats: PromptStatistics,
    totals: RunTotals,
    pilot_k: I64,
    p: F64,
    g: F64,
    drawn: I64 | None = None,
    drawn_accepted: I64 | None = None,
) -> I64:
    """The main draw's samples per prompt, from the engine; with `drawn` (what each prompt drew
    this step so far, and had accepted), the additional samples of the engine's top-up."""
    m = p.size
    if arm.rule == "uniform":
        params = AllocationParams(strategy="uniform")
        return allocate(Estimates.from_rates(np.ones(m), np.ones(m)), budget, params).samples
    if arm.rule == "filter":  # the engine's uniform split over the prompts the pilot solved
        solved = np.flatnonzero(pilot_k > 0) if (pilot_k > 0).any() else np.arange(m)
        ones = np.ones(solved.size)
        part = allocate(Estimates.from_rates(ones, ones), budget, AllocationParams("uniform"))
        n = np.zeros(m, np.int64)
        n[solved] = part.samples
        return n
    if arm.rule in ("oracle", "oracle-stale"):
        exact = Estimates.from_rates(p, g)  # plugged in: c_i from the true p_i and G_i
        return allocate(exact, budget, AllocationParams(prior_strength=0)).samples
    params = AllocationParams(strategy=arm.rule if arm.rule in ("gvm-paper", "knapsack") else "gvm")
    estimates = estimate(stats, totals, step, params)
    return allocate(estimates, budget, params, drawn=drawn, drawn_accepted=drawn_accepted).samples


@dataclass
class ArmResult:
    held_out: F64  # (S, steps + 1): mean held-out p after each step
    counted: I64  # (S, steps): samples counted as generated per step
    generated: I64  # (S, steps): samples drawn per step (the pilot always included)
    by_level: F64  # (levels,): samples drawn per level, all seeds
    starved: float  # share of (step, prompt) pairs trained on no accepted sample


def run_arm(
    arm: Arm, s: Settings, train: Prompts, held: Prompts, order: I64, rng: np.random.Generator
) -> ArmResult:
    seeds, m = train.logit0.shape
    a = np.zeros((seeds, m))  # prompts' own parameters
    phi = np.zeros((seeds, s.dim))
    drift = np.zeros(seeds)  # the curvature's cumulative toll on every logit
    store = Store.empty(seeds, m)
    rows = np.arange(seeds)[:, None]
    root_w, root_own = math.sqrt(s.shared), math.sqrt(1 - s.shared)
    noise = math.sqrt(1 - s.signal**2)

    def logits(p: Prompts, own: F64, ix: I64 | slice) -> F64:
        x = p.x[rows, ix] if isinstance(ix, np.ndarray) else p.x
        base = p.logit0[rows, ix] if isinstance(ix, np.ndarray) else p.logit0
        out: F64 = base + root_own * own + root_w * np.einsum("smd,sd->sm", x, phi) + drift[:, None]
        return out

    def held_out() -> F64:
        mean: F64 = sigmoid(logits(held, np.zeros_like(held.logit0), slice(None))).mean(1)
        return mean

    curve = [held_out()]
    counted = np.zeros((seeds, s.steps), np.int64)
    generated = np.zeros((seeds, s.steps), np.int64)
    levels = len(s.mix)
    by_level = np.zeros(levels)
    starved = 0
    p_start = sigmoid(train.logit0)
    for step in range(s.steps):
        ix = order[:, step * s.batch : (step + 1) * s.batch]  # (S, B)
        p = sigmoid(logits(train, a[rows, ix], ix))
        g = train.g[rows, ix]
        n0 = np.full(ix.shape, s.pilot if arm.pilot else 0, np.int64)
        k0 = rng.binomial(n0, p)
        if arm.pilot:
            store.report(ix, n0, k0, reported_norms(rng, g, k0, s), step)
        main_budget = s.budget - (int(n0[0].sum()) if arm.pilot_counted else 0)
        n1, k1 = np.zeros_like(n0), np.zeros_like(k0)  # the step's draws after the pilot
        for r, round_budget in enumerate(arm.round_budgets(main_budget, s.batch)):
            top_up = r > 0 or arm.pilot_as_drawn  # told what the step drew so far
            n = np.empty_like(n0)
            for seed in range(seeds):
                stats, totals = store.batch(seed, ix[seed])
                known = p_start[seed, ix[seed]] if arm.rule == "oracle-stale" else p[seed]
                drawn = (n0[seed] + n1[seed], k0[seed] + k1[seed]) if top_up else (None, None)
                n[seed] = allocation(
                    arm, round_budget, step, stats, totals, k0[seed], known, g[seed], *drawn
                )
            k = rng.binomial(n, p)
            store.report(ix, n, k, reported_norms(rng, g, k, s), step)
            n1 += n
            k1 += k
        counted[:, step] = n1.sum(1) + (n0.sum(1) if arm.pilot_counted else 0)
        generated[:, step] = n1.sum(1) + n0.sum(1)
        by_level += np.bincount((train.level[rows, ix] - 1).ravel(), (n0 + n1).ravel(), levels)

        # the update: RAFT's estimator on the trained samples' accepted ones
        k = k1 + (k0 if arm.pilot_trained else 0)
        starved += int(np.count_nonzero(k == 0))
        if s.estimator == "trainer":
            weight = 1.0 / np.maximum(k.sum(1, keepdims=True), 1)  # mean over accepted samples
            weight = np.broadcast_to(weight, k.shape)
        else:
            weight = np.where(k > 0, 1.0 / (s.batch * np.maximum(k, 1)), 0.0)
        score_sum = g * s.signal * (1 - p) * k  # along grad theta_i, summed over accepted
        spread = g * noise * np.sqrt(k)  # sd of the summed noise
        own = weight * (root_own * score_sum + spread * root_own * rng.standard_normal(k.shape))
        shared_noise = rng.standard_normal((*k.shape, s.dim)) * math.sqrt(s.shared / s.dim)
        shared = np.einsum(
            "sm,smd->sd", weight, root_w * score_sum[..., None] * train.x[rows, ix]
            + spread[..., None] * shared_noise,
        )  # fmt: skip
        a[rows, ix] += s.lr * own
        phi += s.lr * shared
        drift -= 0.5 * s.curvature * s.lr**2 * ((own**2).sum(1) + (shared**2).sum(1))
        curve.append(held_out())
    return ArmResult(
        held_out=np.stack(curve, axis=1),
        counted=counted,
        generated=generated,
        by_level=by_level,
        starved=starved / (seeds * s.steps * s.batch),
    )


def sigmoid(z: F64) -> F64:
    out: F64 = 1 / (1 + np.exp(-z))
    return out


def reported_norms(rng: np.random.Generator, g: F64, k: I64, s: Settings) -> F64:
    """Sum of k accepted samples' norms, each G_i x lognormal(-sd^2/2, sd): drawn as one
    lognormal with the sum's mean and (about) its spread."""
    sd = s.norm_noise / np.sqrt(np.maximum(k, 1))
    sums: F64 = g * k * rng.lognormal(-(sd**2) / 2, sd)
    return sums


def simulate(
    s: Settings, seeds: int, arms: tuple[Arm, ...] = ARMS, block: int = 250, seed: int = 0
) -> dict[str, ArmResult]:
    """Every arm on the same prompts, order and held-out set per seed (paired), in blocks."""
    parts: dict[str, list[ArmResult]] = {arm.name: [] for arm in arms}
    for start in range(0, seeds, block):
        size = min(block, seeds - start)
        rng = np.random.default_rng([seed, start])
        directions = unit(rng, (size, s.dim)), unit(rng, (size, len(s.mix), s.dim))
        train = draw_prompts(rng, size, s.pool, s, directions)
        held = draw_prompts(rng, size, s.held_out, s, directions)
        order = rng.permuted(np.broadcast_to(np.arange(s.pool), (size, s.pool)), axis=1)
        for number, arm in enumerate(arms):
            arm_rng = np.random.default_rng([seed, start, number + 1])
            parts[arm.name].append(run_arm(arm, s, train, held, order, arm_rng))
    return {name: merge(results) for name, results in parts.items()}


def merge(results: list[ArmResult]) -> ArmResult:
    seeds = sum(r.held_out.shape[0] for r in results)
    return ArmResult(
        held_out=np.concatenate([r.held_out for r in results]),
        counted=np.concatenate([r.counted for r in results]),
        generated=np.concatenate([r.generated for r in results]),
        by_level=np.sum([r.by_level for r in results], axis=0),
        starved=sum(r.starved * r.held_out.shape[0] for r in results) / seeds,
    )


# --- the report ----------------------------------------------------------------------------------

# Which part of the mechanism each contrast isolates: (label, arm, baseline).
CONTRASTS = (
    ("filtering (pilot counted)", "filter-only", "uniform"),
    ("weighting on top of filtering", "gvm-paper", "filter-only"),
    ("training on the pilot", "gvm-paper", "gvm-paper, pilot not trained"),
    ("pilot accounting (free vs counted)", "gvm-paper, pilot free", "gvm-paper"),
    ("posterior gvm vs the published rule", "gvm", "gvm-paper"),
    ("stale statistics (oracle before training vs now)", "oracle, stale", "oracle"),
    ("what the pilot cannot tell (oracle vs gvm)", "oracle", "gvm"),
    ("pilot told as drawn vs not", "gvm, pilot as drawn", "gvm"),
    ("knapsack vs gvm (both top up the pilot)", "knapsack", "gvm, pilot as drawn"),
    ("three rounds vs one top-up", "gvm, 3 rounds", "gvm, pilot as drawn"),
)


def summarise(s: Settings, results: dict[str, ArmResult], resamples: int) -> dict[str, Any]:
    uniform = results["uniform"]
    x = np.concatenate([[0], np.cumsum(uniform.counted[0])]).astype(np.float64)
    for name, r in results.items():  # the paired comparison needs one samples axis
        if not (r.counted == uniform.counted[0]).all():
            raise AssertionError(f"{name} counts other samples per step than uniform")
    endpoint = {name: auc(x, r.held_out) for name, r in results.items()}
    arms: dict[str, Any] = {}
    others = [name for name in results if name != "uniform"]
    p_values = []
    for name, r in results.items():
        entry: dict[str, Any] = {
            "final": float(r.held_out[:, -1].mean()),
            "auc": float(endpoint[name].mean()),
            "generated_per_step": float(r.generated.mean()),
            "counted_per_step": float(r.counted.mean()),
            "generated_share_by_level": (r.by_level / r.by_level.sum()).round(4).tolist(),
            "prompts_trained_on_nothing": round(r.starved, 4),
        }
        if name != "uniform":
            d = endpoint[name] - endpoint["uniform"]
            ratio = bootstrap_ratio(x, r.held_out, uniform.held_out, resamples=resamples)
            p = sign_flip_test(d)
            p_values.append(p)
            entry |= {
                "auc_difference": {"mean": float(d.mean()), "sd": float(d.std(ddof=1)),
                                   "wins": int((d > 0).sum()), "losses": int((d < 0).sum())},
                "sign_flip_p": p,
                "samples_ratio": finite(ratio.estimate),
                "samples_ratio_90ci": [finite(ratio.low), finite(ratio.high)],
            }  # fmt: skip
        arms[name] = entry
    for name, adjusted in zip(others, holm(p_values), strict=True):
        arms[name]["sign_flip_p_holm"] = adjusted
    contrasts = []
    # uniform's own progress on the endpoint: its AUC over its starting accuracy
    uniform_gain = float((endpoint["uniform"] - uniform.held_out[:, 0]).mean())
    for label, mine, base in CONTRASTS:
        d = endpoint[mine] - endpoint[base]
        contrasts.append({
            "part": label, "arm": mine, "baseline": base, "auc_difference": float(d.mean()),
            "share_of_uniform_gain": float(d.mean() / uniform_gain),
            "sign_flip_p": sign_flip_test(d),
        })  # fmt: skip
    return {"samples": x.tolist(), "arms": arms, "contrasts": contrasts,
            "comparisons_with_uniform": len(others)}  # fmt: skip


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def plot(x: F64, results: dict[str, ArmResult], path: Any, title: str) -> None:
    """Left: seed-mean held-out curves with their 90% interval (mean +- 1.645 standard errors).
    Right: the paired difference from uniform, seed by seed: mean and 5-95% of seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    uniform = results["uniform"].held_out
    colors = plt.get_cmap("tab10").colors  # then dashed, from the start, past the tenth arm
    for i, (name, r) in enumerate(results.items()):
        color, style = colors[i % len(colors)], "-" if i < len(colors) else "--"
        mean = r.held_out.mean(0)
        half = 1.645 * r.held_out.std(0, ddof=1) / math.sqrt(r.held_out.shape[0])
        left.plot(x, mean, color=color, ls=style, lw=1.8, label=name)
        left.fill_between(x, mean - half, mean + half, color=color, alpha=0.2)
        d = r.held_out - uniform
        low, high = np.quantile(d, [0.05, 0.95], axis=0)
        right.plot(x, d.mean(0), color=color, ls=style, lw=1.8, label=name)
        right.fill_between(x, low, high, color=color, alpha=0.08)
    left.set_ylabel("held-out accuracy (exact mean p): seed mean, 90% interval")
    right.set_ylabel("minus uniform, same seed: mean and 5-95% of seeds")
    for axis in (left, right):
        axis.set_xlabel("cumulative samples counted (pilot included, except 'pilot free')")
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# The docs' three learners: results file stem and column title.
LEARNERS = (
    ("simulator", "trainer estimator, m = 0.15 (main)"),
    ("simulator_signal0.3", "trainer estimator, m = 0.3"),
    ("simulator_lemma1", "per-prompt means (Lemma 1), m = 0.15"),
)


def docs_tables(payloads: dict[str, dict[str, Any]]) -> list[str]:
    """The tables of docs/benchmarks.md "Learning simulator", from the results files."""

    def ratio(x: float | None) -> str:
        return "not reached" if x is None else f"{x:.3f}"

    def with_ci(entry: dict[str, Any]) -> str:
        low, high = entry["samples_ratio_90ci"]
        return f"{ratio(entry['samples_ratio'])} ({ratio(low)}-{ratio(high)})"

    main = payloads[LEARNERS[0][0]]["summary"]
    rows = [
        "| arm | samples to reach uniform's final: ratio (90% CI) | held-out AUC minus uniform "
        f"(wins-losses) | p (sign flip, Holm over {main['comparisons_with_uniform']}) "
        "| final held-out |",
        "|---|---|---|---|---|",
    ]
    for name, e in main["arms"].items():
        if name == "uniform":
            rows.append(f"| uniform | 1 (the reference) | 0 | - | {e['final']:.3f} |")
            continue
        d = e["auc_difference"]
        rows.append(
            f"| {name} | {with_ci(e)} | {d['mean']:+.4f} ({d['wins']}-{d['losses']}) "
            f"| {e['sign_flip_p_holm']:.2g} | {e['final']:.3f} |"
        )
    header = " | ".join(title for _, title in LEARNERS)
    contrasts = [f"| part of the mechanism (arm vs baseline) | {header} |", "|---|---|---|---|"]
    for i, c in enumerate(main["contrasts"]):
        cells = []
        for stem, _ in LEARNERS:
            cc = payloads[stem]["summary"]["contrasts"][i]
            cells.append(
                f"{cc['auc_difference']:+.4f} ({cc['share_of_uniform_gain']:+.2f}; "
                f"p {cc['sign_flip_p']:.2g})"
            )
        contrasts.append(f"| {c['part']}: {c['arm']} vs {c['baseline']} | {' | '.join(cells)} |")
    ratios = [f"| ratio (90% CI) | {header} |", "|---|---|---|---|"]
    for name in main["arms"]:
        if name != "uniform":
            cells = [with_ci(payloads[stem]["summary"]["arms"][name]) for stem, _ in LEARNERS]
            ratios.append(f"| {name} | {' | '.join(cells)} |")
    return ["\n".join(rows), "\n".join(contrasts), "\n".join(ratios)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--estimator", choices=["trainer", "lemma1"], default="trainer")
    parser.add_argument("--signal", type=float, default=Settings.signal, help="m (sensitivity)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--name", default="simulator")
    parser.add_argument("--docs", action="store_true", help="print the docs' tables and exit")
    args = parser.parse_args(argv)
    if args.docs:
        payloads = {
            stem: json.loads((RESULTS / f"{stem}.json").read_text()) for stem, _ in LEARNERS
        }
        print("\n\n".join(docs_tables(payloads)))
        return 0
    settings = Settings(estimator=args.estimator, signal=args.signal)
    started = time.perf_counter()
    results = simulate(settings, args.seeds)
    simulated = time.perf_counter() - started
    summary = summarise(settings, results, args.resamples)
    payload = {
        "settings": asdict(settings) | {"steps": settings.steps, "budget": settings.budget},
        "warm_pass_rates": {str(k): v for k, v in WARM_PASS_RATES.items()},
        "arms": {arm.name: arm.label for arm in ARMS},
        "seeds": args.seeds,
        "summary": summary,
        "seconds_simulation": round(simulated, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }
    path = write_json(args.name, payload)
    title = f"simulator: {args.seeds} seeds, estimator {args.estimator}, m = {args.signal}"
    plot(np.asarray(summary["samples"]), results, RESULTS / f"{args.name}.png", title)
    for name, entry in summary["arms"].items():
        print(f"{name:>30}: final {entry['final']:.4f} auc {entry['auc']:.4f}", {
            k: entry[k] for k in ("samples_ratio", "samples_ratio_90ci", "sign_flip_p_holm")
            if k in entry})  # fmt: skip
    for c in summary["contrasts"]:
        print(f"{c['part']:>50}: {c['auc_difference']:+.5f} ({c['share_of_uniform_gain']:+.2f} "
              f"of uniform's gain), p {c['sign_flip_p']:.3g}")  # fmt: skip
    print(f"wrote {path} in {payload['seconds_total']} s ({simulated:.1f} s simulating)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
