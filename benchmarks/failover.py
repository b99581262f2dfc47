"""Redis Cluster failover under load: does every acknowledged report survive `kill -9` of a primary?

A 3-primary / 3-replica cluster of real redis-server processes on loopback (AOF on,
cluster-node-timeout 1000 ms), the service (`uvicorn`, REDIS_CLUSTER=1) in its own process, and
8 trainer threads, each on its own run, reporting (a fresh report_id each time) and allocating.
Every trainer keeps a ledger: the report ids the service answered 200, and a spool of those it
did not (retried until acknowledged, as `BudgetClient` does). Mid-load, the primary that owns a
busy run's slot is SIGKILLed; the cluster promotes its replica; the killed node is restarted on
its data dir and rejoins as a replica. Kills are sequential, of a different primary each time.

Afterwards the ledger is checked against Redis: every acknowledged report id must be in its run's
report-id set (lost otherwise) and each run's stored samples must equal the acknowledged ones.
Measured per mode (GVM_REDIS_MIN_REPLICAS_ACK=1 "on", 0 "off"): reports lost, answers other than
200/503, the window clients saw non-200 answers after each kill, and report latency in normal
operation (before the first kill).

    python benchmarks/failover.py            # ~2 minutes; writes results/failover.{json,png}
    python benchmarks/failover.py --small    # the CI size: one kill per mode (~50 s), no files
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
from redis.cluster import RedisCluster

from budget_service.embedded import LocalRedis, find_cli_binary, find_server_binary, free_port
from budget_service.store import run_keys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, machine

TRAINERS = 8
PROMPTS = 32  # per report
SAMPLES = 8  # per prompt and report


@dataclass
class Answer:
    t: float  # seconds since the mode started
    kind: str  # "report" or "allocate"
    status: int  # HTTP status; 0 = no answer (transport error)
    ms: float


@dataclass
class Trainer:
    run_id: str
    answers: list[Answer] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)  # report ids answered 200
    spool: list[str] = field(default_factory=list)  # sent, not acknowledged yet


class Cluster:
    """Six redis-server processes on loopback, created as 3 primaries with one replica each."""

    def __init__(self, root: Path) -> None:
        self.nodes: list[LocalRedis] = []
        for _ in range(6):
            port = _cluster_port()
            self.nodes.append(
                LocalRedis(
                    root / str(port),
                    port=port,
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                    ),
                )
            )
        self.cli = str(find_cli_binary(find_server_binary()))

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def redis(self, node: LocalRedis, *args: str) -> str:
        return subprocess.run(
            [self.cli, "-p", str(node.port), *args], capture_output=True, text=True, timeout=10
        ).stdout

    def role(self, node: LocalRedis) -> str:
        info = self.redis(node, "info", "replication")
        return "primary" if "role:master" in info else "replica"

    def owner(self, key: str) -> LocalRedis:
        """The live node that serves `key`'s slot as primary."""
        slot = int(self.redis(self.nodes[0], "cluster", "keyslot", key).strip())
        for node in self.nodes:
            if node.process is None or self.role(node) != "primary":
                continue
            for line in self.redis(node, "cluster", "nodes").splitlines():
                fields = line.split()
                if "myself" in fields[2]:
                    for span in fields[8:]:
                        lo, _, hi = span.partition("-")
                        if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                            return node
        raise RuntimeError(f"no live primary serves slot {slot}")

    def wait_healthy(self, timeout: float = 60) -> float:
        """Until every live node says the cluster is ok and every replica is in sync."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            live = [n for n in self.nodes if n.process is not None]
            infos = [self.redis(n, "cluster", "info") for n in live]
            links = [self.redis(n, "info", "replication") for n in live]
            if all("cluster_state:ok" in i for i in infos) and all(
                "role:master" in r or "master_link_status:up" in r for r in links
            ):
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become healthy")


def _cluster_port() -> int:
    """A port whose cluster-bus port (+10000) is free too."""
    while True:
        port = random.randrange(20000, 40000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


def start_service(seed_url: str, ack: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GVM_", "REDIS_"))}
    env.update(
        REDIS_URL=seed_url,
        REDIS_CLUSTER="1",
        GVM_LOG_LEVEL="warning",
        GVM_REDIS_MIN_REPLICAS_ACK=str(ack),
        GVM_REDIS_ACK_TIMEOUT_S="0.5",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "budget_service.app:create_app", "--factory",
         "--port", str(port), "--no-access-log", "--log-level", "warning"],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"service did not start: {log.read_text()[-2000:]}")


def trainer_loop(url: str, trainer: Trainer, started: float, stop: threading.Event) -> None:
    """Report, allocate, repeat; a report not answered 200 stays in the spool and goes first."""
    prompt_ids = [f"p{i}" for i in range(PROMPTS)]
    step = 0
    with httpx.Client(base_url=url, timeout=10) as http:

        def send(kind: str, path: str, body: dict[str, Any]) -> int:
            t0 = time.monotonic()
            try:
                status = http.post(path, json=body).status_code
            except httpx.HTTPError:
                status = 0
            trainer.answers.append(
                Answer(t0 - started, kind, status, (time.monotonic() - t0) * 1000)
            )
            return status

        while not stop.is_set() or trainer.spool:
            if not trainer.spool:
                step += 1
                trainer.spool.append(f"{trainer.run_id}-r{step}")
            report_id = trainer.spool[0]
            body = {
                "report_id": report_id,
                "step": int(report_id.rsplit("-r", 1)[1]),
                "observations": [
                    {"prompt_id": p, "samples": SAMPLES, "accepted": SAMPLES // 2}
                    for p in prompt_ids
                ],
            }
            status = send("report", f"/v1/runs/{trainer.run_id}/observations", body)
            if status == 200:
                trainer.acked.append(trainer.spool.pop(0))
            else:
                time.sleep(0.05)
                if stop.is_set() and time.monotonic() - started > 600:
                    return  # bounded: give up draining (counted as never acknowledged)
            send("allocate", f"/v1/runs/{trainer.run_id}/allocations",
                 {"prompt_ids": prompt_ids, "budget": SAMPLES * PROMPTS})  # fmt: skip


def run_mode(
    cluster: Cluster, ack: int, kills: int, warmup_s: float, between_s: float, log: Path
) -> dict[str, Any]:
    process, url = start_service(cluster.nodes[0].url, ack, log)
    tag = f"{'on' if ack else 'off'}-{random.randrange(1 << 30):x}"
    trainers = [Trainer(f"fo-{tag}-{i}") for i in range(TRAINERS)]
    for trainer in trainers:
        httpx.put(f"{url}/v1/runs/{trainer.run_id}", json={}, timeout=10).raise_for_status()
    stop = threading.Event()
    started = time.monotonic()
    threads = [
        threading.Thread(target=trainer_loop, args=(url, t, started, stop)) for t in trainers
    ]
    for thread in threads:
        thread.start()
    kill_log: list[dict[str, Any]] = []
    killed: set[int] = set()
    try:
        time.sleep(warmup_s)
        for k in range(kills):
            # the primary of a busy run's slot, one not killed before while there is one
            candidates = [cluster.owner(run_keys(t.run_id)[0]) for t in trainers]
            fresh = [n for n in candidates if n.port not in killed]
            victim = (fresh or candidates)[k % len(fresh or candidates)]
            killed.add(victim.port)
            t_kill = time.monotonic() - started
            victim.kill()  # SIGKILL
            promoted_s = cluster.wait_healthy()
            victim.start()  # same data dir and nodes.conf: rejoins as a replica
            synced_s = cluster.wait_healthy()
            kill_log.append({"t": round(t_kill, 3), "port": victim.port,
                             "promoted_after_s": round(promoted_s, 2),
                             "rejoined_after_s": round(promoted_s + synced_s, 2)})  # fmt: skip
            time.sleep(between_s)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    return summarize(cluster, trainers, kill_log, ack, warmup_s)


def summarize(
    cluster: Cluster,
    trainers: list[Trainer],
    kills: list[dict[str, Any]],
    ack: int,
    warmup_s: float,
) -> dict[str, Any]:
    client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    lost, samples_acked, samples_stored = [], 0, 0
    for trainer in trainers:
        _, _, totals, reports, *_ = run_keys(trainer.run_id)
        stored = set(client.zrange(reports, 0, -1))
        lost += [r for r in trainer.acked if r.encode() not in stored]
        value = cast(bytes | None, client.get(totals))
        samples_stored += 0 if value is None else int(struct.unpack_from("<d", value)[0])
        samples_acked += len(trainer.acked) * PROMPTS * SAMPLES
    client.close()
    answers = [a for t in trainers for a in t.answers]
    other = sorted({a.status for a in answers} - {200, 503})
    windows = []
    for i, kill in enumerate(kills):
        end = kills[i + 1]["t"] if i + 1 < len(kills) else float("inf")
        bad = [a.t + a.ms / 1000 for a in answers if kill["t"] <= a.t < end and a.status != 200]
        windows.append(round(max(bad) - kill["t"], 3) if bad else 0.0)
    normal = [a.ms for a in answers if a.kind == "report" and a.t < warmup_s and a.status == 200]
    return {
        "min_replicas_ack": ack,
        "kills": kills,
        "reports_acknowledged": sum(len(t.acked) for t in trainers),
        "reports_lost": len(lost),
        "lost_report_ids": lost[:20],
        "samples_acknowledged": samples_acked,
        "samples_stored": samples_stored,
        "answers": len(answers),
        "answers_503": sum(a.status == 503 for a in answers),
        "answers_other_than_200_503": sum(a.status not in (200, 503) for a in answers),
        "other_statuses": other,
        "unavailability_window_s": windows,
        "normal_report_p50_ms": round(float(np.percentile(normal, 50)), 2),
        "normal_report_p99_ms": round(float(np.percentile(normal, 99)), 2),
        "normal_reports": len(normal),
        "timeline": timeline([(a.t, a.kind, a.status, a.ms) for a in answers]),
    }


BIN_S = 0.25  # the timeline's resolution


def timeline(answers: list[tuple[float, str, int, float]]) -> list[list[float]]:
    """Reports in BIN_S bins: [start s, answered 200, answered otherwise, p50 ms, max ms] (the
    per-request record would be tens of thousands of rows)."""
    bins: dict[int, list[tuple[int, float]]] = {}
    for t, kind, status, ms in answers:
        if kind == "report":
            bins.setdefault(int(t / BIN_S), []).append((status, ms))
    rows = []
    for index, got in sorted(bins.items()):
        latencies = [ms for _, ms in got]
        ok = sum(status == 200 for status, _ in got)
        rows.append([
            round(index * BIN_S, 2), ok, len(got) - ok,
            round(float(np.percentile(latencies, 50)), 1), round(max(latencies), 1),
        ])  # fmt: skip
    return rows


def plot(modes: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(modes), 1, figsize=(11, 3.4 * len(modes)), squeeze=False)
    for ax, (name, mode) in zip(axes[:, 0], modes.items(), strict=True):
        start, _, failed, p50, top = (
            list(column) for column in zip(*mode["timeline"], strict=True)
        )
        ax.plot(start, p50, lw=1, c="tab:blue", label=f"report p50 per {BIN_S} s")
        ax.plot(start, top, lw=0.8, c="tab:gray", label="report max")
        bad = [(t, m) for t, n, m in zip(start, failed, top, strict=True) if n]
        if bad:
            ax.scatter(
                *zip(*bad, strict=True), s=10, c="tab:red", label="a bin with non-200 answers"
            )
        for kill in mode["kills"]:
            ax.axvline(kill["t"], color="black", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_ylabel("report latency (ms)")
        ax.set_title(f"replica ack {name}: {mode['reports_lost']} acknowledged reports lost, "
                     f"{mode['answers_503']} answers 503, kills dashed")  # fmt: skip
        ax.legend(loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the mode started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CI size: 1 kill per mode")
    parser.add_argument("--out", type=Path, help="results JSON (PNG beside it); default: "
                        "results/failover.json, none with --small")  # fmt: skip
    parser.add_argument("--kills-on", type=int, default=5)
    parser.add_argument("--kills-off", type=int, default=2)
    args = parser.parse_args(argv)
    kills_on, kills_off = (1, 1) if args.small else (args.kills_on, args.kills_off)
    warmup_s, between_s = (2.0, 0.5) if args.small else (8.0, 2.0)
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gvm-failover-")))
        cluster = Cluster(root)
        stack.callback(cluster.stop)
        cluster.start()
        modes = {
            "off": run_mode(cluster, 0, kills_off, warmup_s, between_s, root / "service.log"),
            "on": run_mode(cluster, 1, kills_on, warmup_s, between_s, root / "service.log"),
        }
    result = {
        "benchmark": "Redis Cluster failover under load (issue 20)",
        "trainers": TRAINERS,
        "prompts_per_report": PROMPTS,
        "cluster": "3 primaries + 3 replicas, cluster-node-timeout 1000 ms, AOF everysec",
        "ack_timeout_s": 0.5,
        "machine": machine(),
        "modes": modes,
        "p99_ratio_on_off": round(
            modes["on"]["normal_report_p99_ms"] / modes["off"]["normal_report_p99_ms"], 2
        ),
    }
    for name, mode in modes.items():
        print(f"{name}: kills={len(mode['kills'])} acked={mode['reports_acknowledged']} "
              f"lost={mode['reports_lost']} 503={mode['answers_503']} "
              f"other={mode['answers_other_than_200_503']} "
              f"windows_s={mode['unavailability_window_s']} "
              f"p99_ms={mode['normal_report_p99_ms']}")  # fmt: skip
    print(f"p99 on/off: {result['p99_ratio_on_off']}")
    out = args.out or (None if args.small else RESULTS / "failover.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        plot(modes, out.with_suffix(".png"))
        print(out)
    return result


if __name__ == "__main__":
    main()
