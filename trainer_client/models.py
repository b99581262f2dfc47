"""The client's own models of the v1 wire format.

Deliberately separate from the service's models: a trainer installs only ``httpx`` and
``pydantic``. Answers ignore fields this client does not know (the service may add fields);
requests carry only what the caller set. Tests against the live service keep the two in step.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "Allocation",
    "AllocationItem",
    "Histogram",
    "Observation",
    "PromptStats",
    "ReportResult",
    "Run",
    "RunConfig",
    "RunSummary",
    "Strategy",
]

Strategy = Literal["gvm", "gvm-paper", "uniform", "knapsack"]

# The service's bounds on an observation (tests/support/cases.py runs one table against both).
MAX_SAMPLES_PER_OBSERVATION = 1_000_000_000
MAX_GRAD_NORM = 1e15
GradNorm = Annotated[float, Field(ge=0, le=MAX_GRAD_NORM, allow_inf_nan=False)]


class _Answer(BaseModel):
    """A model of something the service sends: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class RunConfig(BaseModel):
    """How the service allocates for a run. Unset fields take the service's defaults.

    Only the fields you set are sent (``PUT`` replaces the whole config, so unset fields go back
    to their defaults; ``PATCH`` changes only the fields you set). A run read back from the
    service has every field set. Fields this client does not know are kept and sent back.
    """

    model_config = ConfigDict(extra="allow")

    strategy: Strategy | None = None
    alpha: float | None = None
    beta: float | None = None
    min_samples: int | None = None
    max_samples: int | None = None
    align_to: int | None = None
    filter_threshold: float | None = None
    filter_insufficient: float | None = None
    prior_strength: float | None = None
    half_life_steps: float | None = None
    explore_samples: int | None = None
    algo: Literal["raft", "grpo"] | None = None

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class Run(_Answer):
    run_id: str
    config: RunConfig
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Observation(BaseModel):
    """What a trainer saw for one prompt: samples drawn, how many were accepted, and optionally
    the gradient norms of the accepted ones (a list, or their sum and count) and of the rejected
    ones (the same, ``rejected_`` in front: optional, they give prompts with few or no accepted
    samples a gradient norm of their own).

    Checked here with the service's rules, each error naming the same field and rule as the
    service's 422, so a report that goes to the spool is one the service will accept later.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_id: str = Field(min_length=1)
    samples: int = Field(ge=1, le=MAX_SAMPLES_PER_OBSERVATION)
    accepted: int = Field(ge=0)
    grad_norms: list[GradNorm] | None = None
    grad_norm_sum: GradNorm | None = None
    grad_norm_count: int | None = Field(default=None, ge=0)
    rejected_grad_norms: list[GradNorm] | None = None
    rejected_grad_norm_sum: GradNorm | None = None
    rejected_grad_norm_count: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check(self) -> Observation:
        errors: list[InitErrorDetails] = []
        if self.accepted > self.samples:
            message = f"must be <= samples ({self.samples})"
            errors.append(_error(self, "accepted", "accepted_le_samples", message))
        rejected = max(self.samples - self.accepted, 0)
        errors += _norm_errors(self, "", self.accepted, "accepted", "accepted")
        errors += _norm_errors(self, "rejected_", rejected, "samples - accepted", "rejected")
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _error(observation: Observation, field: str, rule: str, message: str) -> InitErrorDetails:
    """An error on `field` named like the service's (``rule`` is its ``details[].rule``)."""
    return InitErrorDetails(
        type=PydanticCustomError(rule, message),
        loc=(field,),
        input=getattr(observation, field),
    )


def _norm_errors(
    observation: Observation, prefix: str, most: int, most_text: str, kind: str
) -> list[InitErrorDetails]:
    """One kind of norms (`prefix` "" for the accepted samples', "rejected_" for the rejected
    samples'): a list, or sum and count together, at most `most` of them."""
    total_name, count_name, list_name = (
        f"{prefix}grad_norm_sum", f"{prefix}grad_norm_count", f"{prefix}grad_norms"
    )  # fmt: skip
    total = getattr(observation, total_name)
    count = getattr(observation, count_name)
    norms = getattr(observation, list_name)
    rules = [
        ((total is None) != (count is None), count_name, "grad_norm_pair",
         f"{total_name} and {count_name} must be given together"),
        (norms is None and count is not None and count > most, count_name, f"count_le_{kind}",
         f"must be <= {most_text} ({most})"),
        (count == 0 and bool(total), count_name, "zero_count_sum",
         f"is 0 but {total_name} is not"),
        (norms is not None and (total is not None or count is not None), list_name,
         "norms_or_sum", f"give {list_name} or {total_name} with {count_name}, not both"),
        (norms is not None and len(norms) > most, list_name, f"norms_le_{kind}",
         f"has {len(norms or ())} entries, more than {most_text} ({most})"),
    ]  # fmt: skip
    return [_error(observation, field, rule, text) for broken, field, rule, text in rules if broken]


class ReportResult(_Answer):
    """The answer to a report. ``spooled`` is set by the client when the service was unreachable
    and the report went to the local spool (it will be sent again later)."""

    report_id: str = ""
    applied: int = 0
    duplicate: bool = False
    spooled: bool = False


class AllocationItem(_Answer):
    prompt_id: str
    samples: int
    p_hat: float | None = None
    g_hat: float | None = None
    weight: float | None = None
    reason: str = ""


class Allocation(_Answer):
    """Samples per prompt, in the order of the request.

    ``fallback`` is True when the service was unreachable and the client split the budget evenly
    itself (then the estimates and variances are None).
    """

    run_id: str
    step: int
    strategy: str
    budget: int
    total: int
    items: list[AllocationItem]
    predicted_variance: float | None = None
    uniform_variance: float | None = None
    fallback: bool = False

    @property
    def counts(self) -> list[int]:
        """``items[i].samples`` for each prompt, in request order."""
        return [item.samples for item in self.items]


class PromptStats(_Answer):
    """One prompt's statistics as stored (after decay) and the service's current estimates."""

    prompt_id: str
    samples: float
    accepted: float
    grad_norm_sum: float
    grad_norm_count: float
    rejected_grad_norm_sum: float = 0.0  # services from before the rejected samples' norms
    rejected_grad_norm_count: float = 0.0
    last_step: int
    step: int | None = None  # the step the estimates refer to
    p_hat: float
    g_hat: float


class Histogram(_Answer):
    edges: list[float]  # len(counts) + 1 bin edges
    counts: list[int]


class RunSummary(_Answer):
    """Counts and pooled rates of a run (decayed totals) and how its prompts' p_hat spread."""

    run_id: str
    prompts: int
    reports: int = 0
    samples: float
    accepted: float
    grad_norm_sum: float = 0.0
    grad_norm_count: float = 0.0
    rejected_grad_norm_sum: float = 0.0
    rejected_grad_norm_count: float = 0.0
    last_step: int = 0
    pooled_p: float | None = None
    pooled_g: float | None = None
    p_hat_histogram: Histogram | None = None
