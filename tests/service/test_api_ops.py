"""Operations against live servers: bearer tokens, body limits, Redis outages (503, fast,
recovering by itself), readiness."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from budget_service.embedded import LocalRedis

ADMIN = "admin-token-0123456789"
TEAM = "team-token-abcdef"


def test_tokens_guard_every_v1_route_but_not_health(
    start_service: Callable[..., object], run_id: str
) -> None:
    service = start_service(GVM_API_TOKENS=f"{ADMIN},{TEAM}:team-a-")
    url = service.url  # type: ignore[attr-defined]
    with httpx.Client(base_url=url) as client:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 200, path

        routes = [
            ("PUT", f"/v1/runs/{run_id}", {}),
            ("GET", f"/v1/runs/{run_id}", None),
            ("PATCH", f"/v1/runs/{run_id}", {"alpha": 0.1}),
            ("POST", f"/v1/runs/{run_id}/observations", {"report_id": "r", "step": 0,
                                                         "observations": []}),
            ("POST", f"/v1/runs/{run_id}/allocations", {"prompt_ids": ["a"], "budget": 1}),
            ("GET", f"/v1/runs/{run_id}/allocations/latest", None),
            ("GET", f"/v1/runs/{run_id}/prompts/a", None),
            ("GET", f"/v1/runs/{run_id}/summary", None),
            ("DELETE", f"/v1/runs/{run_id}", None),
        ]  # fmt: skip
        for method, path, body in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
                answer = client.request(method, path, json=body, headers=headers)
                assert answer.status_code == 401, (method, path, headers)
                error = answer.json()["error"]
                assert error["code"] == "unauthorized"
                assert answer.headers["www-authenticate"] == "Bearer"
                assert ADMIN not in answer.text
                assert "wrong" not in answer.text
            # A token scoped to another prefix: 403 on every route.
            scoped = client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {TEAM}"}
            )
            assert scoped.status_code == 403, (method, path)
            assert scoped.json()["error"]["code"] == "forbidden"

        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert client.put(f"/v1/runs/{run_id}", json={}, headers=admin).status_code == 201
        assert client.get(f"/v1/runs/{run_id}", headers=admin).status_code == 200
        team = {"Authorization": f"Bearer {TEAM}"}
        assert client.put(f"/v1/runs/team-a-{run_id}", json={}, headers=team).status_code == 201
        assert client.delete(f"/v1/runs/team-a-{run_id}", headers=team).status_code == 204
        assert client.delete(f"/v1/runs/{run_id}", headers=admin).status_code == 204


def test_body_limit_answers_413_before_parsing(
    start_service: Callable[..., object], run_id: str
) -> None:
    service = start_service(GVM_MAX_BODY_BYTES="2048")
    url = service.url  # type: ignore[attr-defined]
    with httpx.Client(base_url=url) as client:
        client.put(f"/v1/runs/{run_id}", json={})
        big = b'{"report_id": "r", "step": 0, "observations": [' + b" " * 4096 + b"]}"
        declared = client.post(
            f"/v1/runs/{run_id}/observations",
            content=big,
            headers={"content-type": "application/json"},
        )
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"
        assert "GVM_MAX_BODY_BYTES" in declared.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        streamed = client.post(
            f"/v1/runs/{run_id}/observations",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "payload_too_large"
        assert client.get(f"/v1/runs/{run_id}/summary").json()["reports"] == 0


def test_redis_outage_is_a_fast_503_and_the_service_recovers(
    start_service: Callable[..., object],
    local_redis_factory: Callable[..., LocalRedis],
    run_id: str,
) -> None:
    redis = local_redis_factory()
    service = start_service(redis=redis.url, GVM_RETRY_AFTER_S="2")
    url = service.url  # type: ignore[attr-defined]
    body = {"report_id": "r1", "step": 0,
            "observations": [{"prompt_id": "a", "samples": 2, "accepted": 1}]}  # fmt: skip
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.put(f"/v1/runs/{run_id}", json={}).status_code == 201
        redis.stop()
        for method, path, payload in (
            ("POST", f"/v1/runs/{run_id}/observations", body),
            ("POST", f"/v1/runs/{run_id}/allocations", {"prompt_ids": ["a"], "budget": 2}),
            ("GET", f"/v1/runs/{run_id}", None),
            ("GET", "/readyz", None),
        ):
            started = time.monotonic()
            answer = client.request(method, path, json=payload)
            elapsed = time.monotonic() - started
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["retry-after"] == "2"
            assert answer.json()["error"]["code"] == "redis_unavailable"
            assert elapsed < 3.0, (path, elapsed)  # bounded by GVM_REDIS_DEADLINE_S (2.5 s)
        assert client.get("/healthz").status_code == 200  # the process itself is fine
        assert "gvm_redis_errors_total{" in client.get("/metrics").text

        redis.start()  # same port, same AOF: the run and nothing else comes back
        assert client.get("/readyz").status_code == 200
        assert client.post(f"/v1/runs/{run_id}/observations", json=body).json()["applied"] == 1


def test_stalled_redis_is_a_503_within_the_deadline(
    start_service: Callable[..., object], run_id: str
) -> None:
    """A server that accepts connections and never answers (blackhole), not just a refusal."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        port = blackhole.getsockname()[1]
        service = start_service(
            redis=f"redis://127.0.0.1:{port}/0",
            GVM_REDIS_TIMEOUT_S="0.3",
            GVM_REDIS_DEADLINE_S="1.0",
        )
        url = service.url  # type: ignore[attr-defined]
        with httpx.Client(base_url=url, timeout=30) as client:
            started = time.monotonic()
            answer = client.get(f"/v1/runs/{run_id}")
            elapsed = time.monotonic() - started
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "redis_unavailable"
    assert elapsed < 1.8, elapsed


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_logs_carry_the_request_id_and_never_the_token(
    start_service: Callable[..., object], run_id: str, fmt: str
) -> None:
    service = start_service(GVM_API_TOKENS=ADMIN, GVM_LOG_FORMAT=fmt, GVM_LOG_LEVEL="info")
    url = service.url  # type: ignore[attr-defined]
    with httpx.Client(base_url=url) as client:
        headers = {"Authorization": f"Bearer {ADMIN}", "X-Request-ID": f"req-{fmt}-42"}
        client.put(f"/v1/runs/{run_id}", json={}, headers=headers)
    service.stop()  # type: ignore[attr-defined]
    log = service.log_path.read_text()  # type: ignore[attr-defined]
    line = next(line for line in log.splitlines() if f"req-{fmt}-42" in line)
    assert "/v1/runs/{run_id}" in line
    assert ADMIN not in log
