"""A local, append-only spool of reports the service has not acknowledged yet.

When the service stays unreachable, ``report()`` writes the report here instead of failing; the
next successful call (or ``flush()``) sends the spooled reports again, oldest first, with their
original ``report_id``, so the service applies each exactly once even if an earlier attempt did
reach it.

File format: JSON lines, one record each, only ever appended::

    {"kind": "report", "run_id": ..., "report_id": ..., "step": ..., "observations": [...]}
    {"kind": "done", "report_id": ..., "outcome": "applied" | "duplicate" | "rejected"}

A report is pending until a ``done`` record names it. Each report record is fsync'd before
``report()`` returns. A process killed mid-write leaves at most a torn last line: it is dropped on
the next open (that report never returned, so nobody relied on it; a torn ``done`` record only
means one more, harmless, replay). When nothing is pending the file is truncated to empty.

Reports the service rejects with a 4xx on replay (say, the run was deleted) cannot succeed later;
they are marked ``rejected`` and copied to ``<path>.rejected.jsonl`` so they neither block the
queue nor vanish.

One spool file belongs to one client at a time: the file is locked (``flock``) while open. A
``Spool`` is safe to share between threads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import SpoolError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock, same file format
    fcntl = None  # type: ignore[assignment]

__all__ = ["Outcome", "Spool", "SpooledReport"]

logger = logging.getLogger("trainer_client")

Outcome = Literal["applied", "duplicate", "rejected"]


@dataclass(frozen=True, slots=True)
class SpooledReport:
    """One report as it goes on the wire (``observations`` already in their JSON form)."""

    run_id: str
    report_id: str
    step: int
    observations: list[dict[str, Any]]


class Spool:
    """Pending reports, in a file (``path``) or, with ``path=None``, only in memory.

    The in-memory spool keeps training going through an outage but does not survive the process.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._pending: dict[str, SpooledReport] = {}  # report_id -> report, oldest first
        self._path = None if path is None else Path(path)
        self._fd: int | None = None
        self._lock = threading.Lock()
        if self._path is not None:
            self._open(self._path)

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def rejected_path(self) -> Path | None:
        return None if self._path is None else self._path.with_name(self._path.name + ".rejected")

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[SpooledReport]:
        """The pending reports, oldest first (a snapshot: safe to ``mark`` while iterating)."""
        with self._lock:
            return iter(list(self._pending.values()))

    def oldest(self) -> SpooledReport | None:
        """The report that has waited longest, or None when nothing is pending."""
        with self._lock:
            return next(iter(self._pending.values()), None)

    def append(self, report: SpooledReport) -> None:
        """Add a report; with a file, it is on disk (fsync'd) when this returns."""
        with self._lock:
            if report.report_id in self._pending:
                return
            self._write({"kind": "report", **asdict(report)}, sync=True)
            self._pending[report.report_id] = report

    def mark(self, report_id: str, outcome: Outcome) -> None:
        """Record that the service answered for a pending report; it is no longer pending."""
        with self._lock:
            report = self._pending.pop(report_id, None)
            if report is None:
                return
            if outcome == "rejected":
                self._reject(report)
            self._write({"kind": "done", "report_id": report_id, "outcome": outcome}, sync=False)
            if not self._pending:
                self._truncate()

    def close(self) -> None:
        """Release the file (and its lock). Pending reports stay in it for the next open."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    # -- file handling ----------------------------------------------------------------------

    def _open(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise SpoolError(f"cannot open the spool file {path}: {exc}") from exc
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                raise SpoolError(
                    f"the spool file {path} is in use by another client; give each client "
                    "(each trainer process) its own spool path"
                ) from exc
        self._fd = fd
        try:
            self._load(path)
        except BaseException:
            self.close()
            raise

    def _load(self, path: Path) -> None:
        assert self._fd is not None
        data = path.read_bytes()
        lines = data.split(b"\n")  # a complete file ends with "\n", so the last item is b""
        offset = 0  # byte offset after the last good record
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                offset += len(line) + (number < len(lines))
                continue
            is_last = number == len(lines) or (number == len(lines) - 1 and not lines[-1])
            try:
                if number == len(lines):
                    raise ValueError("no trailing newline")
                self._replay_record(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                if not is_last:
                    raise SpoolError(f"spool {path}, line {number}: unreadable ({exc})") from exc
                logger.warning("spool %s: dropping a torn last line (%s)", path, exc)
                break
            offset += len(line) + 1
        if offset < len(data):
            os.ftruncate(self._fd, offset)
        if not self._pending:
            self._truncate()
        else:
            logger.info("spool %s: %d pending report(s) to replay", path, len(self._pending))

    def _replay_record(self, record: dict[str, Any]) -> None:
        if record["kind"] == "report":
            report = SpooledReport(
                run_id=str(record["run_id"]),
                report_id=str(record["report_id"]),
                step=int(record["step"]),
                observations=list(record["observations"]),
            )
            self._pending[report.report_id] = report
        elif record["kind"] == "done":
            self._pending.pop(str(record["report_id"]), None)
        else:
            raise ValueError(f"unknown record kind {record['kind']!r}")

    def _write(self, record: dict[str, Any], *, sync: bool) -> None:
        if self._fd is None:
            if self._path is not None:
                raise SpoolError(f"the spool {self._path} is closed")
            return
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        try:
            os.write(self._fd, line)  # O_APPEND: one write, one whole line at the end
            if sync:
                os.fsync(self._fd)
        except OSError as exc:
            raise SpoolError(f"cannot write the spool file {self._path}: {exc}") from exc

    def _truncate(self) -> None:
        if self._fd is not None:
            with suppress(OSError):  # only space is lost if this fails; the records stay valid
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)

    def _reject(self, report: SpooledReport) -> None:
        target = self.rejected_path
        if target is None:
            logger.error("dropping spooled report %s: the service rejected it", report.report_id)
            return
        line = json.dumps(asdict(report), separators=(",", ":")) + "\n"
        try:
            with target.open("a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            raise SpoolError(f"cannot write {target}: {exc}") from exc
        logger.error(
            "spooled report %s was rejected by the service; kept in %s", report.report_id, target
        )
