"""The allocation math: pure numpy, no web framework, no Redis.

`estimate` turns stored statistics into per-prompt estimates; `allocate` turns estimates and a
budget into integer sample counts. The service's routes call these two and nothing else here.

Read top-down: params.py (what goes in and out), cost.py (the objective), estimates.py
(statistics -> estimates), solver.py (the exact integer minimiser), paper.py (the published
rule), allocate.py (the entry point, one branch per strategy).
"""

from budget_service.engine.allocate import allocate
from budget_service.engine.cost import objective, regularised_cost
from budget_service.engine.estimates import (
    Estimates,
    PromptStatistics,
    RunTotals,
    estimate,
    posterior_expected_cost,
    posterior_mean,
)
from budget_service.engine.params import (
    Algo,
    AllocationError,
    AllocationParams,
    AllocationPlan,
    InfeasibleBudgetError,
    InvalidStatisticsError,
    Reason,
    Strategy,
)
from budget_service.engine.solver import continuous_allocation

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
    "continuous_allocation",
    "estimate",
    "objective",
    "posterior_expected_cost",
    "posterior_mean",
    "regularised_cost",
]
