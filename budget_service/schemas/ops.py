"""Liveness and readiness answers."""

from __future__ import annotations

from typing import Literal

from budget_service.schemas.common import Answer


class Health(Answer):
    status: Literal["ok"] = "ok"


class Readiness(Answer):
    status: Literal["ready"] = "ready"
    redis: Literal["ok"] = "ok"
