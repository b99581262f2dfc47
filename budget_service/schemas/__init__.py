"""Pydantic v2 wire models of the v1 API (requests strict, unknown fields rejected), by resource.

Pure schemas: nothing here reads settings. Limits that come from settings (ids per request, id
lengths) and the rules that span a report's fields are checked after parsing by `limits.py`, so
the schema stays static.
"""

from budget_service.schemas.allocations import (
    Allocation,
    AllocationHistory,
    AllocationItem,
    AllocationPoint,
    AllocationRequest,
)
from budget_service.schemas.common import RUN_ID_PATTERN
from budget_service.schemas.errors import ErrorResponse
from budget_service.schemas.observations import Observation, ReportRequest, ReportResult
from budget_service.schemas.ops import Health, Readiness
from budget_service.schemas.prompts import PromptStats
from budget_service.schemas.runs import (
    Histogram,
    Run,
    RunConfig,
    RunConfigPatch,
    RunSummary,
    from_ms,
    merge_config,
)

__all__ = [
    "RUN_ID_PATTERN",
    "Allocation",
    "AllocationHistory",
    "AllocationItem",
    "AllocationPoint",
    "AllocationRequest",
    "ErrorResponse",
    "Health",
    "Histogram",
    "Observation",
    "PromptStats",
    "Readiness",
    "ReportRequest",
    "ReportResult",
    "Run",
    "RunConfig",
    "RunConfigPatch",
    "RunSummary",
    "from_ms",
    "merge_config",
]
