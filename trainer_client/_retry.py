"""Retry policy as pure code: which outcomes are retried and how long to wait (no I/O, no sleep).

Both clients drive the same ``RetryState``; they differ only in how they sleep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# 5xx and 429 are worth another try; other 4xx answers mean the request itself is wrong.
RETRY_STATUS_CODES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After``.

    Attempt k (k = 1, 2, ...) failing waits ``uniform(0, min(max_backoff, backoff * 2**(k-1)))``
    seconds, or what ``Retry-After`` asks (capped at ``max_backoff``). ``attempts`` counts the first
    try, so ``attempts=1`` never retries.
    """

    attempts: int = 4
    backoff: float = 0.25  # seconds, the cap of the first wait
    max_backoff: float = 8.0  # seconds, the cap of any single wait

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff)
        cap = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return rng.uniform(0.0, cap)


@dataclass(slots=True)
class RetryState:
    """The attempts of one logical request. ``next_delay`` answers: wait this long, or give up."""

    policy: RetryPolicy
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Count a failed attempt; the seconds to wait before the next one, or None to give up."""
        self.attempt += 1
        if self.attempt >= self.policy.attempts:
            return None
        return self.policy.delay(self.attempt, retry_after, self.rng)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)
