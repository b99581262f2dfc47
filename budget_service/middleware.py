"""Pure ASGI middleware: request id, access log and latency metric; body-size limit.

Pure ASGI (not BaseHTTPMiddleware) so the body streams through untouched and a response is
never buffered.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

from fastapi import HTTPException
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from budget_service import metrics
from budget_service.exception_handlers import error_response
from budget_service.logs import logger, request_id_var

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class PayloadTooLargeError(HTTPException):
    """Raised from `receive` when a streamed body passes the limit (FastAPI re-raises
    HTTPException from body reading, so the handler answers 413 in the one error shape)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body larger than GVM_MAX_BODY_BYTES ({limit} bytes)")


class BodyTimeoutError(HTTPException):
    """Raised from `receive` when the body does not arrive in time (a slow or stalled sender)."""

    def __init__(self, limit: float) -> None:
        super().__init__(408, f"the body did not arrive within {limit:g} s (GVM_BODY_TIMEOUT_S)")


class RequestContextMiddleware:
    """Request id (X-Request-ID, echoed when sane), one access log line, latency histogram."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = (
            incoming if incoming and _SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]
        )
        token = request_id_var.set(request_id)
        status = 500
        responded = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug: answer 500 in the one shape (with the request id) if nothing was sent yet.
            logger.exception("unhandled error", extra={"path": scope["path"]})
            if responded:
                raise
            response = error_response(
                500,
                "internal_error",
                f"internal error; the service log has details under request id {request_id}",
            )
            await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            metrics.REQUEST_LATENCY.labels(method, template, str(status)).observe(elapsed)
            logger.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """413 before parsing: by Content-Length up front, or while a chunked body streams in; 408
    when the whole body takes longer than `timeout_s` to arrive (uvicorn itself waits forever
    for a body that trickles in, holding the connection and the request's task)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                response = error_response(400, "bad_request", "Content-Length is not a number")
                await response(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                too_large = PayloadTooLargeError(self.max_bytes)
                response = error_response(413, "payload_too_large", str(too_large.detail))
                await response(scope, receive, send)
                return
        received = 0
        complete = False  # after the last chunk, receive() only waits for a disconnect
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def counting_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(self.timeout_s) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLargeError(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
