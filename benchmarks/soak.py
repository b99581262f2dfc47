"""Soak: 16 simulated trainers against one service for 10 minutes on loopback (issue 9).

Each trainer works on a run of its own for a random number of steps, then deletes it and
starts another (run churn). Every step it reports a batch of observations and asks for an
allocation; at random it re-sends an old report (a duplicate), or sends a report twice at once
(a retry racing its original). A request that fails is retried until it is answered, as the
client library would. The load generator keeps its own ledger of what each run must hold:

- every unique report applied exactly once, every duplicate answered `duplicate: true`;
- at the end, each live run's summary and every prompt's statistics equal the ledger, exactly
  (no decay, increments that are multiples of 1/4: no rounding, whatever the order);
- deleted runs are gone, and Redis holds the keys of the live runs and nothing else;
- the service's resident memory and Redis' memory are sampled all along: growth is reported
  from the end of the warm-up to the end.

The service (`uvicorn`, one worker) and a redis-server (AOF on) run on this machine beside the
load generator, so the machine's load average is recorded with the results.

    python benchmarks/soak.py                 # 10 minutes; writes results/soak.{json,png}
    python benchmarks/soak.py --duration 30   # a quick look (writes results/soak-30s.json)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from _report import machine, write_json
from load import start_service

from budget_service.embedded import LocalRedis

TRAINERS = 16
PROMPTS_PER_RUN = 64
BATCH = 16
BUDGET = 128
STEPS_PER_RUN = (20, 80)
P_DUPLICATE = 0.1  # re-send an earlier report of the run
P_RACE = 0.05  # send a new report twice at once
CONFIG = {"strategy": "gvm", "min_samples": 1, "half_life_steps": None}
SAMPLE_EVERY_S = 5.0


@dataclass
class Ledger:
    """What one run must hold: per prompt [samples, accepted, grad_norm_sum, grad_norm_count]."""

    prompts: dict[str, list[float]] = field(default_factory=dict)
    reports: int = 0

    def add(self, observations: list[dict[str, Any]]) -> None:
        for o in observations:
            row = self.prompts.setdefault(o["prompt_id"], [0.0, 0.0, 0.0, 0.0])
            row[0] += o["samples"]
            row[1] += o["accepted"]
            row[2] += o["grad_norm_sum"]
            row[3] += o["grad_norm_count"]
        self.reports += 1


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # "kind status" of non-2xx answers
    transport_errors: Counter[str] = field(default_factory=Counter)  # "kind ExceptionClass"
    violations: list[str] = field(default_factory=list)  # broken promises; must stay empty

    def check(self, ok: bool, what: str) -> None:
        if not ok and len(self.violations) < 50:
            self.violations.append(what)


class Trainer:
    def __init__(self, rank: int, client: httpx.AsyncClient, tally: Tally, stop_at: float):
        self.rank = rank
        self.client = client
        self.tally = tally
        self.stop_at = stop_at
        self.rng = random.Random(rank)
        self.live: dict[str, Ledger] = {}  # this trainer's run still stored at the end
        self.deleted: list[str] = []

    async def request(self, kind: str, method: str, path: str, body: Any = None) -> httpx.Response:
        """Send until answered with a non-5xx status (a trainer's retry loop)."""
        while True:
            self.tally.requests[kind] += 1
            try:
                answer = await self.client.request(method, path, json=body)
            except httpx.TransportError as exc:  # retried, as a client would
                self.tally.transport_errors[f"{kind} {type(exc).__name__}"] += 1
                await asyncio.sleep(0.05)
                continue
            if answer.status_code >= 400:
                self.tally.statuses[f"{kind} {answer.status_code}"] += 1
            if answer.status_code < 500:
                return answer
            await asyncio.sleep(float(answer.headers.get("retry-after", "0.1")))

    def observations(self, prompt_ids: list[str]) -> list[dict[str, Any]]:
        out = []
        for prompt_id in self.rng.sample(prompt_ids, self.rng.randint(4, 32)):
            samples = self.rng.randint(1, 16)
            accepted = self.rng.randint(0, samples)
            out.append({"prompt_id": prompt_id, "samples": samples, "accepted": accepted,
                        "grad_norm_sum": self.rng.randint(0, 16 * accepted) / 4,
                        "grad_norm_count": accepted})  # fmt: skip
        return out

    async def report(self, run: str, body: dict[str, Any], fresh: bool) -> None:
        answer = await self.request("report", "POST", f"/v1/runs/{run}/observations", body)
        result = answer.json()
        self.tally.check(answer.status_code == 200, f"report {answer.status_code}")
        expected = (0, True) if not fresh else (len(body["observations"]), False)
        # A fresh report's own retry may find it applied already (its first answer was lost).
        got = (result.get("applied"), result.get("duplicate"))
        self.tally.check(got == expected or (fresh and got == (0, True)), f"report {got}")

    async def run_once(self, index: int) -> None:
        run = f"soak-{self.rank}-{index}"
        prompt_ids = [f"{run}-p{i}" for i in range(PROMPTS_PER_RUN)]
        ledger = Ledger()
        answer = await self.request("put", "PUT", f"/v1/runs/{run}", CONFIG)
        self.tally.check(answer.status_code == 201, f"put {answer.status_code}")
        self.live[run] = ledger
        sent: list[dict[str, Any]] = []
        for step in range(self.rng.randint(*STEPS_PER_RUN)):
            if time.monotonic() >= self.stop_at:
                return  # the run stays: the final check covers it
            observations = self.observations(prompt_ids)
            body = {"report_id": f"r{step}", "step": step, "observations": observations}
            ledger.add(observations)
            sent.append(body)
            if self.rng.random() < P_RACE:  # the original and its retry, at once
                first, second = await asyncio.gather(
                    self.request("report", "POST", f"/v1/runs/{run}/observations", body),
                    self.request("report", "POST", f"/v1/runs/{run}/observations", body),
                )
                applied = sorted(a.json().get("applied") for a in (first, second))
                self.tally.check(applied == [0, len(observations)], f"race {applied}")
            else:
                await self.report(run, body, fresh=True)
            if self.rng.random() < P_DUPLICATE:
                await self.report(run, self.rng.choice(sent), fresh=False)
            batch = {"prompt_ids": self.rng.sample(prompt_ids, BATCH), "budget": BUDGET}
            answer = await self.request("allocate", "POST", f"/v1/runs/{run}/allocations", batch)
            plan = answer.json()
            self.tally.check(
                answer.status_code == 200 and 0 < plan["total"] <= BUDGET,
                f"allocate {answer.status_code} {plan.get('total')}",
            )
        answer = await self.request("delete", "DELETE", f"/v1/runs/{run}")
        self.tally.check(answer.status_code == 204, f"delete {answer.status_code}")
        del self.live[run]
        self.deleted.append(run)

    async def work(self) -> None:
        index = 0
        while time.monotonic() < self.stop_at:
            await self.run_once(index)
            index += 1


async def verify(
    client: httpx.AsyncClient, trainers: list[Trainer], redis_url: str
) -> dict[str, Any]:
    """The stored state against the trainers' ledgers."""
    mismatches: list[str] = []
    prompts_checked = 0
    live = {run: ledger for t in trainers for run, ledger in t.live.items()}
    for run, ledger in live.items():
        summary = (await client.get(f"/v1/runs/{run}/summary")).json()
        totals = [sum(row[i] for row in ledger.prompts.values()) for i in range(4)]
        stored = [summary[k] for k in ("samples", "accepted", "grad_norm_sum", "grad_norm_count")]
        if stored != totals or summary["reports"] != ledger.reports:
            mismatches.append(f"{run}: summary {stored} vs ledger {totals}")
        for prompt_id, row in ledger.prompts.items():
            stats = (await client.get(f"/v1/runs/{run}/prompts/{prompt_id}")).json()
            got = [stats[k] for k in ("samples", "accepted", "grad_norm_sum", "grad_norm_count")]
            prompts_checked += 1
            if got != row:
                mismatches.append(f"{run}/{prompt_id}: {got} vs {row}")
    deleted = [run for t in trainers for run in t.deleted]
    still_there = [
        run for run in deleted if (await client.get(f"/v1/runs/{run}")).status_code != 404
    ]
    redis = aioredis.Redis.from_url(redis_url)
    try:
        keys = {key.decode() async for key in redis.scan_iter(match="gvm:*", count=1000)}
    finally:
        await redis.aclose()
    expected_prefixes = {f"gvm:{{{run}}}:" for run in live}
    stray = sorted(k for k in keys if k[: k.index("}:") + 2] not in expected_prefixes)
    return {
        "live_runs": len(live),
        "deleted_runs": len(deleted),
        "reports_in_ledger": sum(ledger.reports for ledger in live.values()),
        "prompts_checked": prompts_checked,
        "mismatches": mismatches[:20],
        "deleted_runs_still_readable": still_there[:20],
        "redis_keys": len(keys),
        "stray_keys": stray[:20],
        "exact": not mismatches and not still_there and not stray,
    }


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def sample(pid: int, redis_url: str, tally: Tally, started: float, stop: asyncio.Event,
                 timeline: list[dict[str, float]]) -> None:  # fmt: skip
    """Every SAMPLE_EVERY_S: service RSS, Redis memory and keys, requests so far."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        while True:
            memory = await redis.info("memory")
            timeline.append({
                "t_s": round(time.monotonic() - started, 1),
                "service_rss_kib": _rss_kib(pid),
                "redis_used_memory_bytes": memory["used_memory"],
                "redis_keys": await redis.dbsize(),
                "requests": tally.requests.total(),
            })  # fmt: skip
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)
                return
            except TimeoutError:
                pass
    finally:
        await redis.aclose()


async def soak(
    args: argparse.Namespace, redis_url: str, service_url: str, pid: int
) -> dict[str, Any]:
    tally = Tally()
    started = time.monotonic()
    stop_at = started + args.duration
    clients = [httpx.AsyncClient(base_url=service_url, timeout=30) for _ in range(args.trainers)]
    trainers = [Trainer(rank, clients[rank], tally, stop_at) for rank in range(args.trainers)]
    timeline: list[dict[str, float]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(pid, redis_url, tally, started, stop, timeline))
    try:
        await asyncio.gather(*(trainer.work() for trainer in trainers))
        elapsed = time.monotonic() - started
        stop.set()
        await sampler
        check = await verify(clients[0], trainers, redis_url)
    finally:
        for client in clients:
            await client.aclose()
    warm = next(s for s in timeline if s["t_s"] >= min(args.warmup, elapsed / 2))
    end = timeline[-1]
    return {
        "elapsed_s": round(elapsed, 1),
        "requests": dict(tally.requests),
        "requests_total": tally.requests.total(),
        "requests_per_s": round(tally.requests.total() / elapsed, 1),
        "error_answers": dict(tally.statuses),
        "transport_errors": dict(tally.transport_errors),
        "violations": tally.violations,
        "ledger_check": check,
        "memory": {
            "from_t_s": warm["t_s"],
            "service_rss_kib": [warm["service_rss_kib"], end["service_rss_kib"]],
            "service_rss_growth_kib": end["service_rss_kib"] - warm["service_rss_kib"],
            "redis_used_memory_bytes": [
                warm["redis_used_memory_bytes"],
                end["redis_used_memory_bytes"],
            ],
            "redis_memory_growth_bytes": end["redis_used_memory_bytes"]
            - warm["redis_used_memory_bytes"],
        },
        "timeline": timeline,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = results["timeline"]
    t = [s["t_s"] / 60 for s in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    rss_mib = [s["service_rss_kib"] / 1024 for s in timeline]
    top.plot(t, rss_mib, label="service RSS")
    top.set_ylim(0, max(rss_mib) * 1.2)
    top.set_ylabel("MiB")
    top.legend()
    redis_mib = [s["redis_used_memory_bytes"] / 2**20 for s in timeline]
    bottom.plot(t, redis_mib, label="Redis used_memory", color="tab:red")
    bottom.set_ylabel("MiB")
    bottom.set_xlabel("minutes")
    bottom.legend()
    bottom.set_ylim(0, max(redis_mib) * 1.2)
    for ax in (top, bottom):
        ax.axvline(results["memory"]["from_t_s"] / 60, color="grey", lw=0.8, ls="--")
    fig.suptitle(f"Soak: {results['trainers']} trainers, {results['elapsed_s'] / 60:.0f} min, "
                 f"{results['requests_total']:,} requests (load avg before "
                 f"{results['loadavg_before'][0]:.2f})")  # fmt: skip
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--trainers", type=int, default=TRAINERS)
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="memory growth is measured from here on"
    )
    args = parser.parse_args()
    name = "soak" if args.duration == 600 else f"soak-{args.duration:g}s"

    loadavg_before = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="gvm-soak-") as tmp,
        LocalRedis(Path(tmp) / "redis") as redis,
    ):
        service, url = start_service(redis.url, 1, Path(tmp) / "service.log")
        try:
            measured = asyncio.run(soak(args, redis.url, url, service.pid))
        finally:
            service.terminate()
            service.wait(30)
        unhandled = (Path(tmp) / "service.log").read_text().count("unhandled error")
    results = {
        "benchmark": "soak (issue 9)",
        "trainers": args.trainers,
        "duration_s": args.duration,
        **measured,
        "service_unhandled_errors": unhandled,
        "held": {
            "ledger_exact": measured["ledger_check"]["exact"],
            "no_violations": not measured["violations"],
            "no_5xx": not any(k.split()[1].startswith("5") for k in measured["error_answers"]),
            "no_unhandled_errors": unhandled == 0,
        },
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
    }
    path = write_json(name, results)
    plot(results, path.with_suffix(".png"))
    brief = {k: v for k, v in results.items() if k not in ("timeline", "machine")}
    print(brief)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
