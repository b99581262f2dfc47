"""Pydantic v2 wire models of the v1 API (requests strict, unknown fields rejected).

Pure schemas: nothing here reads settings. RunConfig mirrors the engine's `AllocationParams` and
takes its defaults from it, so the engine stays the single source of truth. Limits that come
from settings (ids per request, id lengths) and the rules that span a report's fields are
checked after parsing by `limits.py`, so the schema stays static.
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

from budget_service.engine import AllocationParams, Reason, Strategy

_DEFAULTS = AllocationParams()

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,127}$"
MAX_SAMPLES_PER_OBSERVATION = 1_000_000_000  # counts stay exact integers in float64
MAX_BUDGET = 1_000_000_000_000
MAX_STEP = 2**53  # steps are stored as float64


class WireModel(BaseModel):
    """A request body: unknown fields rejected, JSON types taken literally ("8" is no int)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Answer(BaseModel):
    """A response body."""

    model_config = ConfigDict(extra="forbid")


FiniteNonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
MAX_GRAD_NORM = 1e15  # keeps sums of many reports finite in float64
# Config ranges inside which the estimates and the allocation stay finite for any statistics
# (checked by a property test of the engine over these ranges); far beyond any useful value.
MIN_ALPHA, MAX_ALPHA = 1e-9, 1e6
MAX_BETA = 100.0
MIN_STRENGTH, MAX_STRENGTH = 1e-3, 1e9
GradNorm = Annotated[float, Field(ge=0, le=MAX_GRAD_NORM, allow_inf_nan=False)]


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


class Observation(WireModel):
    """What a trainer saw for one prompt at the report's step.

    Rules across fields (checked for a whole report at once by `check_report`): accepted <=
    samples; grad_norm_sum and grad_norm_count together, count <= accepted; or grad_norms
    alone, at most `accepted` of them; or no norms at all. The rejected samples' norms follow
    the same rules with samples - accepted in place of accepted: optional, they tell the
    allocator about G for prompts with few or no accepted samples (GRPO trains on them anyway).
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"prompt_id": "gsm8k-0001", "samples": 8, "accepted": 3,
                 "grad_norms": [1.5, 2, 2.5]},
                {"prompt_id": "gsm8k-0002", "samples": 8, "accepted": 2,
                 "grad_norm_sum": 3.0, "grad_norm_count": 2},
                {"prompt_id": "gsm8k-0003", "samples": 8, "accepted": 0},
                {"prompt_id": "gsm8k-0004", "samples": 4, "accepted": 1, "grad_norms": [1.2],
                 "rejected_grad_norms": [0.9, 1.4, 1.1]},
            ]
        }
    )  # fmt: skip

    prompt_id: str = Field(min_length=1, description="Non-empty; GVM_MAX_PROMPT_ID_LENGTH chars.")
    samples: int = Field(ge=1, le=MAX_SAMPLES_PER_OBSERVATION, description="Samples drawn.")
    accepted: int = Field(ge=0, description="Accepted samples, 0..samples.")
    grad_norm_sum: GradNorm | None = Field(
        default=None, description="Sum of the accepted samples' gradient norms."
    )
    grad_norm_count: int | None = Field(
        default=None,
        ge=0,
        description="How many norms are in grad_norm_sum (<= accepted); given with it.",
    )
    grad_norms: list[GradNorm] | None = Field(
        default=None,
        description="The accepted samples' gradient norms (instead of sum and count).",
    )
    rejected_grad_norm_sum: GradNorm | None = Field(
        default=None, description="Optional: sum of rejected samples' gradient norms."
    )
    rejected_grad_norm_count: int | None = Field(
        default=None,
        ge=0,
        description="How many norms are in rejected_grad_norm_sum (<= samples - accepted).",
    )
    rejected_grad_norms: list[GradNorm] | None = Field(
        default=None,
        description="Optional: the rejected samples' gradient norms (instead of sum and count).",
    )


class ReportRequest(WireModel):
    """Observations of one training step; applied all-or-nothing, once per report_id."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "report_id": "run1-step-0042-rank0",
                    "step": 42,
                    "observations": Observation.model_config["json_schema_extra"]["examples"],  # type: ignore[index]
                }
            ]
        }
    )

    report_id: str = Field(
        min_length=1, max_length=128, description="Idempotency key: a retry re-sends the same."
    )
    step: int = Field(ge=0, le=MAX_STEP, description="Training step the samples were drawn at.")
    observations: list[Observation] = Field(min_length=1)


class ReportResult(Answer):
    """How a report was taken: `duplicate` when this report_id had been applied already."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"report_id": "run1-step-0042-rank0", "applied": 3,
                                         "duplicate": False}]}
    )  # fmt: skip

    report_id: str
    applied: int = Field(description="Observations applied by this request (0 for a duplicate).")
    duplicate: bool


class AllocationRequest(WireModel):
    """A batch of prompts and the number of samples to spread over them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"prompt_ids": ["gsm8k-0001", "gsm8k-0002", "gsm8k-0003"],
                          "budget": 24, "step": 43},
                         {"prompt_ids": ["gsm8k-0001", "gsm8k-0002", "gsm8k-0003"],
                          "budget": 16, "step": 43, "drawn": [4, 4, 4],
                          "drawn_accepted": [2, 0, 4]}]
        }
    )  # fmt: skip

    prompt_ids: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        description="Distinct prompt ids; the answer keeps this order.",
        json_schema_extra={"uniqueItems": True},  # checked by check_allocation_limits
    )
    budget: int = Field(ge=0, le=MAX_BUDGET, description="Samples to spread (total <= budget).")
    step: int | None = Field(
        default=None,
        ge=0,
        le=MAX_STEP,
        description="Current training step (for decay); default: the run's last reported step.",
    )
    drawn: list[Annotated[int, Field(ge=0, le=MAX_SAMPLES_PER_OBSERVATION)]] | None = Field(
        default=None,
        description="Top-up: samples of each prompt already drawn this step (and reported), in "
        "the order of prompt_ids. The answer's samples are then the additional ones, budget the "
        "additional budget; min/max_samples bound the totals drawn + samples.",
    )
    drawn_accepted: list[Annotated[int, Field(ge=0, le=MAX_SAMPLES_PER_OBSERVATION)]] | None = (
        Field(
            default=None,
            description="Accepted among drawn (<= drawn, needs drawn); GRPO top-ups use it.",
        )
    )


class AllocationItem(Answer):
    prompt_id: str
    samples: int
    p_hat: float = Field(description="Estimated acceptance rate.")
    g_hat: float = Field(description="Estimated gradient norm of an accepted sample.")
    weight: float = Field(description="Normalised GVM share w_i / sum(w) (uniform: 1/m).")
    reason: Reason = Field(description="Why the prompt got this count.")


class Allocation(Answer):
    """Samples per prompt, in request order, with the predicted variance gain over uniform."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": "raft-qwen-7b-seed1",
                    "step": 43,
                    "strategy": "gvm",
                    "budget": 24,
                    "total": 24,
                    "items": [
                        {"prompt_id": "gsm8k-0001", "samples": 5, "p_hat": 0.4, "g_hat": 2.0,
                         "weight": 0.25, "reason": "gvm"},
                        {"prompt_id": "gsm8k-0002", "samples": 15, "p_hat": 0.05, "g_hat": 1.5,
                         "weight": 0.62, "reason": "gvm"},
                        {"prompt_id": "gsm8k-0003", "samples": 4, "p_hat": 0.01, "g_hat": 1.8,
                         "weight": 0.13, "reason": "explore"},
                    ],
                    "predicted_variance": 1.9,
                    "uniform_variance": 2.6,
                }
            ]
        }
    )  # fmt: skip

    run_id: str
    step: int
    strategy: Strategy
    budget: int
    total: int = Field(description="Sum of items[].samples.")
    items: list[AllocationItem]
    predicted_variance: float = Field(description="Regularised variance objective of this plan.")
    uniform_variance: float = Field(description="The same objective for a uniform plan.")


class AllocationPoint(Answer):
    """One served allocation, as the run page plots it over steps."""

    step: int
    total: int
    predicted_variance: float
    uniform_variance: float


class AllocationHistory(Answer):
    """The run's last allocations (at most 1,000), oldest first."""

    run_id: str
    points: list[AllocationPoint]


class PromptStats(Answer):
    """One prompt's stored statistics (decayed to last_step) and estimates at `step`."""

    prompt_id: str
    samples: float
    accepted: float
    grad_norm_sum: float
    grad_norm_count: float
    rejected_grad_norm_sum: float
    rejected_grad_norm_count: float
    last_step: int
    step: int = Field(description="The step the estimates refer to (the run's last step).")
    p_hat: float
    g_hat: float


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


class ErrorDetail(Answer):
    field: str | None = Field(description="Where: observations[3].accepted, prompt_ids[7], ...")
    rule: str = Field(description="Machine-readable rule, e.g. greater_than_equal.")
    message: str


class ErrorInfo(Answer):
    code: str = Field(description="Stable error code, e.g. invalid_request, run_not_found.")
    message: str
    field: str | None = None
    details: list[ErrorDetail] = Field(default_factory=list)
    request_id: str | None = None


class ErrorResponse(Answer):
    """The one error shape of every 4xx and 5xx answer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "invalid_request",
                        "message": "observations[0].accepted: must be <= samples (8)",
                        "field": "observations[0].accepted",
                        "details": [
                            {
                                "field": "observations[0].accepted",
                                "rule": "accepted_le_samples",
                                "message": "must be <= samples (8)",
                            }
                        ],
                        "request_id": "4f1c2a9e0b7d4c1e",
                    }
                }
            ]
        }
    )

    error: ErrorInfo


class Health(Answer):
    status: Literal["ok"] = "ok"


class Readiness(Answer):
    status: Literal["ready"] = "ready"
    redis: Literal["ok"] = "ok"


__all__ = [
    "Allocation",
    "AllocationItem",
    "AllocationRequest",
    "ErrorResponse",
    "Observation",
    "PromptStats",
    "ReportRequest",
    "ReportResult",
    "Run",
    "RunConfig",
    "RunConfigPatch",
    "RunSummary",
]
