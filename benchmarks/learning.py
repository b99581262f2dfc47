"""Learning per generated sample: uniform vs GVM (online) vs GVM (paper mode), same everything else.

The product's own loop (`trainer_client.trainer.train.train`, the code `gvm-train` runs) trains
the warmed-up tiny model on the synthetic arithmetic task against a real budget service
(`gvm-budget serve` with its embedded Redis, started here as `gvm-demo` does). Per seed, three
runs share the task, the model, the prompt order, the budget per step and the held-out set:

- `uniform`: the service's uniform strategy (budget / batch_size per prompt), online mode;
- `gvm-online`: our allocator (`strategy: gvm`), fed by the statistics of the samples each step
  trained on; no extra sampling;
- `gvm-paper`: the paper's Algorithm 2: a pilot of N' samples per prompt, reported, then the
  published allocation rule (`strategy: gvm-paper`) for the rest of the step's budget. The pilot
  is part of the per-step budget, counted as generated, and trained on (as the paper's trainer).

Evidence: greedy accuracy on a fixed held-out set and on the training prompts, against
cumulative generated samples and against steps; per accuracy, GVM mode and seed, the generated
samples it needed to first reach uniform's final accuracy (same seed), as a ratio of uniform's
total (linear interpolation between evaluations; "not reached" when it never does). That
statistic is biased low by noise alone (a noisy curve reaches another's last value early), so
the summary also gives its null: uniform judged against other seeds' uniform runs, median over
seed pairs, beside the same cross-seed median for each GVM mode. Also: where each strategy spent
its samples, by difficulty level, and how many were accepted.

Settings (README, "Learning per generated sample"): arithmetic levels 1-4 (every level solvable
by the warmed-up model at temperature 1), 16 prompts per step from a pool of 128, 128 samples
per step (pilot included; N' = 4 in paper mode), RAFT++, lr 1e-5, 50 steps, 20 seeds, 3 runs at
a time with one torch thread each.

Run (about 13 minutes on 2 cores, plus a one-off warm-up of about 2 minutes if the tiny model is
not cached in ~/.cache/gvm-budget):

    nice -n 5 python benchmarks/learning.py            # the committed results, and:
    nice -n 5 python benchmarks/learning.py --algo grpo --seeds $(seq 0 9) --name learning_grpo
    nice -n 5 python benchmarks/learning.py --lr 3e-5 --seeds $(seq 0 9) --name learning_lr3e-5
    nice -n 5 python benchmarks/learning.py --max-level 6 --seeds 0 1 2 3 4 --name learning_l6
    nice -n 5 python benchmarks/learning.py --algo grpo --seeds $(seq 0 9) \\
        --report-rejected-norms --strategies uniform gvm-online --name learning_grpo_rejected
    python benchmarks/learning.py --seeds 0 --steps 4 --out /tmp/smoke  # a smoke run

SmolLM2-135M-Instruct instead of the tiny model (device "auto" trains on the GPU when there is
one; 5 minutes for 3 seeds on an H100, 9 runs at a time; about 45 minutes a run on 2 CPU cores;
add --backend vllm for vLLM generation):

    python benchmarks/learning.py --model smollm2 --seeds 0 1 2 --jobs 9 --name learning_smollm2_gpu

Writes benchmarks/results/<name>.json and <name>.png (`--runs-dir` keeps each run's output).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _report import RESULTS, machine

from trainer_client.trainer.demo import free_port, running_service

STRATEGIES: dict[str, dict[str, Any]] = {
    "uniform": {"allocation": "uniform", "mode": "online"},
    "gvm-online": {"allocation": "gvm", "mode": "online"},
    "gvm-paper": {"allocation": "gvm-paper", "mode": "paper"},
}
METRICS = ("held_out", "train_pool")
COLORS = {"uniform": "tab:gray", "gvm-online": "tab:blue", "gvm-paper": "tab:orange"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(20)))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--steps", type=int, default=50, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per step")
    parser.add_argument("--budget", type=int, default=128, help="samples per step (pilot incl.)")
    parser.add_argument("--pilot-samples", type=int, default=4, help="gvm-paper: N' per prompt")
    parser.add_argument("--train-prompts", type=int, default=128, help="training pool")
    parser.add_argument("--max-level", type=int, default=4, help="difficulty levels 1..L")
    parser.add_argument("--eval-prompts", type=int, default=192, help="held-out set size")
    parser.add_argument("--eval-every", type=int, default=5, help="steps between evaluations")
    parser.add_argument(
        "--eval-train-prompts", type=int, default=128, help="training prompts also evaluated"
    )
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    parser.add_argument("--algo", choices=["raft", "grpo"], default="raft")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument(
        "--report-rejected-norms",
        action="store_true",
        help="also report the rejected samples' gradient norms (gvm-online uses them for G)",
    )
    parser.add_argument(
        "--model", default="", help='"" = the warmed-up tiny model; "smollm2", a folder, a hub id'
    )
    parser.add_argument("--max-new-tokens", type=int, default=16, help="response length cap")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--name", default="learning", help="results file stem")
    parser.add_argument("--runs-dir", type=Path, default=None, help="per-run outputs (tmp)")
    parser.add_argument("--jobs", type=int, default=3, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--resummarise",
        type=Path,
        default=None,
        help="recompute the summary and plot of an existing results file, and exit",
    )
    return parser


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def run_configs(args: argparse.Namespace, url: str, runs_dir: Path) -> list[Any]:
    from trainer_client.trainer.config import TrainConfig

    configs = []
    for seed in args.seeds:
        for name in args.strategies:
            configs.append(
                TrainConfig(
                    service_url=url,
                    run_id=f"learning-{name}-s{seed}",
                    **STRATEGIES[name],
                    steps=args.steps,
                    batch_size=args.batch_size,
                    budget=args.budget,
                    pilot_samples=args.pilot_samples,
                    lr=args.lr,
                    algo=args.algo,
                    backend=args.backend,
                    report_rejected_norms=args.report_rejected_norms,
                    model=args.model,
                    max_new_tokens=args.max_new_tokens,
                    train_prompts=args.train_prompts,
                    max_level=args.max_level,
                    eval_prompts=args.eval_prompts,
                    eval_every=args.eval_every,
                    eval_train_prompts=args.eval_train_prompts,
                    seed=seed,
                    out_dir=str(runs_dir / f"{name}-s{seed}"),
                    progress=False,
                    log_every=0,
                )
            )
    return configs


def curve(out_dir: Path, summary: dict[str, Any]) -> dict[str, list[Any]]:
    """Eval points of one run (step 0 = before training): step, cumulative generated samples,
    held-out accuracy and accuracy on the evaluated training prompts."""
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    points: dict[str, list[Any]] = {
        "steps": [0],
        "samples": [0],
        "held_out": [summary["initial_eval_accuracy"]],
        "train_pool": [summary["initial_train_eval_accuracy"]],
    }
    for r in records:
        if r["eval_accuracy"] is not None:
            points["steps"].append(r["step"] + 1)
            points["samples"].append(r["cumulative_generated"])
            points["held_out"].append(r["eval_accuracy"])
            points["train_pool"].append(r["train_eval_accuracy"])
    return points


def samples_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """Generated samples at which accuracy first reaches `target` (linear between evals)."""
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if y >= target:
            if k == 0:
                return float(x)
            x0, y0 = xs[k - 1], ys[k - 1]
            return x0 + (x - x0) * (target - y0) / (y - y0)
    return None


def spending(out_dir: Path, config: Any) -> dict[str, Any]:
    """Share of generated samples, and acceptance, by difficulty level over the whole run."""
    from trainer_client.trainer.prompts import batch_indices, load_problems

    train_set, _ = load_problems(config)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    by_level: dict[int, int] = {}
    for r in records:
        pilot_each = r["pilot"] // r["prompts"]
        for i, n in zip(
            batch_indices(r["step"], config, len(train_set)), r["alloc_counts"], strict=True
        ):
            level = train_set[i].level
            by_level[level] = by_level.get(level, 0) + n + pilot_each
    total = sum(by_level.values())
    return {
        "generated_share_by_level": {
            str(k): round(v / total, 4) for k, v in sorted(by_level.items())
        },
        "train_accept_rate": sum(r["accepted"] for r in records)
        / sum(r["generated"] for r in records),
        "zero_sample_prompts_per_step": statistics.mean(
            sum(n == 0 for n in r["alloc_counts"]) for r in records
        ),
    }


def mean_curve(runs: Sequence[dict[str, Any]], metric: str) -> tuple[list[float], list[float]]:
    """Samples and seed-mean accuracy at each evaluation (the runs share their eval steps)."""
    samples = [
        statistics.mean(xs) for xs in zip(*(r["curve"]["samples"] for r in runs), strict=True)
    ]
    accuracy = [statistics.mean(ys) for ys in zip(*(r["curve"][metric] for r in runs), strict=True)]
    return samples, accuracy


def summarise(
    runs: list[dict[str, Any]], strategies: Sequence[str], seeds: Sequence[int], metric: str
) -> dict[str, Any]:
    """Per strategy: initial and final accuracy; per GVM mode the sample ratio to reach
    uniform's final accuracy of the same seed (None: not reached; undefined when uniform ended
    no better than it started, since "reaching" it then costs nothing)."""
    by = {(r["strategy"], r["seed"]): r for r in runs}
    summary: dict[str, Any] = {}
    for name in strategies:
        first = [by[name, s]["curve"][metric][0] for s in seeds]
        finals = [by[name, s]["curve"][metric][-1] for s in seeds]
        entry: dict[str, Any] = {
            "initial": {"per_seed": first, "mean": statistics.mean(first)},
            "final": {"per_seed": finals, "mean": statistics.mean(finals)},
            "gain": {"per_seed": [b - a for a, b in zip(first, finals, strict=True)]},
        }
        if name != "uniform" and "uniform" in strategies:
            ratios: list[float | None] = []
            undefined = []
            for s in seeds:
                uniform = by["uniform", s]["curve"]
                target = uniform[metric][-1]
                undefined.append(target <= uniform[metric][0])
                mine = by[name, s]["curve"]
                reached = samples_to_reach(mine["samples"], mine[metric], target)
                ratios.append(None if reached is None else reached / uniform["samples"][-1])
            known = sorted(math.inf if r is None else r for r in ratios)
            # The same on the seed-mean curves: less sensitive to one noisy evaluation.
            uniform_mean = mean_curve([by["uniform", s] for s in seeds], metric)
            mine_mean = mean_curve([by[name, s] for s in seeds], metric)
            reached = samples_to_reach(mine_mean[0], mine_mean[1], uniform_mean[1][-1])
            entry["final_vs_uniform"] = paired_finals(
                finals, [by["uniform", s]["curve"][metric][-1] for s in seeds]
            )
            entry["samples_ratio_to_reach_uniform_final"] = {
                "per_seed": ratios,
                "cross_seed_median": cross_seed_median(by, name, seeds, metric),
                "uniform_did_not_improve": undefined,
                # a seed that never got there sorts last; null in JSON (which has no infinity)
                "median": finite_or_none(statistics.median(known)),
                "min": finite_or_none(known[0]),
                "max": finite_or_none(known[-1]),
                "on_mean_curves": None if reached is None else reached / uniform_mean[0][-1],
            }
        if name == "uniform" and len(seeds) > 1:
            # The statistic's null: a uniform run judged against another seed's uniform run.
            entry["null_cross_seed_median"] = cross_seed_median(by, "uniform", seeds, metric)
        summary[name] = entry
    return summary


def paired_finals(mine: Sequence[float], uniform: Sequence[float]) -> dict[str, Any]:
    """Final accuracy against uniform's, seed by seed (same prompts, same held-out set): the
    mean difference, wins / ties / losses, and the exact two-sided sign test over the non-ties
    (the chance of a split at least this lopsided if either strategy were as likely to end
    higher)."""
    differences = [a - b for a, b in zip(mine, uniform, strict=True)]
    wins = sum(d > 0 for d in differences)
    losses = sum(d < 0 for d in differences)
    decided = wins + losses
    tail = sum(math.comb(decided, k) for k in range(min(wins, losses) + 1)) / 2**decided
    return {
        "mean_difference": round(statistics.mean(differences), 6) + 0.0,  # no -0.0
        "wins": wins,
        "ties": len(differences) - decided,
        "losses": losses,
        "sign_test_p": min(1.0, 2 * tail),
    }


def cross_seed_median(
    by: dict[tuple[str, int], dict[str, Any]], name: str, seeds: Sequence[int], metric: str
) -> float | None:
    """Median over ordered pairs of different seeds (a, b) of the sample ratio at which run
    (name, b) reaches the final accuracy of (uniform, a). For name = "uniform" this is the
    statistic under no difference at all: a noisy curve reaches another noisy curve's last value
    early, so it is well below 1 (what a GVM ratio must beat to mean anything)."""
    ratios = []
    for a, b in itertools.permutations(seeds, 2):
        uniform, mine = by["uniform", a]["curve"], by[name, b]["curve"]
        reached = samples_to_reach(mine["samples"], mine[metric], uniform[metric][-1])
        ratios.append(math.inf if reached is None else reached / uniform["samples"][-1])
    return finite_or_none(statistics.median(ratios)) if ratios else None


def plot(runs: list[dict[str, Any]], strategies: Sequence[str], model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey="row")
    panels = [("samples", "cumulative generated samples (pilot included)"), ("steps", "step")]
    metrics = [
        ("held_out", "held-out accuracy (greedy)"),
        ("train_pool", "training-prompt accuracy"),
    ]
    for row, (metric, ylabel) in enumerate(metrics):
        for col, (key, xlabel) in enumerate(panels):
            axis = axes[row][col]
            for name in strategies:
                mine = [r for r in runs if r["strategy"] == name]
                for r in mine:
                    axis.plot(
                        r["curve"][key], r["curve"][metric], color=COLORS[name], alpha=0.3, lw=1
                    )
                mean = np.mean([r["curve"][metric] for r in mine], axis=0)
                axis.plot(
                    mine[0]["curve"][key], mean, color=COLORS[name], lw=2.2, marker="o", ms=3,
                    label=f"{name} (mean of {len(mine)} seeds)",
                )  # fmt: skip
            axis.set_xlabel(xlabel)
            axis.set_ylabel(ylabel)
            axis.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(
        f"{model or 'Tiny model'} on arithmetic: accuracy per generated sample and per step "
        "(thin: seeds)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_one(config: Any, threads: int) -> dict[str, Any]:
    """One training run in a worker process; what the summary needs from it."""
    import torch

    from trainer_client.trainer.train import quiet_transformers, train

    torch.set_num_threads(threads)
    quiet_transformers()
    name = next(k for k, v in STRATEGIES.items() if v["allocation"] == config.allocation)
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    run = {
        "strategy": name,
        "seed": config.seed,
        "device": result["device"],
        "generated": result["cumulative_generated"],
        "accepted": result["accepted"],
        "fallbacks": result["fallbacks"],
        "seconds": round(seconds, 1),
        "curve": curve(config.output_dir, result),
        **spending(config.output_dir, config),
    }
    held, pool = run["curve"]["held_out"], run["curve"]["train_pool"]
    print(
        f"{name:>10} seed {config.seed}: held-out {held[0]:.3f} -> {held[-1]:.3f}, training "
        f"prompts {pool[0]:.3f} -> {pool[-1]:.3f}, {run['generated']} samples, {seconds:.0f} s, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resummarise:
        return resummarise(args.resummarise)
    started = time.perf_counter()
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="gvm-learning-") as tmp:
        runs_dir = args.runs_dir or Path(tmp) / "runs"
        port = free_port("127.0.0.1")
        service = running_service("127.0.0.1", port, Path(tmp) / "redis", Path(tmp) / "service.log")
        with service as (url, _process):
            prepare_model(args.model)
            configs = run_configs(args, url, runs_dir)
            spawn = multiprocessing.get_context("spawn")  # torch and threads: no fork
            with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
                runs = list(pool.map(run_one, configs, [args.threads] * len(configs)))
    summary = {m: summarise(runs, args.strategies, args.seeds, m) for m in METRICS}
    # where files went is this machine's business, not a setting of the measurement
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "runs_dir")}
    payload = {
        "settings": settings,
        "strategies": {k: STRATEGIES[k] for k in args.strategies},
        "summary": summary,
        "runs": runs,
        "seconds_total": round(time.perf_counter() - started, 1),
        "machine": {**machine(), "gpu": gpu_name(), "loadavg_before": load_before},
    }
    path = _write(args.out, args.name, payload)
    plot(runs, args.strategies, args.model, path.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    print(f"wrote {path} and {path.with_suffix('.png')} in {payload['seconds_total']:.0f} s")
    return 0


def gpu_name() -> str | None:
    """The GPU the runs trained on (device "auto" takes it when there is one), else None."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def prepare_model(model: str) -> None:
    """Build, convert or download the model once, before the workers all need it."""
    if model:
        from trainer_client.trainer.checkpoints import resolve_model

        resolve_model(model)
    else:
        from trainer_client.trainer.warmup import warm_up

        warm_up()


def resummarise(path: Path) -> int:
    """The summary and plot of `path` again, from its runs (after a change to summarise)."""
    payload = json.loads(path.read_text())
    strategies, seeds = payload["settings"]["strategies"], payload["settings"]["seeds"]
    payload["summary"] = {m: summarise(payload["runs"], strategies, seeds, m) for m in METRICS}
    _write(path.parent, path.stem, payload)
    model = payload["settings"].get("model", "")  # results from before --model: the tiny model
    plot(payload["runs"], strategies, model, path.with_suffix(".png"))
    print(json.dumps(payload["summary"], indent=2))
    return 0


def _write(folder: Path, name: str, payload: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
