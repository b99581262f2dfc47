"""Pydantic v2 wire models of the v1 API (requests strict, unknown fields rejected).

RunConfig mirrors the engine's `AllocationParams` and takes its defaults from it, so the engine
stays the single source of truth. Limits that come from settings (ids per request, id lengths)
are checked by `check_*` functions after parsing, so the schema stays static.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
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

from budget_service.engine.allocation import AllocationParams, Reason, Strategy
from budget_service.errors import InvalidRequestError
from budget_service.settings import Settings

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
        "algorithm's integers; uniform: budget split evenly.",
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


@lru_cache(maxsize=1024)
def config_from_json(raw: bytes) -> tuple[RunConfig, AllocationParams]:
    """Stored config -> (RunConfig, AllocationParams); cached because every request reads it."""
    config = RunConfig.model_validate_json(raw, strict=False)
    return config, config.to_params()


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
                          "budget": 24, "step": 43}]
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


_MAX_DETAILS = 20  # field errors listed per answer


def _limit_error(field: str, rule: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{field}: {message}", field=field, rule=rule)


# (rows that break the rule, field, rule name, message for row i)
Rule = tuple[NDArray[np.bool_], str, str, Callable[[int], str]]


def check_report(report: ReportRequest, settings: Settings) -> NDArray[np.float64]:
    """The rules that span fields, and settings-driven limits, checked for every observation
    at once (vectorised: 1,024 observations in well under a millisecond). Returns the
    increments (n, 6): samples, accepted, grad_norm_sum, grad_norm_count and the rejected
    samples' norm sum and count."""
    observations = report.observations
    n = len(observations)
    if n > settings.max_report_observations:
        raise _limit_error(
            "observations",
            "max_items",
            f"has {n} items, more than "
            f"GVM_MAX_REPORT_OBSERVATIONS ({settings.max_report_observations})",
        )

    def column(values: Iterable[float], dtype: type = np.float64) -> NDArray[Any]:
        return np.fromiter(values, dtype, n)

    samples = column(o.samples for o in observations)
    accepted = column(o.accepted for o in observations)
    id_length = column((len(o.prompt_id) for o in observations), np.int64)
    limit = settings.max_prompt_id_length
    rules: list[Rule] = [
        (id_length > limit, "prompt_id", "max_length",
         lambda i: f"is {id_length[i]} chars, longer than GVM_MAX_PROMPT_ID_LENGTH ({limit})"),
        (accepted > samples, "accepted", "accepted_le_samples",
         lambda i: f"must be <= samples ({samples[i]:.0f})"),
    ]  # fmt: skip
    norm_sum, norm_count, accepted_rules = _norm_columns(
        observations, "", accepted, "accepted", "accepted"
    )
    rejected = np.maximum(samples - accepted, 0)
    rejected_sum, rejected_count, rejected_rules = _norm_columns(
        observations, "rejected_", rejected, "samples - accepted", "rejected"
    )
    rules += accepted_rules + rejected_rules
    details = [
        {"field": f"observations[{i}].{name}", "rule": rule, "message": message(i)}
        for mask, name, rule, message in rules
        if mask.any()
        for i in np.flatnonzero(mask)[:_MAX_DETAILS].tolist()
    ]
    if details:
        details.sort(key=lambda d: (int(d["field"].split("[")[1].split("]")[0]), d["field"]))
        details = details[:_MAX_DETAILS]
        first = details[0]
        message = f"{first['field']}: {first['message']}"
        if len(details) > 1:
            message += f" (and {len(details) - 1} more)"
        raise InvalidRequestError(
            message, field=first["field"], rule=first["rule"], details=details
        )
    return np.column_stack([samples, accepted, norm_sum, norm_count, rejected_sum, rejected_count])


def _norm_columns(
    observations: Sequence[Observation],
    prefix: str,
    bound: NDArray[np.float64],
    bound_text: str,
    kind: str,
) -> tuple[NDArray[np.float64], NDArray[np.float64], list[Rule]]:
    """Sum and count of one kind of norms (`prefix` "" for the accepted samples', "rejected_"
    for the rejected samples'), from either the list or the pair, and the rules they obey: at
    most `bound` norms per observation."""
    n = len(observations)
    sums = [getattr(o, f"{prefix}grad_norm_sum") for o in observations]
    counts = [getattr(o, f"{prefix}grad_norm_count") for o in observations]
    lists = [getattr(o, f"{prefix}grad_norms") for o in observations]
    has_sum = np.fromiter((v is not None for v in sums), bool, n)
    has_count = np.fromiter((v is not None for v in counts), bool, n)
    has_norms = np.fromiter((v is not None for v in lists), bool, n)
    norm_sum = np.fromiter((v or 0.0 for v in sums), np.float64, n)
    norm_count = np.fromiter((v or 0 for v in counts), np.float64, n)
    for i in np.flatnonzero(has_norms).tolist():
        norm_sum[i], norm_count[i] = math.fsum(lists[i]), len(lists[i])
    names = (f"{prefix}grad_norm_sum", f"{prefix}grad_norm_count", f"{prefix}grad_norms")
    rules: list[Rule] = [
        (has_sum != has_count, names[1], "grad_norm_pair",
         lambda i: f"{names[0]} and {names[1]} must be given together"),
        (has_count & ~has_norms & (norm_count > bound), names[1], f"count_le_{kind}",
         lambda i: f"must be <= {bound_text} ({bound[i]:.0f})"),
        (has_count & has_sum & (norm_count == 0) & (norm_sum > 0), names[1],
         "zero_count_sum", lambda i: f"is 0 but {names[0]} is not"),
        (has_norms & (has_sum | has_count), names[2], "norms_or_sum",
         lambda i: f"give {names[2]} or {names[0]} with {names[1]}, not both"),
        (has_norms & (norm_count > bound), names[2], f"norms_le_{kind}",
         lambda i: f"has {norm_count[i]:.0f} entries, more than {bound_text} ({bound[i]:.0f})"),
    ]  # fmt: skip
    return norm_sum, norm_count, rules


def check_allocation_limits(request: AllocationRequest, settings: Settings) -> None:
    ids = request.prompt_ids
    if len(ids) > settings.max_allocation_prompts:
        raise _limit_error(
            "prompt_ids",
            "max_items",
            f"has {len(ids)} items, more than "
            f"GVM_MAX_ALLOCATION_PROMPTS ({settings.max_allocation_prompts})",
        )
    limit = settings.max_prompt_id_length
    first_index: dict[str, int] = {}
    for j, prompt_id in enumerate(ids):
        if len(prompt_id) > limit:
            raise _limit_error(
                f"prompt_ids[{j}]",
                "max_length",
                f"is {len(prompt_id)} chars, longer than GVM_MAX_PROMPT_ID_LENGTH ({limit})",
            )
        if prompt_id in first_index:
            raise _limit_error(
                f"prompt_ids[{j}]",
                "unique",
                f"repeats prompt_ids[{first_index[prompt_id]}] ({prompt_id!r}); "
                "ids must be distinct",
            )
        first_index[prompt_id] = j


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
