"""The one error body of every 4xx and 5xx answer."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from budget_service.schemas.common import Answer


class ErrorDetail(Answer):
    field: str | None = Field(description="Where: observations[3].accepted, prompt_ids[7], ...")
    rule: str = Field(description="Machine-readable rule, e.g. greater_than_equal.")
    message: str


class ErrorInfo(Answer):
    code: str = Field(description="Stable error code, e.g. invalid_request, run_not_found.")
    message: str
    field: str | None = None
    details: list[ErrorDetail] = Field(default_factory=list)
    request_id: str | None = None


class ErrorResponse(Answer):
    """The one error shape of every 4xx and 5xx answer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "invalid_request",
                        "message": "observations[0].accepted: must be <= samples (8)",
                        "field": "observations[0].accepted",
                        "details": [
                            {
                                "field": "observations[0].accepted",
                                "rule": "accepted_le_samples",
                                "message": "must be <= samples (8)",
                            }
                        ],
                        "request_id": "4f1c2a9e0b7d4c1e",
                    }
                }
            ]
        }
    )

    error: ErrorInfo
