"""An HTTP proxy in front of the live service that, request by request, answers 503 itself,
drops the connection before forwarding, or forwards and then drops the connection (the service
applied the request, the client never hears it); `stop()`/`start()` take the service away
entirely. For the client's retries, fallback and spool (tests/support/faultproxy.py is the
protocol-blind TCP proxy used between the service and Redis)."""

from __future__ import annotations

import http.client
import socket
import socketserver
import threading
from collections import deque
from urllib.parse import urlsplit

from trainer_client import (
    RetryPolicy,
)

FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05)
OBS = [
    {"prompt_id": "a", "samples": 8, "accepted": 3, "grad_norms": [1.0, 2.0, 3.0]},
    {"prompt_id": "b", "samples": 4, "accepted": 0},
]


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class HttpFaultProxy:
    """Forwards one request per connection to ``upstream``, unless a queued fault says otherwise:
    ``"503"``, ``"drop_before"`` (close without forwarding) or ``"drop_after"`` (forward, then
    close without answering)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: deque[str] = deque()
        self.forwarded: list[str] = []  # "METHOD path" of each request that reached the service
        self.port = 0
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.rfile, self.connection)

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        # stop() waits for serve_forever's next poll: 50 ms, not the default 0.5 s per stop.
        poll = {"poll_interval": 0.05}
        threading.Thread(target=self._server.serve_forever, kwargs=poll, daemon=True).start()

    def stop(self) -> None:
        """Stop listening: connections are refused until ``start()``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handle(self, rfile, connection: socket.socket) -> None:  # type: ignore[no-untyped-def]
        request_line = rfile.readline().decode("latin-1").strip()
        if not request_line:
            return
        method, target, _ = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        while (line := rfile.readline().decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = rfile.read(int(headers.get("content-length", "0")))
        fault = self.faults.popleft() if self.faults else "pass"
        if fault == "drop_before":
            return  # the handler returns: the connection closes with no answer
        if fault == "503":
            connection.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
            return
        upstream = http.client.HTTPConnection(*self.upstream, timeout=10)
        forwarded = {k: v for k, v in headers.items() if k not in ("host", "connection")}
        upstream.request(method, target, body=body, headers=forwarded)
        response = upstream.getresponse()
        payload = response.read()
        upstream.close()
        self.forwarded.append(f"{method} {target}")
        if fault == "drop_after":
            return  # applied by the service; the client never hears about it
        head = f"HTTP/1.1 {response.status} {response.reason}\r\n"
        for name, value in response.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                head += f"{name}: {value}\r\n"
        head += f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        connection.sendall(head.encode("latin-1") + payload)
