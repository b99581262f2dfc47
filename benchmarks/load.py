"""The service under load on loopback, against the raw-Redis floor, in the same run.

8 concurrent async clients, each with its own connection, for a bounded time per scenario:

- service allocate: POST /allocations for 1,024 prompt ids (budget 8,192);
- service report:   POST /observations with 1,024 observations (a fresh report_id each);
- floor allocate:   the same read done directly with redis-py: one pipeline of 1,024 HMGETs, one
                    hash per prompt (the layout a client would write by hand);
- floor report:     the same write done directly: one pipeline of 4,096 HINCRBYFLOATs (no decay,
                    no idempotency, no atomicity: strictly less work than the service does).

The floor uses redis-py's fastest path: the synchronous client with hiredis, one thread per
floor client (its asyncio client spends two to three times as long per pipelined command).

The service runs as `uvicorn` in its own process against its own redis-server (AOF on,
appendfsync everysec), all on this machine, so load generator, service and Redis share its
cores: the machine's load average is recorded next to the numbers. Targets (issue 4): p99 of
allocate within 2x the floor's, p99 of report no slower than the floor's, zero errors. At the
end the stored totals are checked against the number of acknowledged reports.

    python benchmarks/load.py                # ~3 minutes; writes results/load.{json,png}
    python benchmarks/load.py --duration 5   # quicker look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from redis import Redis

from budget_service.embedded import LocalRedis, free_port

PROMPTS = 1024
BUDGET = 8 * PROMPTS
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Scenario:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, float | int]:
        lat = np.array(self.latencies_ms)
        return {
            "requests": len(lat),
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "throughput_rps": round(len(lat) / self.seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "mean_ms": round(float(lat.mean()), 2),
        }


async def drive(
    name: str, clients: int, duration: float, warmup: float, once: Callable[[int], Awaitable[bool]]
) -> Scenario:
    """`clients` loops calling `once(client)` back to back; only post-warmup calls count."""
    scenario = Scenario(name)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def loop(client: int) -> None:
        while (now := time.perf_counter()) < stop_at:
            try:
                ok = await once(client)
            except Exception:  # every failure counts as an error; none stops the run
                ok = False
            done = time.perf_counter()
            if now >= measure_from:
                if ok:
                    scenario.latencies_ms.append((done - now) * 1000)
                else:
                    scenario.errors += 1

    await asyncio.gather(*(loop(c) for c in range(clients)))
    scenario.seconds = time.perf_counter() - measure_from
    return scenario


def report_body_parts(rng: random.Random, prompt_ids: list[str]) -> tuple[bytes, bytes]:
    """A 1,024-observation report as bytes around its report_id (encoded once, reused)."""
    observations = []
    for pid in prompt_ids:
        samples = rng.randint(4, 16)
        accepted = rng.randint(0, samples)
        observations.append(
            {"prompt_id": pid, "samples": samples, "accepted": accepted,
             "grad_norm_sum": round(rng.uniform(0.5, 3.0) * accepted, 6),
             "grad_norm_count": accepted}
        )  # fmt: skip
    head = b'{"report_id": "'
    tail = ('", "step": 1, "observations": ' + json.dumps(observations) + "}").encode()
    return head, tail


async def run_benchmark(
    args: argparse.Namespace, redis_url: str, service_url: str
) -> dict[str, Any]:
    rng = random.Random(0)
    prompt_ids = [f"prompt-{i:05d}" for i in range(PROMPTS)]
    run_id = f"load-{os.getpid()}"
    headers = {"content-type": "application/json"}
    http = [
        httpx.AsyncClient(base_url=service_url, timeout=30, limits=httpx.Limits(max_connections=1))
        for _ in range(args.clients)
    ]
    redis = Redis.from_url(redis_url, max_connections=args.clients * 2)
    threads = ThreadPoolExecutor(max_workers=args.clients)  # one per client: no queueing
    loop = asyncio.get_running_loop()
    try:
        # --- setup: the run, and stored statistics for every prompt (service and floor) ---------
        await http[0].put(f"/v1/runs/{run_id}", json={"min_samples": 1, "half_life_steps": 50})
        head, tail = report_body_parts(rng, prompt_ids)
        seed = await http[0].post(
            f"/v1/runs/{run_id}/observations", content=head + b"seed" + tail, headers=headers
        )
        seed.raise_for_status()
        floor_keys = [f"floor:{{{run_id}}}:{pid}" for pid in prompt_ids]
        pipe = redis.pipeline(transaction=False)
        for key in floor_keys:
            pipe.hset(key, mapping={"samples": 8, "accepted": 3, "grad_norm_sum": 4.5,
                                    "grad_norm_count": 3, "last_step": 1})  # fmt: skip
        pipe.execute()

        allocate_body = json.dumps({"prompt_ids": prompt_ids, "budget": BUDGET}).encode()
        counter = iter(range(10**9))
        acknowledged = [1]  # the seed report

        async def service_allocate(client: int) -> bool:
            response = await http[client].post(
                f"/v1/runs/{run_id}/allocations", content=allocate_body, headers=headers
            )
            return response.status_code == 200 and len(response.json()["items"]) == PROMPTS

        async def service_report(client: int) -> bool:
            body = head + f"r{next(counter)}".encode() + tail
            response = await http[client].post(
                f"/v1/runs/{run_id}/observations", content=body, headers=headers
            )
            ok = response.status_code == 200 and response.json()["applied"] == PROMPTS
            if ok:
                acknowledged[0] += 1
            return ok

        fields = ("samples", "accepted", "grad_norm_sum", "grad_norm_count", "last_step")

        def floor_read() -> bool:
            pipe = redis.pipeline(transaction=False)
            for key in floor_keys:
                pipe.hmget(key, fields)
            return len(pipe.execute()) == PROMPTS

        def floor_write() -> bool:
            pipe = redis.pipeline(transaction=False)
            for key in floor_keys:
                pipe.hincrbyfloat(key, "samples", 8)
                pipe.hincrbyfloat(key, "accepted", 3)
                pipe.hincrbyfloat(key, "grad_norm_sum", 4.5)
                pipe.hincrbyfloat(key, "grad_norm_count", 3)
            return len(pipe.execute()) == 4 * PROMPTS

        async def floor_allocate(client: int) -> bool:
            return await loop.run_in_executor(threads, floor_read)

        async def floor_report(client: int) -> bool:
            return await loop.run_in_executor(threads, floor_write)

        scenarios = [
            ("service allocate", service_allocate),
            ("floor allocate", floor_allocate),
            ("service report", service_report),
            ("floor report", floor_report),
        ]
        results: dict[str, Any] = {}
        single: dict[str, Any] = {}
        for name, once in scenarios:
            scenario = await drive(name, args.clients, args.duration, args.warmup, once)
            results[name] = scenario.summary()
            print(f"{name:17s} {results[name]}", flush=True)
        # The same with one client: each request's own cost, without queueing behind the others.
        for name, once in scenarios:
            scenario = await drive(name, 1, args.single_duration, args.warmup, once)
            single[name] = scenario.summary()
            print(f"{name:17s} 1 client {single[name]}", flush=True)

        summary = (await http[0].get(f"/v1/runs/{run_id}/summary")).json()
        # Every acknowledged report (warmup included) is in the totals, exactly once.
        seed_samples = json.loads(b'{"r": "' + tail)["observations"]
        per_report = sum(o["samples"] for o in seed_samples)
        return {
            "scenarios": results,
            "single_client": single,
            "totals_check": {
                "acknowledged_reports": acknowledged[0],
                "reports_remembered": summary["reports"],
                "stored_samples": summary["samples"],
                "expected_samples": acknowledged[0] * per_report,
                "exact": summary["samples"] == acknowledged[0] * per_report,
            },
        }
    finally:
        for client in http:
            await client.aclose()
        threads.shutdown()
        redis.close()


def start_service(redis_url: str, workers: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GVM_", "REDIS_"))}
    env.update(REDIS_URL=redis_url, GVM_LOG_LEVEL="warning")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "budget_service.app:create_app", "--factory",
         "--port", str(port), "--workers", str(workers), "--no-access-log",
         "--log-level", "warning"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"service did not start:\n{log.read_text()}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    panels = [("scenarios", results["clients"], kind) for kind in ("allocate", "report")] + [
        ("single_client", 1, kind) for kind in ("allocate", "report")
    ]
    for ax, (key, clients, kind) in zip(axes.flat, panels, strict=True):
        x = np.arange(3)
        for i, name in enumerate((f"service {kind}", f"floor {kind}")):
            row = results[key][name]
            values = [row["p50_ms"], row["p95_ms"], row["p99_ms"]]
            label = f"{name} ({row['throughput_rps']} req/s)"
            ax.bar(x + (i - 0.5) * 0.38, values, 0.38, label=label)
        ax.set_xticks(x, ["p50", "p95", "p99"])
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{kind}: 1,024 prompts, {clients} client{'s' if clients > 1 else ''}")
        ax.legend(fontsize=8)
    load = results["loadavg_before"]
    fig.suptitle(f"GVM Budget under load on loopback (load avg before: {load[0]:.2f})")
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--duration", type=float, default=20.0, help="measured seconds per scenario"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument(
        "--single-duration", type=float, default=8.0, help="measured seconds with one client"
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    args = parser.parse_args()

    loadavg_before = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="gvm-load-") as tmp,
        LocalRedis(Path(tmp) / "redis") as redis,
    ):
        service, url = start_service(redis.url, args.workers, Path(tmp) / "service.log")
        try:
            measured = asyncio.run(run_benchmark(args, redis.url, url))
        finally:
            service.terminate()
            service.wait(30)
        redis_version = redis.binary.name
    s = measured["scenarios"]
    ratios = {
        "allocate_p99_vs_floor": round(
            s["service allocate"]["p99_ms"] / s["floor allocate"]["p99_ms"], 2
        ),
        "report_p99_vs_floor": round(
            s["service report"]["p99_ms"] / s["floor report"]["p99_ms"], 2
        ),
    }
    targets = {
        "allocate_p99_within_2x_floor": ratios["allocate_p99_vs_floor"] <= 2.0,
        "report_p99_not_slower_than_floor": ratios["report_p99_vs_floor"] <= 1.0,
        "zero_errors": all(row["errors"] == 0 for row in s.values()),
        "totals_exact": measured["totals_check"]["exact"],
    }
    results = {
        "benchmark": "service under load (issue 4)",
        "prompts": PROMPTS,
        "budget": BUDGET,
        "clients": args.clients,
        "duration_s": args.duration,
        "workers": args.workers,
        **measured,
        "ratios": ratios,
        "targets_met": targets,
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "redis_server": redis_version},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(json.dumps({"ratios": ratios, "targets_met": targets,
                      "loadavg_before": results["loadavg_before"]}, indent=2))  # fmt: skip
    print(markdown_table(results))


def markdown_table(results: dict[str, Any]) -> str:
    """The README table (README "Service under load" shows exactly this)."""
    lines = [
        "| scenario (1,024 prompts) | clients | p50 ms | p95 ms | p99 ms | req/s | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, clients in (("scenarios", results["clients"]), ("single_client", 1)):
        for name, row in results[key].items():
            lines.append(
                f"| {name} | {clients} | {row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} "
                f"| {row['throughput_rps']} | {row['errors']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
