"""Run state in Redis: hash-tagged keys, one Lua script per write, one round trip per read.

Read top-down: keys.py (the key layout, one Cluster slot per run), records.py (what the store
takes and returns, and the 56-byte binary record), scripts.py (the Lua scripts: one atomic report
with idempotency and decay, one snapshot read), connection.py (the Redis client, one server or a
Cluster; outage errors; replica acknowledgement), store.py (`Store`, what the routes call; no
`redis.*` exception leaves it).
"""

from budget_service.store.keys import HISTORY_MAX, run_keys
from budget_service.store.records import (
    AppliedReport,
    HistoryPoint,
    Report,
    RunCounts,
    RunRecord,
    Snapshot,
    config_to_json,
)
from budget_service.store.store import Store

__all__ = [
    "HISTORY_MAX",
    "AppliedReport",
    "HistoryPoint",
    "Report",
    "RunCounts",
    "RunRecord",
    "Snapshot",
    "Store",
    "config_to_json",
    "run_keys",
]
