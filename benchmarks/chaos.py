"""Chaos in a real training run: the reference trainer keeps going while its service and Redis fail.

`gvm-train` (its default: the warmed-up tiny model, HF generation on CPU) runs N steps against
the service while a seeded schedule, at random steps, (1) SIGKILLs the service process and
restarts it, (2) SIGKILLs Redis (AOF on, appendfsync always) and restarts it on the same data
dir, (3) SIGSTOPs Redis for longer than the client gives a request, then SIGCONTs it.
Each fault lasts `--outage-s`.

Checked after each run: the trainer finished; it fell back to uniform counts while the service
was away and its log says so; the run's stored totals equal exactly what the trainer generated
and accepted (its summary.json): nothing lost, nothing counted twice.

    python benchmarks/chaos.py                   # 3 runs (seeds 0-2); writes results/chaos.json
    python benchmarks/chaos.py --runs 1 --steps 12 --out /tmp/chaos.json   # the CI size
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import httpx

from budget_service.embedded import LocalRedis, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, machine

FAULTS = ("kill service", "kill redis", "pause redis")


class Service:
    """`uvicorn` on a fixed port, so a restart keeps the trainer's URL."""

    def __init__(self, redis_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("GVM_", "REDIS_"))}
        self.env.update(REDIS_URL=redis_url, GVM_LOG_LEVEL="warning")
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "budget_service.app:create_app", "--factory",
             "--port", str(self.port), "--no-access-log", "--log-level", "warning"],
            env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("service did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


def steps_done(metrics: Path) -> int:
    with suppress(FileNotFoundError):
        return len(metrics.read_text().splitlines())
    return 0


def one_run(seed: int, steps: int, outage_s: float, root: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    # three fault steps, in order, spaced so that each outage ends before the next begins
    at = sorted(rng.sample(range(1, steps - 1), 3))
    schedule = dict(zip(at, FAULTS, strict=True))
    out = root / f"run-{seed}"
    with ExitStack() as stack:
        redis = LocalRedis(root / f"redis-{seed}", appendfsync="always")
        redis.start()
        stack.callback(redis.stop)
        service = Service(redis.url, root / f"service-{seed}.log")
        service.start()
        stack.callback(service.kill)
        run_id = f"chaos-{seed}"
        log = (root / f"train-{seed}.log").open("w")
        trainer = subprocess.Popen(
            [sys.executable, "-m", "trainer_client.trainer.train", "--service-url", service.url,
             "--run-id", run_id, "--steps", str(steps), "--batch-size", "4",
             "--budget", "24", "--train-prompts", "8", "--eval-prompts", "8",
             "--eval-every", str(steps), "--max-new-tokens", "8", "--out-dir", str(out),
             "--no-progress", "--log-every", "1", "--seed", str(seed)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(trainer.kill)
        done: list[dict[str, Any]] = []
        metrics = out / "metrics.jsonl"
        while trainer.poll() is None:
            step = steps_done(metrics)
            due = [k for k in schedule if k <= step]  # an outage may outlast several steps
            fault = schedule.pop(due[0]) if due else None
            if fault is None:
                time.sleep(0.05)
                continue
            started = time.monotonic()
            assert redis.process is not None
            if fault == "kill service":
                service.kill()
                time.sleep(outage_s)
                service.start()
            elif fault == "kill redis":
                redis.kill()
                time.sleep(outage_s)
                redis.start()  # the AOF is replayed
            else:
                os.kill(redis.process.pid, signal.SIGSTOP)
                time.sleep(outage_s)
                os.kill(redis.process.pid, signal.SIGCONT)
            done.append({"fault": fault, "after_step": step,
                         "seconds": round(time.monotonic() - started, 2)})  # fmt: skip
        log.close()
        summary = json.loads((out / "summary.json").read_text()) if trainer.returncode == 0 else {}
        stored = httpx.get(f"{service.url}/v1/runs/{run_id}/summary", timeout=10).json()
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    text = (root / f"train-{seed}.log").read_text()
    return {
        "seed": seed,
        "exit_code": trainer.returncode,
        "faults": done,
        "steps_logged": len(records),
        "fallback_steps": [r["step"] for r in records if r["fallback"]],
        "fallback_logged": text.count("FALLBACK uniform"),
        "generated": summary.get("cumulative_generated"),
        "accepted": summary.get("accepted"),
        "stored_samples": stored.get("samples"),
        "stored_accepted": stored.get("accepted"),
        "spooled_pending": summary.get("spooled_pending"),
        "exact": summary.get("cumulative_generated") == stored.get("samples")
        and summary.get("accepted") == stored.get("accepted"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs, seeds 0..runs-1")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--outage-s", type=float, default=3.0, help="> the client's retry span")
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gvm-chaos-") as tmp:
        runs = [one_run(s, args.steps, args.outage_s, Path(tmp)) for s in range(args.runs)]
    result = {
        "benchmark": "chaos in a real training run (issue 20)",
        "steps": args.steps,
        "outage_s": args.outage_s,
        "machine": machine(),
        "runs": runs,
        "all_exact": all(r["exact"] for r in runs),
    }
    for r in runs:
        steps = [f["after_step"] for f in r["faults"]]
        print(f"seed {r['seed']}: exit {r['exit_code']} faults after steps {steps} "
              f"fallback steps {r['fallback_steps']} generated {r['generated']} "
              f"stored {r['stored_samples']} exact {r['exact']}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)
    return result


if __name__ == "__main__":
    main()
