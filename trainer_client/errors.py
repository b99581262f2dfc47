"""Every error the client raises.

The tree (catch ``BudgetError`` to catch them all)::

    BudgetError
    ├── UnavailableError ......... the service could not be reached or kept failing, after retries
    │   ├── ConnectionFailedError  connect refused, connection dropped, timed out
    │   └── ServerError .......... 5xx or 429 on the last attempt
    ├── RequestError ............. a 4xx answer: the request itself is wrong; never retried
    │   ├── AuthenticationError .. 401 / 403: missing or wrong bearer token
    │   ├── NotFoundError ........ 404: unknown run (or route)
    │   ├── ConflictError ........ 409
    │   └── InvalidRequestError .. 400 / 422: a field breaks a rule (``details`` names both)
    ├── ProtocolError ............ the answer does not match the wire format this client knows
    └── SpoolError ............... the local spool file cannot be read or written

``allocate()`` and ``report()`` do not raise ``UnavailableError``: they fall back to a uniform
allocation and to the spool. ``httpx`` errors never escape; they are translated in ``client.py``
(one boundary) and kept as ``__cause__``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BudgetError",
    "ConflictError",
    "ConnectionFailedError",
    "InvalidRequestError",
    "NotFoundError",
    "ProtocolError",
    "RequestError",
    "ServerError",
    "SpoolError",
    "UnavailableError",
]


class BudgetError(Exception):
    """Base class of every error raised by ``trainer_client``."""


class UnavailableError(BudgetError):
    """The service did not give a usable answer within the retry policy."""

    def __init__(self, message: str, *, attempts: int, status_code: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status_code = status_code


class ConnectionFailedError(UnavailableError):
    """No HTTP answer at all: refused, reset, or timed out."""


class ServerError(UnavailableError):
    """The service answered 5xx or 429 on every attempt."""


class RequestError(BudgetError):
    """The service rejected the request (4xx). Retrying the same request cannot help.

    ``body`` is the service's JSON error body as sent; ``code``, ``field`` and ``details`` are
    read from it: ``details`` lists ``{"field", "rule", "message"}`` for each broken rule.
    """

    def __init__(self, message: str, *, status_code: int, body: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        self.code: str | None = error.get("code")
        self.field: str | None = error.get("field")
        details = error.get("details")
        self.details: list[dict[str, Any]] = (
            [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
        )


class AuthenticationError(RequestError):
    """401 or 403: the bearer token is missing or not accepted."""


class NotFoundError(RequestError):
    """404: the run (or the route) does not exist."""


class ConflictError(RequestError):
    """409: the request conflicts with the stored state."""


class InvalidRequestError(RequestError):
    """400 or 422: a field breaks a rule (the budget cannot meet the bounds, a bad value...)."""


class ProtocolError(BudgetError):
    """The service answered 2xx with a body this client cannot read (a version mismatch?)."""


class SpoolError(BudgetError):
    """The spool file cannot be used (permissions, a corrupt line that is not the last one...)."""
