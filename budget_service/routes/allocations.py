"""Allocations: samples per prompt for the next batch, and the last one served."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import numpy as np
import pydantic_core
from fastapi import Response

from budget_service import metrics
from budget_service.deps import SettingsDep, StoreDep
from budget_service.engine import allocate
from budget_service.errors import AllocationNotFoundError
from budget_service.limits import check_allocation_limits
from budget_service.routes import RunIdPath, run_estimates, v1_router
from budget_service.schemas import (
    Allocation,
    AllocationHistory,
    AllocationPoint,
    AllocationRequest,
)
from budget_service.store import HistoryPoint, Snapshot

router = v1_router("allocations")

# Above this many prompts the numpy work (~ms) moves off the event loop.
_THREAD_THRESHOLD = 8192


def _plan(run_id: str, request: AllocationRequest, snapshot: Snapshot) -> dict[str, Any]:
    step = request.step if request.step is not None else max(snapshot.totals.last_step, 0)
    params, estimates = run_estimates(snapshot.config_json, snapshot.stats, snapshot.totals, step)
    plan = allocate(estimates, request.budget, params, request.drawn, request.drawn_accepted)
    for name, values in (
        ("p_hat", estimates.p_hat),
        ("g_hat", estimates.g_hat),
        ("weight", plan.weights),
        ("variance", np.array([plan.predicted_variance, plan.uniform_variance])),
    ):
        if not np.isfinite(values).all():  # JSON has no NaN: a bug in the engine, not the input
            raise ValueError(f"allocation produced a non-finite {name}")
    items = [
        {"prompt_id": i, "samples": n, "p_hat": p, "g_hat": g, "weight": w, "reason": str(r)}
        for i, n, p, g, w, r in zip(
            request.prompt_ids,
            plan.samples.tolist(),
            estimates.p_hat.tolist(),
            estimates.g_hat.tolist(),
            plan.weights.tolist(),
            plan.reasons,
            strict=True,
        )
    ]
    return {
        "run_id": run_id,
        "step": step,
        "strategy": params.strategy,
        "budget": request.budget,
        "total": int(plan.total),
        "items": items,
        "predicted_variance": float(plan.predicted_variance),
        "uniform_variance": float(plan.uniform_variance),
    }


@router.post("/{run_id}/allocations", response_model=Allocation)
async def create_allocation(
    run_id: RunIdPath, request: AllocationRequest, store: StoreDep, settings: SettingsDep
) -> Response:
    """Allocate `budget` samples over `prompt_ids` (answer in request order) and remember it."""
    check_allocation_limits(request, settings)
    snapshot = await store.read_batch(run_id, request.prompt_ids)
    if len(request.prompt_ids) >= _THREAD_THRESHOLD:
        body = await anyio.to_thread.run_sync(_plan, run_id, request, snapshot)
    else:
        body = _plan(run_id, request, snapshot)
    # Serialised straight from dicts (the schema above documents it; tests validate answers
    # against it): 1,024 items through model instances would cost more than the Redis round trip.
    payload = pydantic_core.to_json(body)
    point = HistoryPoint(
        body["step"], body["total"], body["predicted_variance"], body["uniform_variance"]
    )
    await store.save_allocation(run_id, payload, point)
    metrics.ALLOCATIONS.labels(strategy=body["strategy"]).inc()
    metrics.ALLOCATION_PROMPTS.observe(len(request.prompt_ids))
    metrics.ALLOCATION_SAMPLES.observe(body["total"])
    return Response(payload, media_type="application/json")


@router.get("/{run_id}/allocations/latest", response_model=Allocation)
async def get_latest_allocation(run_id: RunIdPath, store: StoreDep) -> Response:
    """The last allocation served for the run (by any replica)."""
    payload = await store.latest_allocation(run_id)
    if payload is None:
        raise AllocationNotFoundError(run_id)
    return Response(payload, media_type="application/json")


@router.get("/{run_id}/allocations/history", response_model=AllocationHistory)
async def get_allocation_history(run_id: RunIdPath, store: StoreDep) -> AllocationHistory:
    """Step, total and predicted against uniform variance of the run's last 1,000 allocations."""
    points = await store.allocation_history(run_id)
    return AllocationHistory(
        run_id=run_id,
        points=[AllocationPoint.model_validate(p, from_attributes=True) for p in points],
    )
