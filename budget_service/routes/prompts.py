"""Prompts: one prompt's stored statistics and current estimates."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from budget_service.deps import StoreDep
from budget_service.errors import PromptNotFoundError
from budget_service.routes import RunIdPath, run_estimates, v1_router
from budget_service.schemas import PromptStats

router = v1_router("prompts")


@router.get("/{run_id}/prompts/{prompt_id:path}", response_model=PromptStats)
async def get_prompt(
    run_id: RunIdPath,
    prompt_id: Annotated[str, Path(description="URL-encoded prompt id; '/' is allowed.")],
    store: StoreDep,
) -> PromptStats:
    """Stored statistics (decayed to last_step) and estimates at the run's last step."""
    snapshot = await store.read_batch(run_id, [prompt_id])
    if not snapshot.seen[0]:
        raise PromptNotFoundError(run_id, prompt_id)
    step = max(snapshot.totals.last_step, 0)
    _, estimates = run_estimates(snapshot.config_json, snapshot.stats, snapshot.totals, step)
    stats = snapshot.stats
    rejected_sum, rejected_count = stats.rejected_norms()
    return PromptStats(
        prompt_id=prompt_id,
        samples=float(stats.samples[0]),
        accepted=float(stats.accepted[0]),
        grad_norm_sum=float(stats.grad_norm_sum[0]),
        grad_norm_count=float(stats.grad_norm_count[0]),
        rejected_grad_norm_sum=float(rejected_sum[0]),
        rejected_grad_norm_count=float(rejected_count[0]),
        last_step=int(stats.last_step[0]),
        step=step,
        p_hat=float(estimates.p_hat[0]),
        g_hat=float(estimates.g_hat[0]),
    )
