"""Runs: create or replace, read, patch, delete, summarise."""

from __future__ import annotations

import numpy as np
from fastapi import Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from budget_service.deps import StoreDep
from budget_service.errors import ConflictError
from budget_service.routes import RunIdPath, config_from_json, run_estimates, v1_router
from budget_service.schemas import (
    Histogram,
    Run,
    RunConfig,
    RunConfigPatch,
    RunSummary,
    from_ms,
    merge_config,
)
from budget_service.store import RunRecord, config_to_json

router = v1_router("runs")

_PATCH_ATTEMPTS = 10
_HISTOGRAM_BINS = 10


def _run(record: RunRecord) -> Run:
    config, _ = config_from_json(record.config_json)
    return Run(
        run_id=record.run_id,
        config=config,
        created_at=from_ms(record.created_at_ms),
        updated_at=from_ms(record.updated_at_ms),
    )


@router.put(
    "/{run_id}",
    response_model=Run,
    responses={201: {"model": Run, "description": "Created."}, 200: {"description": "Replaced."}},
)
async def put_run(run_id: RunIdPath, config: RunConfig, store: StoreDep, response: Response) -> Run:
    """Create a run (201) or replace its config (200); its statistics are kept."""
    created = await store.put_run(
        run_id, config_to_json(config.model_dump(mode="json")), config.half_life_steps
    )
    response.status_code = 201 if created else 200
    return _run(await store.get_run(run_id))


@router.get("/{run_id}", response_model=Run)
async def get_run(run_id: RunIdPath, store: StoreDep) -> Run:
    """Read a run's config."""
    return _run(await store.get_run(run_id))


@router.patch("/{run_id}", response_model=Run)
async def patch_run(run_id: RunIdPath, patch: RunConfigPatch, store: StoreDep) -> Run:  # type: ignore[valid-type]
    """Change some config fields; the others keep their values."""
    for _ in range(_PATCH_ATTEMPTS):
        record = await store.get_run(run_id)
        current, _params = config_from_json(record.config_json)
        try:
            merged = merge_config(current, patch)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        new_json = config_to_json(merged.model_dump(mode="json"))
        if await store.replace_config_if(
            run_id, record.config_json, new_json, merged.half_life_steps
        ):
            return _run(await store.get_run(run_id))
    raise ConflictError(f"run {run_id!r}'s config kept changing; retry the PATCH")


@router.delete("/{run_id}", status_code=204, response_class=Response)
async def delete_run(run_id: RunIdPath, store: StoreDep) -> Response:
    """Delete a run with its config, statistics, report ids and allocations."""
    await store.delete_run(run_id)
    return Response(status_code=204)


@router.get("/{run_id}/summary", response_model=RunSummary)
async def get_summary(run_id: RunIdPath, store: StoreDep) -> RunSummary:
    """Counts, pooled rates and a p_hat histogram (reads every prompt: O(prompts))."""
    counts = await store.counts(run_id)
    totals = counts.totals
    step = max(totals.last_step, 0)
    edges = np.linspace(0.0, 1.0, _HISTOGRAM_BINS + 1)
    histogram = np.zeros(_HISTOGRAM_BINS, dtype=np.int64)
    async for page in store.scan_statistics(run_id):
        _, estimates = run_estimates(counts.config_json, page, totals, step)
        histogram += np.histogram(np.clip(estimates.p_hat, 0.0, 1.0), bins=edges)[0]
    return RunSummary(
        run_id=run_id,
        prompts=counts.prompts,
        reports=counts.reports,
        samples=totals.samples,
        accepted=totals.accepted,
        grad_norm_sum=totals.grad_norm_sum,
        grad_norm_count=totals.grad_norm_count,
        rejected_grad_norm_sum=totals.rejected_grad_norm_sum,
        rejected_grad_norm_count=totals.rejected_grad_norm_count,
        last_step=totals.last_step,
        pooled_p=totals.accepted / totals.samples if totals.samples > 0 else None,
        pooled_g=(
            totals.grad_norm_sum / totals.grad_norm_count if totals.grad_norm_count > 0 else None
        ),
        p_hat_histogram=Histogram(edges=edges.tolist(), counts=histogram.tolist()),
    )
