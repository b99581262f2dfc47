"""GVM Budget client: ask the service how many samples each prompt gets, report what you saw.

    from trainer_client import BudgetClient

    with BudgetClient("http://127.0.0.1:8000", spool_path="reports.spool.jsonl") as client:
        client.put_run("my-run", strategy="gvm", min_samples=2)
        allocation = client.allocate("my-run", ["p1", "p2"], budget=16, step=0)
        client.report("my-run", 0, [{"prompt_id": "p1", "samples": 8, "accepted": 3}])

Needs only ``httpx`` and ``pydantic`` (no torch). The trainer lives in ``trainer_client.trainer``.
"""

from ._retry import RetryPolicy
from ._version import __version__
from .client import AsyncBudgetClient, BudgetClient, ClientStats
from .errors import (
    AuthenticationError,
    BudgetError,
    ConflictError,
    ConnectionFailedError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RequestError,
    ServerError,
    SpoolError,
    UnavailableError,
)
from .models import (
    Allocation,
    AllocationItem,
    Histogram,
    Observation,
    PromptStats,
    ReportResult,
    Run,
    RunConfig,
    RunSummary,
    Strategy,
)
from .spool import Spool

__all__ = [
    "Allocation",
    "AllocationItem",
    "AsyncBudgetClient",
    "AuthenticationError",
    "BudgetClient",
    "BudgetError",
    "ClientStats",
    "ConflictError",
    "ConnectionFailedError",
    "Histogram",
    "InvalidRequestError",
    "NotFoundError",
    "Observation",
    "PromptStats",
    "ProtocolError",
    "ReportResult",
    "RequestError",
    "RetryPolicy",
    "Run",
    "RunConfig",
    "RunSummary",
    "ServerError",
    "Spool",
    "SpoolError",
    "Strategy",
    "UnavailableError",
    "__version__",
]
