"""One router per resource. Every /v1 route needs a bearer token when GVM_API_TOKENS is set."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from budget_service.auth import require_token
from budget_service.handlers import ERROR_RESPONSES
from budget_service.models import RUN_ID_PATTERN

RunIdPath = Annotated[
    str,
    Path(
        pattern=RUN_ID_PATTERN,
        description="1-128 chars of letters, digits and ._:@=+- (first: letter or digit).",
        examples=["raft-qwen-7b-seed1"],
    ),
]


def v1_router(tag: str) -> APIRouter:
    return APIRouter(
        prefix="/v1/runs",
        tags=[tag],
        dependencies=[Depends(require_token)],
        responses=ERROR_RESPONSES,
    )
