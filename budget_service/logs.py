"""Structured logs: one line per event, text (`key=value`) or JSON (`GVM_LOG_FORMAT`).

Every line carries the request id of the request being served (a context variable set by the
request middleware), so one request's lines can be found across replicas.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

logger = logging.getLogger("budget_service")

# Attributes every LogRecord has; anything else came in through `extra=` (but uvicorn's
# `color_message`, its own message with terminal colours).
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    request_id = request_id_var.get()
    if request_id is not None:
        fields["request_id"] = request_id
    fields.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        head = f"{fields.pop('ts')} {fields.pop('level'):<7} {fields.pop('msg')}"
        fields.pop("logger")
        exc = fields.pop("exc", None)
        line = " ".join([head, *(f"{k}={v}" for k, v in fields.items())])
        return f"{line}\n{exc}" if exc else line


def configure_logging(fmt: Literal["text", "json"], level: str) -> None:
    """Send `budget_service` logs to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def uvicorn_log_config(fmt: Literal["text", "json"], level: str) -> dict[str, Any]:
    """uvicorn's `log_config`: its own lines ("Started server process", "Uvicorn running on")
    in our format on stderr, so a service log has one format throughout."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "service",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
            for name in ("uvicorn", "uvicorn.access")
        },
    }
