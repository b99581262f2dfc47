"""An allocation request, its answer, and the run's history of served allocations."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from budget_service.engine import Reason, Strategy
from budget_service.schemas.common import (
    MAX_SAMPLES_PER_OBSERVATION,
    MAX_STEP,
    Answer,
    WireModel,
)

MAX_BUDGET = 1_000_000_000_000


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
