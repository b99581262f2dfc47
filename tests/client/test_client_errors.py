"""Rare paths of the client, driven by ``httpx.MockTransport``: retry decisions, Retry-After,
error mapping, the fallback split. Everything common runs against the live service in
test_client.py and test_client_faults.py."""

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from trainer_client import (
    AsyncBudgetClient,
    AuthenticationError,
    BudgetClient,
    ConnectionFailedError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RetryPolicy,
    ServerError,
)
from trainer_client._retry import RetryState, parse_retry_after
from trainer_client.client import uniform_split

FAST = RetryPolicy(attempts=3, backoff=0.0, max_backoff=0.0)
Handler = Callable[[httpx.Request], httpx.Response]


def client_with(handler: Handler, retry: RetryPolicy = FAST, **kwargs: object) -> BudgetClient:
    return BudgetClient(
        "http://gvm.test", transport=httpx.MockTransport(handler), retry=retry, **kwargs
    )


# -- the retry policy, pure -------------------------------------------------------------------


def test_backoff_is_full_jitter_under_a_growing_cap() -> None:
    policy = RetryPolicy(attempts=10, backoff=0.5, max_backoff=3.0)
    rng = random.Random(0)
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        delays = [policy.delay(attempt, None, rng) for _ in range(2000)]
        assert min(delays) >= 0.0
        assert max(delays) <= cap
        assert max(delays) > 0.9 * cap  # the whole range is used, not a fixed value
        assert min(delays) < 0.1 * cap


def test_retry_after_wins_over_backoff_and_is_capped() -> None:
    policy = RetryPolicy(attempts=5, backoff=0.1, max_backoff=2.0)
    rng = random.Random(0)
    assert policy.delay(1, 1.5, rng) == 1.5
    assert policy.delay(1, 60.0, rng) == 2.0


def test_attempts_count_the_first_try() -> None:
    state = RetryState(RetryPolicy(attempts=3, backoff=0.0))
    assert state.next_delay() == 0.0
    assert state.next_delay() == 0.0
    assert state.next_delay() is None
    assert state.attempt == 3


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# -- the send chain ---------------------------------------------------------------------------


def test_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("trainer_client.client.time.sleep", slept.append)
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "0.75"}),
            httpx.Response(503, headers={"Retry-After": "0.25"}),
            httpx.Response(204),
        ]
    )
    with client_with(lambda request: next(answers), RetryPolicy(attempts=3, max_backoff=5)) as c:
        c.delete_run("r")
        assert slept == [0.75, 0.25]
        assert c.stats.retries == 2


def test_4xx_is_not_retried_and_carries_the_body() -> None:
    calls = 0
    body = {
        "error": {
            "code": "invalid_request",
            "message": "budget 3 cannot give 4 prompts min_samples=2",
            "field": "budget",
            "details": [{"field": "budget", "rule": "feasible", "message": "too small"}],
        }
    }

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(422, json=body)

    with client_with(handler) as c, pytest.raises(InvalidRequestError) as caught:
        c.allocate("r", ["a", "b", "c", "d"], budget=3, step=0)
    assert calls == 1
    assert caught.value.status_code == 422
    assert caught.value.body == body
    assert caught.value.code == "invalid_request"
    assert caught.value.field == "budget"
    assert caught.value.details == [{"field": "budget", "rule": "feasible", "message": "too small"}]
    assert "min_samples=2" in str(caught.value)
    assert c.stats.fallbacks == 0  # a 4xx is the caller's problem, not an outage


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthenticationError), (403, AuthenticationError), (404, NotFoundError)],
)
def test_status_codes_map_to_typed_errors(status: int, error: type[Exception]) -> None:
    answer = httpx.Response(status, json={"error": {"message": "no"}})
    with client_with(lambda r: answer) as c, pytest.raises(error):
        c.get_run("r")


def test_a_report_keeps_its_id_across_retries() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content)["report_id"])
        if len(seen) < 3:
            raise httpx.ReadError("connection reset by peer", request=request)
        return httpx.Response(200, json={"applied": 1, "duplicate": False})

    with client_with(handler) as c:
        result = c.report("r", 0, [{"prompt_id": "a", "samples": 2, "accepted": 1}])
    assert len(seen) == 3
    assert len(set(seen)) == 1
    assert result.report_id == seen[0]
    assert result.applied == 1
    assert not result.spooled


def test_giving_up_raises_translated_errors_with_the_cause() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with client_with(refuse) as c, pytest.raises(ConnectionFailedError) as caught:
        c.get_run("r")
    assert caught.value.attempts == FAST.attempts
    assert isinstance(caught.value.__cause__, httpx.ConnectError)

    with client_with(lambda r: httpx.Response(502)) as c, pytest.raises(ServerError) as server:
        c.summary("r")
    assert server.value.status_code == 502
    assert server.value.attempts == FAST.attempts


def test_an_unreadable_answer_is_a_protocol_error() -> None:
    answer = httpx.Response(200, json={"unexpected": True})
    with client_with(lambda r: answer) as c, pytest.raises(ProtocolError):
        c.get_run("r")


def test_bearer_token_and_quoted_ids() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"error": {"message": "no such prompt"}})

    with client_with(handler, token="s3cret") as c, pytest.raises(NotFoundError):
        c.prompt_stats("run 1", "math/12")
    assert seen[0].headers["Authorization"] == "Bearer s3cret"
    assert seen[0].url.raw_path == b"/v1/runs/run%201/prompts/math%2F12"


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        BudgetClient("localhost:8000")


# -- fallback split ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "count", "expected"),
    [(10, 4, [3, 3, 2, 2]), (3, 4, [1, 1, 1, 0]), (5, 0, [])],
)
def test_uniform_split_without_a_known_config_has_no_bounds(
    budget: int, count: int, expected: list[int]
) -> None:
    # With a config, tests/client/test_shared_rules.py checks it against the service's answers.
    assert uniform_split(budget, count) == expected


def test_fallback_uses_the_bounds_of_the_run_it_saw(caplog: pytest.LogCaptureFixture) -> None:
    config = {"strategy": "gvm", "min_samples": 2, "max_samples": 5, "align_to": 2}
    run = {"run_id": "r", "config": config}
    up = True

    def handler(request: httpx.Request) -> httpx.Response:
        if not up:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(201, json=run)

    with client_with(handler) as c:
        c.put_run("r", min_samples=2, max_samples=5, align_to=2)
        up = False
        allocation = c.allocate("r", ["a", "b", "c"], budget=11, step=4)
        with pytest.raises(InvalidRequestError) as above_cap:  # as the service would answer
            c.allocate("r", ["a", "b", "c"], budget=30, step=5)
    assert allocation.fallback
    assert allocation.counts == [4, 3, 3]  # 11 aligned down to 10
    assert allocation.step == 4
    assert allocation.strategy == "uniform"
    assert above_cap.value.code == "infeasible_budget"
    assert above_cap.value.field == "budget"
    assert "max_samples 5" in str(above_cap.value)
    assert c.stats.fallbacks == 1
    assert "falls back to a uniform allocation" in caplog.text


async def test_async_client_retries_and_falls_back_the_same_way(tmp_path: Path) -> None:
    answers = iter([httpx.Response(503), httpx.Response(200, json={"applied": 1})])

    async def handler(request: httpx.Request) -> httpx.Response:
        return next(answers)

    async with AsyncBudgetClient(
        "http://gvm.test", transport=httpx.MockTransport(handler), retry=FAST
    ) as c:
        result = await c.report("r", 0, [{"prompt_id": "a", "samples": 1, "accepted": 0}])
        assert result.applied == 1
        assert c.stats.retries == 1

    async def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    spool = tmp_path / "async.spool.jsonl"
    async with AsyncBudgetClient(
        "http://gvm.test", transport=httpx.MockTransport(down), retry=FAST, spool_path=spool
    ) as c:
        allocation = await c.allocate("r", ["a", "b"], budget=5, step=1)
        assert allocation.fallback
        assert allocation.counts == [3, 2]
        result = await c.report("r", 1, [{"prompt_id": "a", "samples": 3, "accepted": 1}])
        assert result.spooled
        assert len(c.spool) == 1
        assert await c.flush() == 1  # still down: kept
    assert spool.read_text().count(result.report_id) == 1
