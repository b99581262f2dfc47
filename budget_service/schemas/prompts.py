"""One prompt's statistics and estimates."""

from __future__ import annotations

from pydantic import Field

from budget_service.schemas.common import Answer


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
