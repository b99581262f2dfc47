"""What goes into an allocation and what comes out: parameters, the plan, reasons, errors.

Errors (all `ValueError`s, the service maps them to 422)::

    AllocationError               bad parameters
     +-- InfeasibleBudgetError    the bounds cannot meet the budget, or the batch is empty
     +-- InvalidStatisticsError   NaN, inf, negative or out-of-range statistics or estimates
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CODE",
    "F64",
    "I64",
    "Algo",
    "AllocationError",
    "AllocationParams",
    "AllocationPlan",
    "InfeasibleBudgetError",
    "InvalidStatisticsError",
    "Reason",
    "Strategy",
]

# A new strategy: its name here, and a branch in allocate.allocate.
Strategy = Literal["gvm", "gvm-paper", "uniform", "knapsack"]
Algo = Literal["raft", "grpo"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


class AllocationError(ValueError):
    """The allocation cannot be computed as asked; `field` names the culprit when known, `rule`
    the rule it breaks when it is one a client can look up (the service's error details)."""

    def __init__(self, message: str, *, field: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


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


# A plan stores reasons as int8 codes (one byte per prompt): CODE[reason] is the index in Reason.
CODE = {reason: i for i, reason in enumerate(Reason)}
_REASONS = np.array(list(Reason), dtype=object)


@dataclass(frozen=True, slots=True)
class AllocationParams:
    """Allocation settings of a run; the single source of truth for defaults.

    Defaults and why (measured by benchmarks/variance.py, see docs/allocation.md):
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
        """Per-prompt floor: min_samples, and at least 2 under GRPO (a group needs a baseline);
        at least 1 for knapsack (its value v(n) is concave from n = 1 on, not from 0: see
        knapsack.py)."""
        if self.algo == "grpo":
            return max(self.min_samples, 2)
        return max(self.min_samples, 1) if self.strategy == "knapsack" else self.min_samples


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
