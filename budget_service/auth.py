"""Bearer tokens for the /v1 routes (`GVM_API_TOKENS`); health, readiness and metrics stay open.

An entry is `TOKEN` (admin: every run) or `TOKEN:RUN_PREFIX` (only runs whose id starts with the
prefix; other runs answer 403). The presented token is hashed and compared with every entry's
digest in constant time, and no entry is skipped, so timing does not tell which entry matched.
Tokens are never logged nor echoed in error bodies.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from budget_service.deps import SettingsDep
from budget_service.errors import ForbiddenError, UnauthorizedError
from budget_service.settings import ApiToken, token_digest

# auto_error=False: a missing header is answered by us, in the one error shape.
_bearer = HTTPBearer(auto_error=False, description="A token from GVM_API_TOKENS.")


def _match(tokens: tuple[ApiToken, ...], presented: str) -> ApiToken | None:
    digest = token_digest(presented)
    found = None
    for entry in tokens:
        if hmac.compare_digest(entry.digest, digest):
            found = entry
    return found


async def require_token(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Reject the request unless auth is off or the token covers the run in the path."""
    if not settings.api_tokens:
        return
    if credentials is None:
        raise UnauthorizedError("missing bearer token: send 'Authorization: Bearer <token>'")
    entry = _match(settings.api_tokens, credentials.credentials)
    if entry is None:
        raise UnauthorizedError("unknown bearer token")
    if entry.run_prefix is not None:
        run_id = request.path_params.get("run_id", "")
        if not run_id.startswith(entry.run_prefix):
            raise ForbiddenError(
                f"this token is scoped to runs starting with {entry.run_prefix!r}", field="run_id"
            )
