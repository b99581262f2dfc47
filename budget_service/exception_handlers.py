"""One JSON error shape for every 4xx and 5xx, and the handlers that map errors to it.

    {"error": {"code": "invalid_request", "message": "observations[3].accepted: must be <= ...",
               "field": "observations[3].accepted", "details": [{"field", "rule", "message"}],
               "request_id": "..."}}

Domain errors are raised inside (store, engine, routes); the status is decided only here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from budget_service import metrics
from budget_service.engine import AllocationError, InfeasibleBudgetError, InvalidStatisticsError
from budget_service.errors import (
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    StoreUnavailableError,
    UnauthorizedError,
)
from budget_service.logs import logger, request_id_var
from budget_service.schemas import ErrorResponse

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "redis_unavailable",
}
_SERVICE_STATUS: tuple[tuple[type[ServiceError], int], ...] = (
    (NotFoundError, 404),
    (InvalidRequestError, 422),
    (ConflictError, 409),
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (StoreUnavailableError, 503),
)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "The request cannot be read: a body that is not UTF-8, a bad Content-Length."),
        (401, "Missing or unknown bearer token (only when GVM_API_TOKENS is set)."),
        (403, "The token is scoped to other runs."),
        (404, "Unknown run (or prompt, or no allocation yet)."),
        (408, "The body did not arrive within GVM_BODY_TIMEOUT_S."),
        (413, "Body larger than GVM_MAX_BODY_BYTES."),
        (422, "A field breaks a rule; `field` and `details` say which and why."),
        (503, "Redis is unreachable or stalled; retry after Retry-After seconds."),
    )
}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    details: Iterable[dict[str, Any]] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "code": code,
            "message": message,
            "field": field,
            "details": list(details),
            "request_id": request_id_var.get(),
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def field_path(loc: Sequence[str | int]) -> str | None:
    """('body', 'observations', 3, 'accepted') -> 'observations[3].accepted'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "path", "query", "header", "cookie"):
        parts = parts[1:]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


def _detail(error: dict[str, Any]) -> dict[str, Any]:
    rule = str(error.get("type", "invalid"))
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    loc = tuple(error.get("loc", ()))
    if rule == "json_invalid":
        position = loc[1] if len(loc) > 1 else "?"
        reason = error.get("ctx", {}).get("error", "")
        return {
            "field": "body",
            "rule": rule,
            "message": f"invalid JSON at char {position}: {reason}",
        }
    return {"field": field_path(loc) or "body", "rule": rule, "message": message}


def validation_response(errors: Sequence[dict[str, Any]]) -> JSONResponse:
    details = [_detail(e) for e in errors]
    first = details[0]
    message = f"{first['field']}: {first['message']}"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more)"
    return error_response(422, "invalid_request", message, field=first["field"], details=details)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_response(exc.errors())


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    headers = dict(exc.headers) if exc.headers else {}
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
        message = f"the body is not UTF-8 JSON ({cause.reason} at byte {cause.start})"
    elif exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, code, message, headers=headers or None)


def _allowed_methods(request: Request) -> str:
    """Every method the path takes: Starlette's 405 names only the first matching route's, and
    each method of a path is its own route here."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, BaseRoute) and route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def _service_handler(status: int) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        headers: dict[str, str] = {}
        if isinstance(exc, StoreUnavailableError):
            settings = request.app.state.settings
            headers["Retry-After"] = str(settings.retry_after_s)
            kind = type(exc.__cause__).__name__ if exc.__cause__ else "unknown"
            metrics.REDIS_ERRORS.labels(kind=kind).inc()
            logger.warning("redis unavailable", extra={"error": exc.message})
        elif isinstance(exc, UnauthorizedError):
            headers["WWW-Authenticate"] = "Bearer"
        details = exc.details or []
        if not details and exc.field is not None:
            reason = exc.message.removeprefix(f"{exc.field}: ")
            details.append({"field": exc.field, "rule": exc.rule, "message": reason})
        return error_response(
            status, exc.code, exc.message, field=exc.field, details=details, headers=headers
        )

    return handler


async def _on_allocation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AllocationError)
    if isinstance(exc, InfeasibleBudgetError):
        code, field = "infeasible_budget", "budget"
    elif isinstance(exc, InvalidStatisticsError):
        code, field = "invalid_statistics", None
    else:
        code, field = "allocation_error", None
    field = exc.field or field
    details = [{"field": field, "rule": exc.rule or code, "message": str(exc)}]
    return error_response(422, code, str(exc), field=field, details=details)


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    for cls, status in _SERVICE_STATUS:
        app.add_exception_handler(cls, _service_handler(status))
    app.add_exception_handler(AllocationError, _on_allocation_error)
    # Unexpected exceptions are answered by RequestContextMiddleware (500, with the request id).
