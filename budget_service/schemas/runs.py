"""A run's config (PUT, PATCH) and what GET answers about a run.

RunConfig mirrors the engine's `AllocationParams` and takes its defaults from it, so the engine
stays the single source of truth.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from budget_service.engine import AllocationParams, Strategy
from budget_service.schemas.common import Answer, WireModel

_DEFAULTS = AllocationParams()

FiniteNonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# Config ranges inside which the estimates and the allocation stay finite for any statistics
# (checked by a property test of the engine over these ranges); far beyond any useful value.
MIN_ALPHA, MAX_ALPHA = 1e-9, 1e6
MAX_BETA = 100.0
MIN_STRENGTH, MAX_STRENGTH = 1e-3, 1e9


class RunConfig(WireModel):
    """How the service allocates samples for one run. Every field has a default."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"strategy": "gvm", "min_samples": 2, "max_samples": 64, "half_life_steps": 50},
                {"strategy": "gvm-paper", "prior_strength": 0, "align_to": 8},
            ]
        }
    )

    strategy: Strategy = Field(
        default=_DEFAULTS.strategy,
        description="gvm: our optimum with estimates and bounds; gvm-paper: the published "
        "algorithm's integers; uniform: budget split evenly; knapsack: Knapsack RL's value "
        "(arXiv 2509.25849), needs no gradient norms.",
    )
    alpha: FiniteNonNegative = Field(
        default=_DEFAULTS.alpha,
        le=MAX_ALPHA,
        description=f"Regulariser alpha (>= {MIN_ALPHA:g} unless strategy is gvm-paper).",
    )
    beta: FiniteNonNegative = Field(
        default=_DEFAULTS.beta,
        le=MAX_BETA,
        description="Regulariser beta (>= 1 unless strategy is gvm-paper).",
    )
    min_samples: int = Field(default=_DEFAULTS.min_samples, ge=0, description="Per-prompt floor.")
    max_samples: int | None = Field(
        default=_DEFAULTS.max_samples, ge=1, description="Per-prompt cap; null = none."
    )
    align_to: int = Field(
        default=_DEFAULTS.align_to, ge=1, description="Total is a multiple of this (GPU count)."
    )
    filter_threshold: float | None = Field(
        default=_DEFAULTS.filter_threshold,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Drop prompts with p_hat above this; null or 0 = off.",
    )
    filter_insufficient: float | None = Field(
        default=_DEFAULTS.filter_insufficient,
        ge=0,
        allow_inf_nan=False,
        description="Drop prompts whose expected accepted count is below this; null or 0 = off.",
    )
    prior_strength: FiniteNonNegative = Field(
        default=_DEFAULTS.prior_strength,
        le=MAX_STRENGTH,
        description="Pseudo-samples of the prior toward the run's pooled rates (0 = raw ratios; "
        f"else >= {MIN_STRENGTH:g}).",
    )
    half_life_steps: float | None = Field(
        default=_DEFAULTS.half_life_steps,
        gt=0,
        allow_inf_nan=False,
        description="Statistics lose half their weight every this many steps; null = no decay.",
    )
    explore_samples: int = Field(
        default=_DEFAULTS.explore_samples,
        ge=0,
        description="Floor for never-solved prompts (clamped to max_samples).",
    )
    algo: Literal["raft", "grpo"] = Field(
        default=_DEFAULTS.algo, description="raft, or grpo (GRPO-aware allocation)."
    )
    fit_prior: bool = Field(
        default=_DEFAULTS.fit_prior,
        description="Fit the Beta prior's strength to the batch's spread (empirical Bayes).",
    )
    grad_prior_strength: FiniteNonNegative = Field(
        default=_DEFAULTS.grad_prior_strength,
        le=MAX_STRENGTH,
        description="Pseudo-norms pulling a prompt's gradient norm toward the run's pooled mean "
        f"(0 = off; else >= {MIN_STRENGTH:g}).",
    )

    @field_validator("max_samples")
    @classmethod
    def _min_le_max(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_samples")
        if value is not None and low is not None and low > value:
            raise PydanticCustomError("min_le_max", "must be >= min_samples ({low})", {"low": low})
        return value

    @field_validator("alpha")
    @classmethod
    def _alpha_for_strategy(cls, value: float, info: ValidationInfo) -> float:
        strategy = info.data.get("strategy")
        if value < MIN_ALPHA and strategy not in (None, "gvm-paper"):
            raise PydanticCustomError(
                "alpha_min",
                "must be >= {low} for strategy {strategy} (the expected cost of a rarely "
                "solved prompt grows like 1/alpha); only gvm-paper takes alpha = 0",
                {"low": MIN_ALPHA, "strategy": strategy},
            )
        return value

    @field_validator("prior_strength", "grad_prior_strength")
    @classmethod
    def _strength_off_or_min(cls, value: float) -> float:
        if 0 < value < MIN_STRENGTH:
            raise PydanticCustomError(
                "strength_min", "must be 0 (off) or >= {low}", {"low": MIN_STRENGTH}
            )
        return value

    @field_validator("beta")
    @classmethod
    def _beta_for_strategy(cls, value: float, info: ValidationInfo) -> float:
        strategy = info.data.get("strategy")
        if value < 1 and strategy not in (None, "gvm-paper"):
            raise PydanticCustomError(
                "beta_ge_1",
                "must be >= 1 for strategy {strategy} (the cost is infinite as p -> 0); "
                "only gvm-paper takes any beta",
                {"strategy": strategy},
            )
        return value

    @model_validator(mode="after")
    def _engine_accepts(self) -> RunConfig:
        self.to_params()  # the engine's own checks, if any, surface at PUT time (422)
        return self

    def to_params(self) -> AllocationParams:
        return AllocationParams(**self.model_dump())


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # an absent field keeps its value; null is no default here


def _patch_fields() -> dict[str, Any]:
    """RunConfig's fields, each optional, with the same type and bounds: null only where
    RunConfig takes null (the schema then tells clients exactly what a PATCH accepts)."""
    fields: dict[str, Any] = {}
    for name, info in RunConfig.model_fields.items():
        field = FieldInfo(default=None, description=info.description, json_schema_extra=_no_default)
        fields[name] = (info.annotation, FieldInfo.merge_field_infos(info, field))
    return fields


RunConfigPatch = create_model(
    "RunConfigPatch",
    __base__=WireModel,
    __doc__="Any subset of RunConfig's fields; the others keep their values.",
    **_patch_fields(),
)
RunConfigPatch.model_config["json_schema_extra"] = {"examples": [{"half_life_steps": 100}]}
RunConfigPatch.model_rebuild(force=True)


def merge_config(current: RunConfig, patch: BaseModel) -> RunConfig:
    """Apply a PATCH; the combined rules are checked on the result."""
    return RunConfig.model_validate(
        {**current.model_dump(), **patch.model_dump(exclude_unset=True)}
    )


class Run(Answer):
    """A run: its id, its config and when it was created and last configured."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": "raft-qwen-7b-seed1",
                    "config": RunConfig().model_dump(mode="json"),
                    "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                }
            ]
        }
    )

    run_id: str
    config: RunConfig
    created_at: datetime
    updated_at: datetime


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class Histogram(Answer):
    edges: list[float]
    counts: list[int]


class RunSummary(Answer):
    """Counts and pooled rates of a run, and how its prompts' p_hat are spread."""

    run_id: str
    prompts: int = Field(description="Prompts with stored statistics.")
    reports: int = Field(description="Report ids remembered (inside the idempotency window).")
    samples: float
    accepted: float
    grad_norm_sum: float
    grad_norm_count: float
    rejected_grad_norm_sum: float
    rejected_grad_norm_count: float
    last_step: int
    pooled_p: float | None = Field(description="accepted / samples over the run; null if none.")
    pooled_g: float | None = Field(description="Mean gradient norm over the run; null if none.")
    p_hat_histogram: Histogram
