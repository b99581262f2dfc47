"""What the store takes and returns, and the binary form of what it keeps.

A record is 56 bytes, seven little-endian float64: samples, accepted, grad_norm_sum,
grad_norm_count, last_step, rejected_grad_norm_sum, rejected_grad_norm_count. Binary keeps every
bit (no decimal round trip) and lets a read of 1,024 prompts be one `numpy.frombuffer` instead
of 7,168 float parses. Records written before the rejected samples' norms existed are the first
40 bytes of that layout: every script and read takes them as zeros for the last two fields.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from budget_service.engine import PromptStatistics, RunTotals

RECORD: Final = np.dtype("<f8")
# samples, accepted, grad_norm_sum, grad_norm_count, last_step, rejected sum, rejected count
RECORD_FIELDS: Final = 7
RECORD_BYTES: Final = RECORD_FIELDS * RECORD.itemsize
_MISSING: Final = bytes(RECORD_BYTES)


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    config_json: bytes
    created_at_ms: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class Report:
    """A validated report, flattened: one row of `increments` per prompt id, in order."""

    report_id: str
    step: int
    prompt_ids: Sequence[str]
    increments: NDArray[np.float64]  # (n, 6): the record's fields but last_step, in its order


@dataclass(frozen=True, slots=True)
class AppliedReport:
    """What `apply_report` did: observations applied, or nothing for a repeated report_id."""

    applied: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What an allocation needs, read in one round trip."""

    config_json: bytes
    totals: RunTotals
    stats: PromptStatistics
    seen: NDArray[np.bool_]  # False where the prompt has no stored record


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One allocation in a run's history (step and total are exact in float64)."""

    step: int
    total: int
    predicted_variance: float
    uniform_variance: float


@dataclass(frozen=True, slots=True)
class RunCounts:
    config_json: bytes
    totals: RunTotals
    prompts: int
    reports: int  # report ids still remembered (inside the idempotency window)


def unpack_records(values: Sequence[bytes | None]) -> NDArray[np.float64]:
    """Decode packed records into an (n, 7) array; missing records are zeros, and so are the
    rejected norms of a record of the older 40-byte layout."""
    return unpack_blob(
        b"".join(_MISSING if v is None else v.ljust(RECORD_BYTES, b"\0") for v in values)
    )


def unpack_blob(blob: bytes) -> NDArray[np.float64]:
    return np.frombuffer(blob, dtype=RECORD).reshape(-1, RECORD_FIELDS)


def pack_increments(increments: NDArray[np.float64]) -> bytes:
    return np.ascontiguousarray(increments, dtype=RECORD).tobytes()


def pack_ids(prompt_ids: Sequence[str]) -> tuple[bytes, bytes]:
    """(uint32 LE byte lengths, concatenated UTF-8): two arguments for any number of ids."""
    encoded = [pid.encode() for pid in prompt_ids]
    lengths = np.fromiter(map(len, encoded), dtype="<u4", count=len(encoded))
    return lengths.tobytes(), b"".join(encoded)


def to_totals(value: bytes | None) -> RunTotals:
    s, a, gs, gc, last, rs, rc = unpack_records([value])[0]
    return RunTotals(
        samples=float(s),
        accepted=float(a),
        grad_norm_sum=float(gs),
        grad_norm_count=float(gc),
        last_step=int(last),
        rejected_grad_norm_sum=float(rs),
        rejected_grad_norm_count=float(rc),
    )


def to_statistics(records: NDArray[np.float64]) -> PromptStatistics:
    return PromptStatistics(
        samples=records[:, 0].copy(),
        accepted=records[:, 1].copy(),
        grad_norm_sum=records[:, 2].copy(),
        grad_norm_count=records[:, 3].copy(),
        last_step=records[:, 4].astype(np.int64),
        rejected_grad_norm_sum=records[:, 5].copy(),
        rejected_grad_norm_count=records[:, 6].copy(),
    )


def pack_point(point: HistoryPoint) -> bytes:
    return np.array(astuple(point), dtype=RECORD).tobytes()


def unpack_points(values: Sequence[bytes]) -> list[HistoryPoint]:
    rows = np.frombuffer(b"".join(values), dtype=RECORD).reshape(-1, 4)
    return [
        HistoryPoint(int(step), int(total), predicted, uniform)
        for step, total, predicted, uniform in rows.tolist()
    ]


def config_to_json(config: dict[str, Any]) -> str:
    """Canonical JSON for a stored config (sorted keys: equal configs give equal bytes)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
