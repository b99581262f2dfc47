"""The FastAPI application: `create_app()` wires settings, the Redis store, routes, handlers.

Nothing happens at import: Redis is opened in the lifespan, so importing the app (for the
OpenAPI schema, for tests) needs no server. The process keeps no run state between requests;
any number of replicas can serve one run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from budget_service import __version__
from budget_service.errors import StoreUnavailableError
from budget_service.exception_handlers import install_exception_handlers
from budget_service.logs import configure_logging, logger
from budget_service.memory import retain_freed_memory
from budget_service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from budget_service.routes import allocations, observations, ops, prompts, runs, ui
from budget_service.settings import Settings, get_settings
from budget_service.store import Store

DESCRIPTION = """
A sampling-budget sidecar for RL post-training of LLM reasoners. Trainers report per-prompt
statistics (samples drawn, samples accepted, gradient norms of the accepted ones); the service
answers how many samples each prompt of the next batch should get under a fixed budget, by
Gradient Variance Minimization ([arXiv 2505.02391](https://arxiv.org/abs/2505.02391)).

Every error answer has one shape:
`{"error": {"code", "message", "field", "details", "request_id"}}`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not retain_freed_memory():
        logger.debug("malloc settings not applied (no glibc mallopt): allocations run slower")
    store = Store.from_settings(settings)
    app.state.store = store
    try:
        await store.ping()
    except StoreUnavailableError as exc:
        # Start anyway: /readyz says "not ready" and requests answer 503 until Redis is back.
        logger.warning("redis not reachable at startup", extra={"error": exc.message})
    try:
        yield
    finally:
        await store.aclose()


def _operation_id(route: APIRoute) -> str:
    """Stable operation ids: the route function's name (put_run, create_allocation, ...)."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = FastAPIOffline(
        title="GVM Budget",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        redoc_url=None,
        swagger_ui_parameters={"defaultModelsExpandDepth": 0, "displayOperationId": True},
    )
    app.state.settings = settings
    for module in (runs, observations, allocations, prompts, ops, ui):
        app.include_router(module.router)
    install_exception_handlers(app)
    # Added last = outermost: the request id exists before the body limit can answer 413.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(RequestContextMiddleware)
    return app
