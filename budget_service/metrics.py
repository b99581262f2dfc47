"""Prometheus metrics (names are part of the product: dashboards depend on them).

Route labels are route templates (`/v1/runs/{run_id}/allocations`), never raw paths, so the
number of series stays bounded. With several uvicorn workers `gvm-budget serve` sets
`PROMETHEUS_MULTIPROC_DIR` and `/metrics` aggregates every worker (prometheus_client's
multiprocess mode).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 8, 32, 128, 512, 1024, 4096, 16384, 65536)

REQUEST_LATENCY = Histogram(
    "gvm_http_request_duration_seconds",
    "HTTP request latency by route template, method and status code.",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
OBSERVATIONS_APPLIED = Counter(
    "gvm_observations_applied", "Observations applied to run statistics."
)
REPORTS = Counter(
    "gvm_reports", "Reports received, by outcome (applied or duplicate).", ["outcome"]
)
ALLOCATIONS = Counter("gvm_allocations", "Allocations served, by strategy.", ["strategy"])
ALLOCATION_PROMPTS = Histogram(
    "gvm_allocation_prompts", "Prompts per allocation request.", buckets=_SIZE_BUCKETS
)
ALLOCATION_SAMPLES = Histogram(
    "gvm_allocation_samples",
    "Total samples handed out per allocation.",
    buckets=tuple(b * 8 for b in _SIZE_BUCKETS),
)
REDIS_ERRORS = Counter(
    "gvm_redis_errors", "Requests answered 503 because Redis failed, by error kind.", ["kind"]
)


def render(multiprocess_dir: Path | None) -> tuple[bytes, str]:
    """The exposition text: this process, or every worker in multiprocess mode."""
    if multiprocess_dir is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
