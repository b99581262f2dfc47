"""Operations: liveness, readiness (Redis ping) and Prometheus metrics. No token needed."""

from __future__ import annotations

from fastapi import APIRouter, Response

from budget_service import metrics
from budget_service.deps import SettingsDep, StoreDep
from budget_service.exception_handlers import ERROR_RESPONSES
from budget_service.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (no Redis call)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: ERROR_RESPONSES[503]})
async def readyz(store: StoreDep) -> Readiness:
    """Redis answers PING; 503 with Retry-After otherwise."""
    await store.ping()
    return Readiness()


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def get_metrics(settings: SettingsDep) -> Response:
    """Prometheus metrics (all workers when PROMETHEUS_MULTIPROC_DIR is set)."""
    body, content_type = metrics.render(settings.prometheus_multiproc_dir)
    return Response(body, media_type=content_type)
