"""The allocation math: pure numpy, no web framework, no Redis.

`estimate` turns stored statistics into per-prompt estimates; `allocate` turns estimates and a
budget into integer sample counts. The service's routes call these two and nothing else here.
"""

from budget_service.engine.allocation import (
    Algo,
    AllocationError,
    AllocationParams,
    AllocationPlan,
    InfeasibleBudgetError,
    InvalidStatisticsError,
    Reason,
    Strategy,
    allocate,
)
from budget_service.engine.estimates import Estimates, PromptStatistics, RunTotals, estimate

__all__ = [
    "Algo",
    "AllocationError",
    "AllocationParams",
    "AllocationPlan",
    "Estimates",
    "InfeasibleBudgetError",
    "InvalidStatisticsError",
    "PromptStatistics",
    "Reason",
    "RunTotals",
    "Strategy",
    "allocate",
    "estimate",
]
