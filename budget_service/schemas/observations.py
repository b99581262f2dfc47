"""A report of one training step's observations, and how it was taken."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from budget_service.schemas.common import (
    MAX_SAMPLES_PER_OBSERVATION,
    MAX_STEP,
    Answer,
    WireModel,
)

MAX_GRAD_NORM = 1e15  # keeps sums of many reports finite in float64
GradNorm = Annotated[float, Field(ge=0, le=MAX_GRAD_NORM, allow_inf_nan=False)]


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
