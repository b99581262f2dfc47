"""Key layout. Every key of a run carries the hash tag `{run_id}`, so a run lives on one Redis
Cluster slot and every script touches keys of one slot only:

    gvm:{RUN}:run      hash    config (RunConfig JSON), half_life ("" = no decay),
                               created_at, updated_at (Unix ms)
    gvm:{RUN}:stats    hash    prompt_id -> record (records.py)
    gvm:{RUN}:totals   string  record pooled over every prompt of the run
    gvm:{RUN}:reports  zset    report_id -> Redis server time (ms) it was applied
    gvm:{RUN}:latest   string  JSON of the last Allocation served
    gvm:{RUN}:history  list    the last HISTORY_MAX allocations' step, total, predicted and
                               uniform variance (four little-endian float64 each, oldest first)
"""

from __future__ import annotations

from typing import Final

_KEY_NAMES: Final = ("run", "stats", "totals", "reports", "latest", "history")
HISTORY_MAX: Final = 1000  # allocations kept per run for the run page's curves (32 KB)


def run_keys(run_id: str) -> tuple[str, ...]:
    """All keys of a run, in the order the scripts expect them."""
    tag = f"gvm:{{{run_id}}}"
    return tuple(f"{tag}:{name}" for name in _KEY_NAMES)
