"""Slow senders against a live service: a body that stalls or trickles in is answered 408 in the
one error shape once GVM_BODY_TIMEOUT_S has passed, and the connection is closed; `gvm-budget
serve` hands its keep-alive and concurrency limits to uvicorn. (Size and item limits: 413 in
test_api_ops.py, id lengths and item counts in test_api_bad_inputs.py.)"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from support.services import ServiceProcess

from budget_service import cli
from budget_service.settings import Settings

TIMEOUT_S = 1.0
SLACK_S = 2.0  # a loaded 2-core machine; without the limit the wait would be endless


def _post_slowly(
    service: ServiceProcess, path: str, body: bytes, pause_s: float
) -> tuple[float, bytes]:
    """POST `body` one byte every `pause_s` until the server answers; (seconds from the request
    head to the answer, the raw answer up to the server's close)."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode())
        started = time.monotonic()
        sent = 0
        while not select.select([sock], [], [], pause_s)[0]:  # no answer yet
            if sent < len(body) - 1:  # never the last byte: the body stays incomplete
                sock.sendall(body[sent : sent + 1])
                sent += 1
            assert time.monotonic() - started < TIMEOUT_S + 10, "no answer: the sender hangs"
        elapsed = time.monotonic() - started
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return elapsed, answer


def test_a_slow_body_is_a_408_after_the_body_timeout(
    start_service: Callable[..., ServiceProcess], run_id: str
) -> None:
    # After the 408 the server closes the half-read connection once its keep-alive runs out
    # (uvicorn's 5 s by default): 1 s here, so the test reads the close without waiting.
    service = start_service(GVM_BODY_TIMEOUT_S=str(TIMEOUT_S), UVICORN_TIMEOUT_KEEP_ALIVE="1")
    report = {"report_id": "r", "step": 0, "observations": [{"prompt_id": "a", "samples": 1,
              "accepted": 1}]}  # fmt: skip
    path = f"/v1/runs/{run_id}/observations"
    for pause_s in (5.0, 0.2):  # stalled; trickling in, one byte at a time
        elapsed, answer = _post_slowly(service, path, json.dumps(report).encode(), pause_s)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        error: dict[str, Any] = json.loads(body)["error"]
        assert error["code"] == "request_timeout"
        assert "GVM_BODY_TIMEOUT_S" in error["message"]
        assert TIMEOUT_S - 0.05 <= elapsed < TIMEOUT_S + SLACK_S, (pause_s, elapsed)
    # The service serves the next request as usual.
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        request = f"GET /v1/runs/{run_id} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 404 ")


def test_serve_hands_its_timeouts_to_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "redis://127.0.0.1:1/0"
    seen: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(cli, "_redis", lambda settings: contextlib.nullcontext(url))
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # keep pytest's handlers
    monkeypatch.setenv("REDIS_URL", url)  # serve() sets it for its workers; restored after
    settings = Settings(redis_url=url, timeout_keep_alive_s=7, limit_concurrency=99)
    cli.serve(settings, host="127.0.0.1", port=0, workers=1)
    assert (seen["timeout_keep_alive"], seen["limit_concurrency"]) == (7, 99)
    defaults = Settings(redis_url=url)
    assert (defaults.body_timeout_s, defaults.timeout_keep_alive_s) == (30.0, 5)
    assert defaults.limit_concurrency is None
