"""``gvm-demo``: the whole loop on one machine, in one command.

Starts ``gvm-budget serve`` as a child process (no ``REDIS_URL``, so it runs its own embedded
Redis, with its data under the demo's output folder) on a free port, waits until it is ready,
trains the tiny model on the arithmetic task for a few steps with GVM allocation in online mode
(printing each step's allocation), then says where to look and stops the service, also on
Ctrl-C. ``--keep-serving`` leaves the service up until Ctrl-C, to browse ``/docs`` and the run.

The trainer talks to the service over HTTP only; this module never imports ``budget_service``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from trainer_client import BudgetClient

READY_TIMEOUT_S = 60.0


def _die_with_parent() -> None:
    """In the service process, before exec: SIGTERM when the demo dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def serve_command() -> list[str]:
    """``gvm-budget`` from this environment (next to this Python), else the module."""
    script = Path(sys.executable).with_name("gvm-budget")
    if script.is_file():
        return [str(script)]
    found = shutil.which("gvm-budget")
    return [found] if found else [sys.executable, "-m", "budget_service.cli"]


@contextmanager
def running_service(
    host: str, port: int, data_dir: Path, log_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``gvm-budget serve`` with its embedded Redis; yields its URL and process once
    ``/readyz`` answers, and stops it on the way out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GVM_"))}
    env["GVM_DATA_DIR"] = str(data_dir)
    url = f"http://{host}:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # A session of its own: Ctrl-C reaches only us, and we stop the service in order. The
        # parent-death signal runs code in the child before exec, safe while we have one thread.
        process = subprocess.Popen(
            [*serve_command(), "serve", "--host", host, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if threading.active_count() == 1 else None,
        )
    try:
        wait_ready(url, process, log_path)
        yield url, process
    finally:
        stop(process)


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with BudgetClient(url) as client:
        while not client.ready():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise SystemExit(f"gvm-demo: the service did not become ready; its log:\n{tail}")
            time.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the service drains, then stops its Redis), SIGKILL after 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


DESCRIPTION = """\
The whole loop on this machine, in one command: start the budget service (with its own embedded
Redis) on a free port, train the tiny model on the arithmetic task for a few steps with GVM
allocation (one line per step), print where to look, and stop the service, also on Ctrl-C or
SIGTERM. The first run builds and warms up the tiny model (1-2 minutes, with a progress bar);
it is cached after that."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gvm-demo", description=DESCRIPTION)
    parser.add_argument(
        "--out-dir", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="service bind address")
    parser.add_argument("--port", type=int, default=0, help="service port (0: a free one)")
    parser.add_argument("--steps", type=int, default=8, help="training steps")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    parser.add_argument("--budget", type=int, default=64, help="samples per step")
    parser.add_argument("--seed", type=int, default=0, help="prompts, sampling and initialisation")
    parser.add_argument(
        "--keep-serving", action="store_true", help="leave the service up until Ctrl-C"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Explicit handlers, whatever we inherited: under `nohup ... &` and some CI runners SIGINT
    # starts out ignored, and Python then leaves it so. `kill` stops us the way Ctrl-C does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    out: Path = args.out_dir
    port = args.port or free_port(args.host)
    run_id = "demo"
    started = time.perf_counter()
    try:
        service = running_service(args.host, port, out / "redis", out / "service.log")
        with service as (url, process):
            print(f"gvm-demo: service ready at {url} (embedded Redis, data in {out / 'redis'})")
            # Imported only now: torch starts threads, and the service was forked before them.
            from trainer_client.trainer.config import TrainConfig
            from trainer_client.trainer.train import quiet_transformers, train

            quiet_transformers()
            config = TrainConfig(
                service_url=url,
                run_id=run_id,
                allocation="gvm",
                algo="raft",
                mode="online",
                steps=args.steps,
                batch_size=args.batch_size,
                budget=args.budget,
                max_level=3,  # levels the warm model solves 40%, 14% and 1% of the time
                train_prompts=2 * args.batch_size,  # prompts come back every other step
                eval_prompts=96,
                eval_every=max(args.steps // 2, 1),
                seed=args.seed,
                out_dir=str(out / "train"),
                progress=False,  # one line per step instead
            )
            summary = train(config)
            print(
                f"\ngvm-demo: {summary['cumulative_generated']} samples in {config.steps} steps, "
                f"held-out accuracy {summary['initial_eval_accuracy']:.3f} -> "
                f"{summary['final_eval_accuracy']:.3f}, {time.perf_counter() - started:.0f} s\n"
                f"  per-step metrics:   {summary['metrics']}\n"
                f"  checkpoint:         {summary['checkpoint']}\n"
                f"  service log:        {out / 'service.log'}\n"
                f"  API docs:           {url}/docs\n"
                f"  latest allocation:  {url}/v1/runs/{run_id}/allocations/latest\n"
                f"  run summary:        {url}/v1/runs/{run_id}/summary"
            )
            if not args.keep_serving:
                print("  (the service stops now: add --keep-serving to browse these URLs)")
            else:
                print("gvm-demo: the service stays up; Ctrl-C stops it")
                while process.poll() is None:
                    time.sleep(1)
                print(f"gvm-demo: the service exited ({process.returncode})", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print("\ngvm-demo: interrupted; the service is stopped", file=sys.stderr)
        return 130
    print("gvm-demo: service stopped")
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
