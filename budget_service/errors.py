"""Domain errors raised inside the service; `exception_handlers.py` maps each class to one
HTTP status.

    ServiceError
    ├── NotFoundError          404  (RunNotFoundError, PromptNotFoundError, AllocationNotFoundError)
    ├── InvalidRequestError    422  a rule that spans fields (names the field and the rule)
    ├── ConflictError          409  the run's config kept changing under a PATCH
    ├── UnauthorizedError      401  no or unknown bearer token
    ├── ForbiddenError         403  the token is scoped to other runs
    └── StoreUnavailableError  503  Redis unreachable, stalled or refusing writes
        └── ReplicasNotAckedError  503  fewer replicas than GVM_REDIS_MIN_REPLICAS_ACK confirmed

The allocation engine's `AllocationError` (422) lives in `budget_service.engine` and is mapped
in `exception_handlers.py` too. No `redis.*` exception leaves the store package.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `code` is the stable machine-readable string in the error body."""

    code = "error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        rule: str | None = None,
        details: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.rule = rule or self.code
        self.details = details  # several field errors at once; default: the one above


class NotFoundError(ServiceError):
    code = "not_found"


class RunNotFoundError(NotFoundError):
    code = "run_not_found"

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run_id: no run {run_id!r} (create it with PUT /v1/runs/{{run_id}})", field="run_id"
        )


class PromptNotFoundError(NotFoundError):
    code = "prompt_not_found"

    def __init__(self, run_id: str, prompt_id: str) -> None:
        super().__init__(
            f"prompt_id: run {run_id!r} has no statistics for {prompt_id!r}", field="prompt_id"
        )


class AllocationNotFoundError(NotFoundError):
    code = "allocation_not_found"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} has not been served an allocation yet")


class InvalidRequestError(ServiceError):
    code = "invalid_request"


class ConflictError(ServiceError):
    code = "conflict"


class UnauthorizedError(ServiceError):
    code = "unauthorized"


class ForbiddenError(ServiceError):
    code = "forbidden"


class StoreUnavailableError(ServiceError):
    code = "redis_unavailable"


class ReplicasNotAckedError(StoreUnavailableError):
    """The report is on the primary but not yet on enough replicas: a failover now could lose
    it, so it is not acknowledged. The client keeps it and retries (the retry is idempotent)."""

    code = "replicas_not_acked"
