"""Scoped tokens in detail (the route-by-route 401/403 sweep against a live service is in
test_api_ops.py): constant-time matching, and no token in any answer, for every way a request
can be refused."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

import httpx
import pytest

from budget_service import auth
from budget_service.settings import Settings, parse_api_tokens, token_digest

ADMIN = "admin-secret-5d1e"
TEAM = "team-secret-9a7c"
TOKENS = f"{ADMIN},{TEAM}:team-a-,other-secret-1b2f:team-b-"


def test_every_entry_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest on fixed-length digests, against every entry whichever matches (or
    none): neither the time to the first mismatching byte nor the position of the matching
    entry shows in the timing."""
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # auth calls hmac.compare_digest
    tokens = parse_api_tokens(TOKENS)
    for presented, prefix in ((ADMIN, None), (TEAM, "team-a-"), ("nope", "missing")):
        calls.clear()
        entry = auth._match(tokens, presented)
        assert (entry.run_prefix if entry else "missing") == prefix
        assert len(calls) == len(tokens)
        assert all(len(a) == len(b) == 32 for a, b in calls)
        assert all(b == token_digest(presented) for _, b in calls)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    from budget_service.app import create_app

    settings = Settings(
        redis_url=redis_url, api_tokens=parse_api_tokens(TOKENS), log_level="warning"
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://asgi") as client,
    ):
        yield client


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (None, 401, "unauthorized"),
        (f"Basic {ADMIN}", 401, "unauthorized"),
        (f"Bearer {ADMIN}x", 401, "unauthorized"),
        (f"Bearer {TEAM}", 403, "forbidden"),
    ],
    ids=["missing", "not bearer", "unknown", "other scope"],
)
async def test_refusals_use_the_one_shape_and_never_echo_a_token(
    client: httpx.AsyncClient, run_id: str, authorization: str | None, status: int, code: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = await client.post(
        f"/v1/runs/{run_id}/allocations", json={"prompt_ids": ["a"], "budget": 1}, headers=headers
    )
    assert answer.status_code == status
    assert set(answer.json()) == {"error"}
    assert answer.json()["error"]["code"] == code
    assert answer.json()["error"]["request_id"] == answer.headers["x-request-id"]
    for secret in (ADMIN, TEAM, "other-secret-1b2f"):
        assert secret not in answer.text
        assert not any(secret in value for value in answer.headers.values())


async def test_a_scoped_token_reaches_its_own_runs_and_health_stays_open(
    client: httpx.AsyncClient, run_id: str
) -> None:
    team = {"Authorization": f"Bearer {TEAM}"}
    own = f"team-a-{run_id}"
    assert (await client.put(f"/v1/runs/{own}", json={}, headers=team)).status_code == 201
    assert (await client.get(f"/v1/runs/{own}/summary", headers=team)).status_code == 200
    # The prefix is a prefix of the run id, not a substring of it.
    assert (await client.get(f"/v1/runs/x-{own}", headers=team)).status_code == 403
    assert (await client.delete(f"/v1/runs/{own}", headers=team)).status_code == 204
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status_code == 200, path
