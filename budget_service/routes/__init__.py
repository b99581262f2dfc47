"""One router per resource, and what the routes share: the run-id path, the run's stored config
and the estimates it gives. Every /v1 route needs a bearer token when GVM_API_TOKENS is set."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, Path

from budget_service.auth import require_token
from budget_service.engine import (
    AllocationParams,
    Estimates,
    PromptStatistics,
    RunTotals,
    estimate,
)
from budget_service.exception_handlers import ERROR_RESPONSES
from budget_service.schemas import RUN_ID_PATTERN, RunConfig

RunIdPath = Annotated[
    str,
    Path(
        pattern=RUN_ID_PATTERN,
        description="1-128 chars of letters, digits and ._:@=+- (first: letter or digit).",
        examples=["raft-qwen-7b-seed1"],
    ),
]


def v1_router(tag: str) -> APIRouter:
    return APIRouter(
        prefix="/v1/runs",
        tags=[tag],
        dependencies=[Depends(require_token)],
        responses=ERROR_RESPONSES,
    )


@lru_cache(maxsize=1024)
def config_from_json(raw: bytes) -> tuple[RunConfig, AllocationParams]:
    """Stored config -> (RunConfig, AllocationParams); cached because every request reads it."""
    config = RunConfig.model_validate_json(raw, strict=False)
    return config, config.to_params()


def run_estimates(
    config_json: bytes, stats: PromptStatistics, totals: RunTotals, step: int
) -> tuple[AllocationParams, Estimates]:
    """A run's stored config and statistics -> its params and the estimates at `step`."""
    _, params = config_from_json(config_json)
    return params, estimate(stats, totals, step, params)
