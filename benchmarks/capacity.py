"""Capacity of one Redis shard, measured: memory per prompt statistic and per run, and Redis CPU
time per report and per allocation.

A private redis-server (the embedded one: AOF on, appendfsync everysec) and the service's own
request handlers (`post_observations`, `create_allocation`: validation, Store, Lua scripts, the
allocator), called in this process without HTTP, so every byte and every Redis command is what
the service writes and sends.

- Memory: one run gets `--reports` reports of `--per-report` observations, each for new 14-byte
  prompt ids (100,000 prompt statistics by default). Per prompt statistic: `MEMORY USAGE` of the
  run's stats hash (SAMPLES 0: every field), and the `used_memory` delta of the whole write less
  the run's other keys. Per run: `MEMORY USAGE` of each of its other keys at the end, when it
  has served `--requests` 1,024-prompt allocations (the latest is that answer's JSON, the
  history holds at most 1,000 points) and remembers every report id.
- CPU: `CONFIG RESETSTAT`, then `--requests` reports of 1,024 observations of stored prompts,
  then as many allocations of 1,024 stored prompts (budget 8,192), each phase alone. Redis's
  main-thread CPU time (`INFO cpu`) over the phase divided by the requests is what a request
  costs the shard; a shard runs commands on one thread, so it serves at most
  1 / (CPU seconds per request) of them per second. `INFO commandstats` gives the scripts' own
  share (usec_per_call of EVALSHA). CPU time, unlike wall time, does not depend on what else
  runs on the machine (its load average is recorded anyway).

    python benchmarks/capacity.py            # ~20 s; writes results/capacity.json
    python benchmarks/capacity.py --small    # the CI size (~2 s), no file
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Response
from redis import Redis

from budget_service.embedded import LocalRedis
from budget_service.routes.allocations import create_allocation
from budget_service.routes.observations import post_observations
from budget_service.routes.runs import put_run
from budget_service.schemas import AllocationRequest, ReportRequest, RunConfig
from budget_service.settings import Settings
from budget_service.store import Store, run_keys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, machine

PROMPTS = 1024  # per report and per allocation in the CPU phase
BUDGET = 8 * PROMPTS
RUN = "capacity"
KEYS = dict(  # the run's keys by name, in run_keys' order (budget_service/store/keys.py)
    zip(("run", "stats", "totals", "reports", "latest", "history"), run_keys(RUN), strict=True)
)


def prompt_id(index: int) -> str:
    return f"p{index:013d}"  # 14 bytes


def report(rng: np.random.Generator, report_id: str, step: int, ids: list[str]) -> ReportRequest:
    """A trainer's report: 8 samples per prompt, the accepted ones' norms as sum and count."""
    accepted = rng.integers(0, 9, len(ids)).tolist()
    norms = rng.uniform(0.5, 2.0, len(ids)).tolist()
    return ReportRequest.model_validate(
        {
            "report_id": report_id,
            "step": step,
            "observations": [
                {"prompt_id": i, "samples": 8, "accepted": a,
                 "grad_norm_sum": a * g, "grad_norm_count": a}
                for i, a, g in zip(ids, accepted, norms, strict=True)
            ],
        }
    )  # fmt: skip


def usage(redis: Redis, key: str) -> int:
    return int(redis.memory_usage(key, samples=0) or 0)


def cpu_seconds(redis: Redis) -> dict[str, float]:
    cpu = redis.info("cpu")
    return {
        "main_thread": cpu["used_cpu_sys_main_thread"] + cpu["used_cpu_user_main_thread"],
        "process": cpu["used_cpu_sys"] + cpu["used_cpu_user"],
    }


async def measure_memory(
    store: Store, settings: Settings, redis: Redis, reports: int, per_report: int
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    before = int(redis.info("memory")["used_memory"])
    await put_run(RUN, RunConfig(), store, Response())
    for r in range(reports):
        ids = [prompt_id(r * per_report + j) for j in range(per_report)]
        await post_observations(RUN, report(rng, f"fill-{r}", r, ids), store, settings)
    written = int(redis.info("memory")["used_memory"]) - before
    prompts = reports * per_report
    assert redis.hlen(KEYS["stats"]) == prompts
    others = {name: usage(redis, key) for name, key in KEYS.items() if name != "stats"}
    stats = usage(redis, KEYS["stats"])
    return {
        "prompts": prompts,
        "prompt_id_bytes": len(prompt_id(0)),
        "stats_hash_bytes": stats,
        "used_memory_delta_bytes": written,
        "per_prompt_bytes_memory_usage": round(stats / prompts, 1),
        "per_prompt_bytes_used_memory": round((written - sum(others.values())) / prompts, 1),
    }


def measure_run(redis: Redis) -> dict[str, Any]:
    """The run's keys but its statistics, after the CPU phase: a run that has served many
    1,024-prompt allocations and remembers many report ids."""
    sizes = {name: usage(redis, key) for name, key in KEYS.items() if name != "stats"}
    report_ids, points = int(redis.zcard(KEYS["reports"])), int(redis.llen(KEYS["history"]))
    return {
        "key_bytes": sizes,
        "fixed_bytes": sizes["run"] + sizes["totals"] + sizes["latest"],
        "latest_allocation_prompts": PROMPTS,
        "report_ids": report_ids,
        "per_report_id_bytes": round(sizes["reports"] / report_ids, 1),
        "history_points": points,
        "per_history_point_bytes": round(sizes["history"] / points, 1),
    }


async def measure_cpu(
    store: Store, settings: Settings, redis: Redis, requests: int, prompts: int
) -> dict[str, Any]:
    """Redis CPU per report and per allocation of PROMPTS stored prompts, one phase each."""
    rng = np.random.default_rng(1)
    batches = [
        [prompt_id(int(i)) for i in rng.choice(prompts, PROMPTS, replace=False)]
        for _ in range(requests)
    ]
    reports = [report(rng, f"cpu-{k}", 1_000 + k, ids) for k, ids in enumerate(batches)]
    allocations = [AllocationRequest(prompt_ids=ids, budget=BUDGET) for ids in batches]
    await create_allocation(RUN, allocations[0], store, settings)  # loads its scripts: no NOSCRIPT

    async def phase(kind: str) -> dict[str, Any]:
        redis.config_resetstat()
        start = cpu_seconds(redis)
        for k in range(requests):
            if kind == "report":
                await post_observations(RUN, reports[k], store, settings)
            else:
                await create_allocation(RUN, allocations[k], store, settings)
        end = cpu_seconds(redis)
        stats = {
            name.removeprefix("cmdstat_"): s
            for name, s in redis.info("commandstats").items()
            if s["calls"]
        }
        scripts_usec = sum(stats[name]["usec"] for name in ("evalsha", "eval") if name in stats)
        commands = {
            name: {"calls": s["calls"], "usec_per_call": s["usec_per_call"]}
            for name, s in stats.items()
        }
        main = (end["main_thread"] - start["main_thread"]) / requests
        return {
            "requests": requests,
            "prompts_per_request": PROMPTS,
            "cpu_ms_per_request_main_thread": round(main * 1e3, 3),
            "cpu_ms_per_request_process": round(
                (end["process"] - start["process"]) / requests * 1e3, 3
            ),
            "script_ms_per_request": round(scripts_usec / requests / 1e3, 3),
            "shard_max_rps": round(1 / main),
            "commandstats": commands,
        }

    report_cost, allocate_cost = await phase("report"), await phase("allocate")
    step_ms = (
        report_cost["cpu_ms_per_request_main_thread"]
        + allocate_cost["cpu_ms_per_request_main_thread"]
    )
    return {
        "report": report_cost,
        "allocate": allocate_cost,
        # a training step is one report and one allocation
        "step": {"cpu_ms": round(step_ms, 3), "shard_max_per_s": round(1e3 / step_ms)},
    }


async def measure(reports: int, per_report: int, requests: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="gvm-capacity-") as root,
        LocalRedis(Path(root)) as server,
    ):
        settings = Settings(redis_url=server.url, log_level="warning")
        store = Store.from_settings(settings)
        redis = Redis.from_url(server.url)
        try:
            memory = await measure_memory(store, settings, redis, reports, per_report)
            cpu = await measure_cpu(store, settings, redis, requests, reports * per_report)
            run = measure_run(redis)
            version = redis.info("server")["redis_version"]
        finally:
            redis.close()
            await store.aclose()
    return {"redis_version": version, "memory": memory, "run": run, "cpu": cpu}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CI size: 2,048 prompts, 5 requests")
    parser.add_argument("--out", type=Path, help="results JSON; default: "
                        "results/capacity.json, none with --small")  # fmt: skip
    parser.add_argument("--reports", type=int, default=100)
    parser.add_argument("--per-report", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.small:
        args.reports, args.per_report, args.requests = 2, PROMPTS, 5
    figures = asyncio.run(measure(args.reports, args.per_report, args.requests))
    result = {
        "benchmark": "Redis capacity per shard: memory and CPU per request (issue 20)",
        "settings": {
            "fill_reports": args.reports,
            "observations_per_fill_report": args.per_report,
            "requests_per_phase": args.requests,
            "budget": BUDGET,
            "run_config": "defaults",
            "redis": "embedded redis-server, AOF on, appendfsync everysec",
        },
        "machine": machine(),
        **figures,
    }
    memory, cpu = result["memory"], result["cpu"]
    print(f"per prompt: {memory['per_prompt_bytes_memory_usage']} B (MEMORY USAGE), "
          f"{memory['per_prompt_bytes_used_memory']} B (used_memory); "
          f"per run: {result['run']}")  # fmt: skip
    for name, phase in ((name, cpu[name]) for name in ("report", "allocate")):
        cpu_ms, scripts_ms = phase["cpu_ms_per_request_main_thread"], phase["script_ms_per_request"]
        print(
            f"{name}: {cpu_ms} ms of Redis CPU (scripts {scripts_ms} ms), "
            f"{phase['shard_max_rps']}/s per shard"
        )
    print(f"a step (one of each): {cpu['step']['cpu_ms']} ms, {cpu['step']['shard_max_per_s']}/s")
    out = args.out or (None if args.small else RESULTS / "capacity.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(out)
    return result


if __name__ == "__main__":
    main()
