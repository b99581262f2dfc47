"""A TCP proxy that injects faults, for tests: between the service and Redis, or between a
client and the service.

The proxy runs its own asyncio loop in a background thread, so synchronous tests, async tests
and other processes (a service whose REDIS_URL points at the proxy) can all use it. It knows
nothing about HTTP or the Redis protocol; it only relies on both being request/response: a
*turn* starts with the first bytes the client sends after the last answer (or on a fresh
connection), and each turn takes the next fault from a queue (`inject`) or, when the queue is
empty, the standing `mode`:

    pass        forward both ways
    delay       wait `delay_s` seconds, then forward the request
    drop        close the client connection (FIN) without forwarding the request
    reset       abort the client connection (RST) without forwarding the request
    blackhole   swallow the request and everything after it; never answer, never close
                (a stalled server: accepts, reads, says nothing)
    cut         forward the request, then reset the client connection instead of passing the
                answer on: the server did the work, the client never hears about it

`reset_all()` aborts every open connection at once (a network blip, a failover). Counters say
how many connections were accepted, how many are open now and how many faults were injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar

Mode = Literal["pass", "delay", "drop", "reset", "blackhole", "cut"]
FAULTS: tuple[Mode, ...] = ("delay", "drop", "reset", "blackhole", "cut")
_CHUNK = 65536
T = TypeVar("T")


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    answering: bool = True  # the last bytes went server -> client: the next request is a turn
    fault: Mode = "pass"  # the fault of the current turn
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    """`with FaultProxy(("127.0.0.1", 6379)) as proxy:` listens on `proxy.port` until exit."""

    def __init__(self, upstream: tuple[str, int], *, delay_s: float = 0.5) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.mode: Mode = "pass"
        self.port = 0
        self.accepted = 0
        self.faults: Counter[str] = Counter()
        self._queue: deque[Mode] = deque()
        self._open: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # -- control (any thread) ---------------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        """Stop listening, abort every connection and stop the loop."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def injected(self) -> int:
        """Faults injected so far (turns that did not pass, plus connections reset_all hit)."""
        return self.faults.total()

    def inject(self, *faults: Mode) -> None:
        """Queue faults for the next turns, one each, before the standing mode applies again."""
        self._queue.extend(faults)

    def clear(self) -> None:
        """Drop queued faults and go back to forwarding."""
        self._queue.clear()
        self.mode = "pass"

    def reset_all(self) -> int:
        """Abort every open connection (RST); the number aborted."""
        return self._call(self._reset_all())

    # -- the loop ---------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._open):
            self._abort(conn)
        tasks = [task for conn in self._open for task in conn.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _reset_all(self) -> int:
        conns = list(self._open)
        for conn in conns:
            self._abort(conn)
        self.faults["reset_all"] += len(conns)
        return len(conns)

    def _next_fault(self) -> Mode:
        return self._queue.popleft() if self._queue else self.mode

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        conn = _Connection(writer)
        self._open.add(conn)
        try:
            try:
                up_reader, conn.upstream = await asyncio.open_connection(*self.upstream)
            except OSError:
                self._abort(conn)
                return
            conn.tasks = [
                asyncio.current_task(),  # type: ignore[list-item]
                asyncio.ensure_future(self._answers(conn, up_reader)),
            ]
            await self._requests(conn, reader)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._abort(conn)
            for task in conn.tasks[1:]:
                task.cancel()
            self._open.discard(conn)

    async def _requests(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        """Client -> server: each turn meets its fault here."""
        assert conn.upstream is not None
        while data := await reader.read(_CHUNK):
            if conn.fault == "blackhole":
                continue
            if conn.answering:  # a new turn
                conn.answering = False
                conn.fault = self._next_fault()
                if conn.fault != "pass":
                    self.faults[conn.fault] += 1
                if conn.fault == "drop":
                    conn.client.close()
                    return
                if conn.fault == "reset":
                    self._abort(conn)
                    return
                if conn.fault == "blackhole":
                    continue
                if conn.fault == "delay":
                    await asyncio.sleep(self.delay_s)
            conn.upstream.write(data)
            await conn.upstream.drain()
        # The client closed: a server that is still working on a request finishes it alone.

    async def _answers(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        """Server -> client; a `cut` turn loses its answer here."""
        try:
            while data := await reader.read(_CHUNK):
                if conn.fault == "blackhole":
                    continue
                if conn.fault == "cut":
                    self._abort(conn)
                    return
                conn.answering = True
                conn.client.write(data)
                await conn.client.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            # The server went away (or is gone after a cut): so does the client's connection.
            if conn.fault != "blackhole":
                self._abort(conn)

    @staticmethod
    def _abort(conn: _Connection) -> None:
        """Close both sides with RST (SO_LINGER 0), not FIN: a reset, as a crash would."""
        for writer in (conn.client, conn.upstream):
            if writer is None or writer.transport.is_closing():
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


def parse_address(url: str) -> tuple[str, int]:
    """("host", port) of a redis:// or http:// URL."""
    rest = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host, int(port)
