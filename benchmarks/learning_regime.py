"""Learning per generated sample in the regime where allocation matters: every arm, paired seeds.

The product's loop (`trainer_client.trainer.train.train`, what `gvm-train` runs) trains the warm
tiny model on arithmetic against a real budget service (`gvm-budget serve` with embedded Redis),
in the regime of docs/benchmarks.md "Learning benchmark regime", fixed before any run: a pool of
1,024 prompts, 64 per step, 16 steps (one pass), 16 samples per prompt per step with the pilot
counted, pilot N' = 8 trained on, levels 1:2:3:4 = 1:4:2:1, 256 held-out prompts scored by the
exact probability of the right answer (`eval_exact`) after every step.

Fixed here before running (`ARMS`, `COMPARISONS`, `summarise`): the primary endpoint is each
seed's area under the held-out curve against counted samples, paired with uniform's, with a
within-seed sign-flip test, Holm over the comparisons with uniform; the samples ratio (samples
to reach uniform's final held-out score on the seed-mean curves, over uniform's total) with a 90%
bootstrap interval over seeds; the time ratio (training wall time to that point over uniform's
total; generation, gradient-norm pass, update and the rest, evaluation excluded).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/learning_regime.py --seeds $(seq 0 9) --jobs 2
    python benchmarks/learning_regime.py --seeds 0 --arms uniform --steps 2 --out /tmp/x  # smoke
    python benchmarks/learning_regime.py --probe-lr 1e-5 3e-5 --name lr_probe  # pick --lr
    python benchmarks/learning_regime.py --resummarise FILE MORE...  # add seeds, or later arms

Arms added later run with uniform beside them on the same seeds (`--resummarise` checks that
uniform's curves are the same, and times each arm against its own batch's uniform). The
learning rate, when not the default, is chosen by `--probe-lr` on uniform alone, on seeds the
benchmark does not use.

Writes benchmarks/results/<name>.json and <name>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import stats
from _report import RESULTS, machine
from learning import _write, prepare_model

from trainer_client.trainer.demo import free_port, running_service


@dataclass(frozen=True)
class Arm:
    """One way to spend a step's samples: the trainer settings that make it."""

    name: str
    label: str
    allocation: str
    mode: str  # online: no pilot; paper: pilot N' per prompt, reported, then the allocation
    pilot_filter: bool = False  # allocate only over the prompts the pilot solved
    pilot_as_drawn: bool = False  # the pilot is told as drawn: the allocation tops it up
    pilot_free: bool = False  # the paper's accounting: the pilot is drawn but not counted
    rounds: str = ""  # online mode: the step's first rounds per prompt, each later one a top-up


ARMS = (
    Arm("uniform", "16 per prompt", "uniform", "online"),
    Arm(
        "filter-only",
        "pilot 8, then uniform over the prompts it solved",
        "uniform",
        "paper",
        pilot_filter=True,
    ),
    Arm("gvm-paper", "pilot 8, then the published rule", "gvm-paper", "paper"),
    Arm("gvm", "pilot 8 told as drawn, then a gvm top-up", "gvm", "paper", pilot_as_drawn=True),
    Arm("gvm-online", "no pilot: gvm on earlier steps' statistics", "gvm", "online"),
    Arm(
        "gvm-paper, pilot free",
        "the paper's accounting: pilot 8 not counted, then the rule over 16 per prompt",
        "gvm-paper",
        "paper",
        pilot_free=True,
    ),
    Arm(
        "knapsack",
        "pilot 8 told as drawn, then a knapsack top-up",
        "knapsack",
        "paper",
        pilot_as_drawn=True,
    ),
    Arm(
        "gvm, 3 rounds",
        "2 per prompt, then 4 more by gvm, then the rest by gvm (each round a top-up)",
        "gvm",
        "online",
        rounds="2,4",
    ),
)
BY_NAME = {arm.name: arm for arm in ARMS}
COMPARISONS = [arm.name for arm in ARMS if arm.name != "uniform"]  # each against uniform, Holm
CONTRASTS = (  # parts of the mechanism (secondary: not in the Holm family)
    ("filtering (pilot counted)", "filter-only", "uniform"),
    ("weighting on top of filtering", "gvm-paper", "filter-only"),
    ("posterior gvm vs the published rule", "gvm", "gvm-paper"),
    ("pilot accounting (free vs counted)", "gvm-paper, pilot free", "gvm-paper"),
    ("three rounds vs one top-up", "gvm, 3 rounds", "gvm"),
    ("knapsack vs gvm (both top up the pilot)", "knapsack", "gvm"),
)
PHASES = ("generate", "grad_norms", "update")  # the rest: score, report, allocate
COLORS = dict(
    zip(
        [a.name for a in ARMS],
        ["gray", "green", "orange", "red", "blue", "purple", "brown", "olive"],
        strict=True,
    )
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--arms", nargs="+", default=[a.name for a in ARMS], choices=BY_NAME)
    parser.add_argument("--algo", choices=["raft", "grpo"], default="raft")
    parser.add_argument("--train-prompts", type=int, default=1024, help="the pool")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per step")
    parser.add_argument("--steps", type=int, default=16, help="steps (16 x 64 = one pass)")
    parser.add_argument("--per-prompt", type=int, default=16, help="counted samples per prompt")
    parser.add_argument("--pilot-samples", type=int, default=8, help="N' where an arm has one")
    parser.add_argument("--max-level", type=int, default=4)
    parser.add_argument("--level-mix", default="1:4:2:1", help="shares of levels 1..max-level")
    parser.add_argument("--eval-prompts", type=int, default=256, help="held-out set")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--name", default="learning_regime", help="results file stem")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--probe-lr",
        type=float,
        nargs="+",
        default=None,
        help="instead of the arms: uniform alone at each of these learning rates on the probe "
        "seeds; the one with the best mean final held-out score is chosen (uniform's, before "
        "any other arm runs)",
    )
    parser.add_argument("--probe-seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument(
        "--resummarise",
        type=Path,
        nargs="+",
        default=None,
        help="redo the summary and plot of a results file, with the runs of any others added "
        "(more seeds of the same settings)",
    )
    return parser


def run_config(
    arm: Arm, seed: int, args: argparse.Namespace, url: str, runs: Path, lr: float | None = None
) -> Any:
    """The trainer's settings for one run (at `lr`, else --lr)."""
    from trainer_client.trainer.config import TrainConfig

    per_prompt = args.per_prompt + (args.pilot_samples if arm.pilot_free else 0)
    name = arm.name.replace(", ", "-").replace(" ", "-") + (f"-lr{lr:g}" if lr else "")
    return TrainConfig(
        service_url=url,
        run_id=f"regime-{name}-s{seed}",
        allocation=arm.allocation,  # type: ignore[arg-type]
        mode=arm.mode,  # type: ignore[arg-type]
        pilot_filter=arm.pilot_filter,
        pilot_as_drawn=arm.pilot_as_drawn,
        allocation_rounds=arm.rounds,
        algo=args.algo,
        steps=args.steps,
        batch_size=args.batch_size,
        budget=per_prompt * args.batch_size,
        pilot_samples=args.pilot_samples,
        lr=lr or args.lr,
        train_prompts=args.train_prompts,
        max_level=args.max_level,
        level_mix=args.level_mix,
        eval_prompts=args.eval_prompts,
        eval_exact=True,
        eval_every=1,
        seed=seed,
        out_dir=str(runs / f"{name}-s{seed}"),
        progress=False,
        log_every=0,
    )


def run_one(arm_name: str, config: Any, threads: int) -> dict[str, Any]:
    """One training run in a worker process: its held-out curve against counted samples and
    training time, and its time per phase."""
    import torch

    from trainer_client.trainer.train import quiet_transformers, train

    torch.set_num_threads(threads)
    quiet_transformers()
    arm = BY_NAME[arm_name]
    started = time.perf_counter()
    summary = train(config)
    seconds = time.perf_counter() - started
    lines = (config.output_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    counted, train_time, held_out = [0], [0.0], [summary["initial_eval_accuracy"]]
    phases = dict.fromkeys((*PHASES, "other"), 0.0)
    for r in records:
        counted.append(counted[-1] + r["generated"] - (r["pilot"] if arm.pilot_free else 0))
        spent = r["time_step"] - r.get("time_eval", 0.0)
        train_time.append(train_time[-1] + spent)
        held_out.append(r["eval_accuracy"])
        for phase in PHASES:
            phases[phase] += r.get(f"time_{phase}", 0.0)
        phases["other"] += spent - sum(r.get(f"time_{p}", 0.0) for p in PHASES)
    print(
        f"{arm_name:>22} seed {config.seed}: held-out {held_out[0]:.4f} -> {held_out[-1]:.4f}, "
        f"{counted[-1]} counted samples, {seconds:.0f} s, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return {
        "arm": arm_name,
        "seed": config.seed,
        "counted": counted,
        "generated": summary["cumulative_generated"],
        "accepted": summary["accepted"],
        "held_out": held_out,
        "train_seconds": train_time,
        "phase_seconds": {k: round(v, 2) for k, v in phases.items()},
        "seconds": round(seconds, 1),
        "prompt_steps": sum(r["prompts"] for r in records),
        "unallocated_prompt_steps": sum(sum(n == 0 for n in r["alloc_counts"]) for r in records),
    }


def pass_rates(config: Any) -> dict[str, Any]:
    """Per level, before training: the warm policy's exact probability of the right answer on
    the training pool and the held-out set (the regime's basis; never a run's outcome)."""
    import torch

    from trainer_client.trainer.evaluation import answer_probability
    from trainer_client.trainer.policy import load_policy, load_tokenizer, model_folder
    from trainer_client.trainer.prompts import load_problems
    from trainer_client.trainer.tasks import encode_prompts

    folder = model_folder(config)
    model, tokenizer = load_policy(folder, config, torch.device("cpu")), load_tokenizer(folder)
    result: dict[str, Any] = {}
    for name, problems in zip(("pool", "held_out"), load_problems(config), strict=True):
        p = np.array(
            answer_probability(model, tokenizer, encode_prompts(tokenizer, problems), problems)
        )
        levels = np.array([q.level for q in problems])
        result[name] = {str(k): spread(p[levels == k]) for k in sorted(set(levels.tolist()))}
        result[name]["all"] = spread(p)
    return result


def spread(p: Any) -> dict[str, float]:
    """How many prompts, their mean p, and the shares where allocation acts and above it."""
    return {
        "prompts": int(p.size),
        "mean": round(float(p.mean()), 4),
        "share_0.01_to_0.3": round(float(np.mean((p > 0.01) & (p < 0.3))), 3),
        "share_above_0.3": round(float(np.mean(p >= 0.3)), 3),
    }


def runs_of(runs: Sequence[dict[str, Any]], arm: str, batch: int | None = None) -> list[Any]:
    """`arm`'s runs from one batch: `batch`, else the first that ran it. Arms added to a file
    later (resummarise) come with a batch of their own, uniform included: their time ratios
    are against the uniform runs timed beside them, under the same load."""
    if batch is None:
        batch = next(r.get("batch", 0) for r in runs if r["arm"] == arm)
    return [r for r in runs if r["arm"] == arm and r.get("batch", 0) == batch]


def curves(
    runs: Sequence[dict[str, Any]],
    arm: str,
    seeds: Sequence[int],
    x: Any,
    batch: int | None = None,
) -> Any:
    """(seeds, points) held-out scores and training seconds of `arm` (from `batch`, see
    runs_of) on the common axis `x` of counted samples (each run interpolated on its own
    counted samples)."""
    by_seed = {r["seed"]: r for r in runs_of(runs, arm, batch)}
    held = np.array([np.interp(x, by_seed[s]["counted"], by_seed[s]["held_out"]) for s in seeds])
    secs = np.array(
        [np.interp(x, by_seed[s]["counted"], by_seed[s]["train_seconds"]) for s in seeds]
    )
    return held, secs


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarise(
    runs: Sequence[dict[str, Any]], arms: Sequence[str], seeds: Sequence[int], x: Any
) -> dict[str, Any]:
    """The fixed endpoint and comparisons (module docstring)."""
    data = {arm: curves(runs, arm, seeds, x) for arm in arms}
    uniform_held = data["uniform"][0]
    uniform_auc = stats.auc(x, uniform_held)
    compared = [a for a in COMPARISONS if a in arms]
    p_values = []
    out: dict[str, Any] = {"arms": {}, "comparisons_with_uniform": len(compared)}
    for arm in arms:
        held, secs = data[arm]
        own = runs_of(runs, arm)
        batch = own[0].get("batch", 0)
        uniform_time = float(curves(runs, "uniform", seeds, x, batch)[1][:, -1].mean())
        entry: dict[str, Any] = {
            "label": BY_NAME[arm].label,
            "seeds": len(seeds),
            "initial": float(held[:, 0].mean()),
            "final": float(held[:, -1].mean()),
            "auc": float(stats.auc(x, held).mean()),
            "train_seconds": float(secs[:, -1].mean()),
            "phase_seconds": {
                k: round(statistics.mean(r["phase_seconds"][k] for r in own), 2)
                for k in (*PHASES, "other")
            },
            "uniform_train_seconds": uniform_time,  # its batch's (the same load)
            "generated_per_run": statistics.mean(r["generated"] for r in own),
            "counted_per_run": statistics.mean(r["counted"][-1] for r in own),
            "accept_rate": sum(r["accepted"] for r in own) / sum(r["generated"] for r in own),
            "unallocated_share": sum(r["unallocated_prompt_steps"] for r in own)
            / sum(r["prompt_steps"] for r in own),  # prompts given no samples after a pilot
        }
        if arm != "uniform":
            # the same samples as uniform's (an allocation that came out even): a tie, not a result
            entry["seeds_identical_to_uniform"] = int((held == uniform_held).all(axis=1).sum())
            d = stats.auc(x, held) - uniform_auc
            interval = stats.bootstrap_ratio(x, held, uniform_held)
            reach = interval.estimate * float(x[-1])
            mean_secs = secs.mean(axis=0)
            time_to_reach = (
                float(np.interp(reach, x, mean_secs)) if math.isfinite(reach) else math.inf
            )
            entry |= {
                "auc_difference": {
                    "mean": float(d.mean()),
                    "wins": int((d > 0).sum()),
                    "losses": int((d < 0).sum()),
                    "per_seed": d.tolist(),
                },
                "sign_flip_p": stats.sign_flip_test(d),
                "samples_ratio": finite(interval.estimate),
                "samples_ratio_90ci": [finite(interval.low), finite(interval.high)],
                "time_ratio": finite(time_to_reach / uniform_time),
            }
            if arm in compared:
                p_values.append((arm, entry["sign_flip_p"]))
        out["arms"][arm] = entry
    for (arm, _), adjusted in zip(p_values, stats.holm([p for _, p in p_values]), strict=True):
        out["arms"][arm]["sign_flip_p_holm"] = adjusted
    gain = float((stats.auc(x, uniform_held) - uniform_held[:, 0]).mean())
    out["contrasts"] = []
    for part, arm, baseline in CONTRASTS:
        if arm in arms and baseline in arms:
            d = stats.auc(x, data[arm][0]) - stats.auc(x, data[baseline][0])
            out["contrasts"].append(
                {
                    "part": part,
                    "arm": arm,
                    "baseline": baseline,
                    "auc_difference": float(d.mean()),
                    "share_of_uniform_gain": float(d.mean()) / gain if gain else None,
                    "sign_flip_p": stats.sign_flip_test(d),
                }
            )
    return out


def docs_table(payload: dict[str, Any]) -> str:
    """The table docs/benchmarks.md "Learning per generated sample (the regime)" leads with."""

    def ratio(v: float | None) -> str:
        return "not reached" if v is None else f"{v:.2f}"

    summary = payload["summary"]
    rows = [
        "| arm | samples to reach uniform's final: ratio (90% CI) | time ratio | final held-out "
        f"| AUC minus uniform (wins-losses) | p (sign flip, Holm over "
        f"{summary['comparisons_with_uniform']}) | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in summary["arms"].items():
        if name == "uniform":
            rows.append(
                f"| uniform | 1 (the reference) | 1 | {e['final']:.4f} | 0 | - | {e['seeds']} |"
            )
            continue
        low, high = e["samples_ratio_90ci"]
        d = e["auc_difference"]
        p = e.get("sign_flip_p_holm", e["sign_flip_p"])
        tied = e["seeds_identical_to_uniform"]
        same = f" ({tied} the same samples as uniform)" if tied else ""
        rows.append(
            f"| {name} | {ratio(e['samples_ratio'])} ({ratio(low)}-{ratio(high)}) "
            f"| {ratio(e['time_ratio'])} | {e['final']:.4f} | {d['mean']:+.4f} "
            f"({d['wins']}-{d['losses']}) | {p:.2g} | {e['seeds']}{same} |"
        )
    return "\n".join(rows)


# the simulator's name for an arm here, where they differ (its `gvm` is not told the pilot)
SIMULATOR_NAMES = {"gvm": "gvm, pilot as drawn"}


def contrast_table(payload: dict[str, Any], simulated: dict[str, Any] | None = None) -> str:
    """Which part of the mechanism does what: each contrast's AUC difference as a share of
    uniform's own AUC gain over its start, with its sign-flip p; beside it, the simulator's
    contrast of the same two arms (`simulated`: benchmarks/results/simulator.json), if given
    ("-": the simulator has no such contrast)."""
    seeds = len(payload["settings"]["seeds"])
    header = f"| part of the mechanism (arm vs baseline) | real runs ({seeds} seeds) |"
    rows = [header, "|---|---|"]
    if simulated:
        rows = [header + " simulator (trainer estimator, m = 0.15) |", "|---|---|---|"]
    twins = simulated["summary"]["contrasts"] if simulated else []
    model = {(c["arm"], c["baseline"]): c for c in twins}

    def cell(c: dict[str, Any]) -> str:
        return f" {c['share_of_uniform_gain']:+.2f} (p {c['sign_flip_p']:.2g}) |"

    for c in payload["summary"]["contrasts"]:
        row = f"| {c['part']} (`{c['arm']}` vs `{c['baseline']}`) |" + cell(c)
        if simulated:
            pair = tuple(SIMULATOR_NAMES.get(a, a) for a in (c["arm"], c["baseline"]))
            row += cell(model[pair]) if pair in model else " - |"
        rows.append(row)
    return "\n".join(rows)


def time_table(payload: dict[str, Any]) -> str:
    """Where each arm's training time goes, per run over the whole pass (seed mean), as a share
    of the time uniform took in the same batch: generation, the gradient-norm pass, the update,
    and the rest (scoring, reports, allocations); evaluation excluded."""
    rows = [
        "| arm | generation | gradient norms | update | the rest | all | uniform's time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in payload["summary"]["arms"].items():
        reference = e["uniform_train_seconds"]
        shares = [e["phase_seconds"][k] / reference for k in (*PHASES, "other")]
        cells = " | ".join(f"{v:.2f}" for v in (*shares, sum(shares)))
        rows.append(f"| {name} | {cells} | {reference:.0f} s |")
    return "\n".join(rows)


def probe_table(payload: dict[str, Any]) -> str:
    """The learning-rate probe (probe_lr): uniform's held-out score per candidate."""
    seeds = ", ".join(str(s) for s in payload["settings"]["probe_seeds"])
    rows = [
        f"| lr | uniform's held-out score: start -> end of the pass (seeds {seeds}) | per seed |",
        "|---|---|---|",
    ]
    for row in payload["probe"]:
        chosen = " (chosen)" if row["lr"] == payload["chosen_lr"] else ""
        per_seed = ", ".join(f"{v:.4f}" for v in row["per_seed_final"])
        rows.append(
            f"| {row['lr']:g}{chosen} | {row['initial']:.4f} -> {row['final']:.4f} | {per_seed} |"
        )
    return "\n".join(rows)


def pass_rate_table(payload: dict[str, Any]) -> str:
    """Per level, the warm policy's exact answer probability before training (pool; held out)."""
    rates = payload["pass_rates_before_training"]
    rows = [
        "| level | prompts (pool; held out) | mean p | at 0.01 < p < 0.3 | at p >= 0.3 |",
        "|---|---|---|---|---|",
    ]
    for level, pool in rates["pool"].items():
        held = rates["held_out"][level]
        rows.append(
            f"| {level} | {pool['prompts']}; {held['prompts']} | {pool['mean']:.3f}; "
            f"{held['mean']:.3f} | {pool['share_0.01_to_0.3']:.0%}; "
            f"{held['share_0.01_to_0.3']:.0%} | {pool['share_above_0.3']:.0%}; "
            f"{held['share_above_0.3']:.0%} |"
        )
    return "\n".join(rows)


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array(payload["x"])
    settings = payload["settings"]
    seeds, arms = settings["seeds"], settings["arms"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    uniform = curves(payload["runs"], "uniform", seeds, x)[0]
    for arm in arms:
        held = curves(payload["runs"], arm, seeds, x)[0]
        for axis, y in ((axes[0], held), (axes[1], held - uniform)):
            mean = y.mean(axis=0)
            half = 1.645 * y.std(axis=0, ddof=1) / math.sqrt(len(seeds)) if len(seeds) > 1 else 0
            axis.plot(x, mean, color=f"tab:{COLORS[arm]}", lw=2, label=arm)
            axis.fill_between(x, mean - half, mean + half, color=f"tab:{COLORS[arm]}", alpha=0.15)
    axes[0].set_ylabel("held-out: mean probability of the right answer")
    axes[1].set_ylabel("minus uniform, same seed")
    for axis in axes:
        axis.set_xlabel("cumulative samples counted (pilot included, except 'pilot free')")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Tiny model, {settings['algo'].upper()}, lr {settings['lr']:g}, arithmetic, one pass "
        f"over {settings['train_prompts']} prompts: seed means, bands 90% over {len(seeds)} seeds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resummarise:
        return resummarise(*args.resummarise)
    if args.probe_lr:
        return probe_lr(args)
    if "uniform" not in args.arms:
        raise SystemExit("every comparison is with uniform: keep it in --arms")
    started = time.perf_counter()
    load_before = list(os.getloadavg())
    runs, rates = run_all(args, [(arm, seed) for seed in args.seeds for arm in args.arms])
    x = np.arange(args.steps + 1, dtype=np.float64) * args.per_prompt * args.batch_size
    payload: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "arms": {a: asdict(BY_NAME[a]) for a in args.arms},
        "pass_rates_before_training": rates,
        "x": x.tolist(),
        "summary": summarise(runs, args.arms, args.seeds, x),
        "runs": runs,
        "seconds_total": round(time.perf_counter() - started, 1),
        "machine": {**machine(), "loadavg_before": load_before},
    }
    path = _write(args.out, args.name, payload)
    plot(payload, path.with_suffix(".png"))
    print(pass_rate_table(payload))
    print(docs_table(payload))
    print(time_table(payload))
    print(f"wrote {path} and {path.with_suffix('.png')} in {payload['seconds_total']:.0f} s")
    return 0


def run_all(
    args: argparse.Namespace, jobs: Sequence[tuple[str, int]], lrs: Sequence[float] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every (arm, seed) job (at lrs[j], else --lr) against one service, --jobs at a time; and
    the pass rates before training."""
    with tempfile.TemporaryDirectory(prefix="gvm-regime-") as tmp:
        port = free_port("127.0.0.1")
        service = running_service("127.0.0.1", port, Path(tmp) / "redis", Path(tmp) / "service.log")
        with service as (url, _process):
            prepare_model("")
            configs = [
                run_config(BY_NAME[arm], seed, args, url, Path(tmp) / "runs", lrs and lrs[j])
                for j, (arm, seed) in enumerate(jobs)
            ]
            rates = pass_rates(configs[0])
            print(f"exact pass rates before training, by level: {rates}", flush=True)
            spawn = multiprocessing.get_context("spawn")  # torch and threads: no fork
            with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
                runs = list(
                    pool.map(run_one, [a for a, _ in jobs], configs, [args.threads] * len(jobs))
                )
    return runs, rates


def probe_lr(args: argparse.Namespace) -> int:
    """The learning rate, chosen before any other arm runs: uniform alone at each candidate on
    the probe seeds (not the benchmark's); the best mean final held-out score wins. Tuning
    the reference only can favour it, never the allocation."""
    started = time.perf_counter()
    grid = [(lr, seed) for lr in args.probe_lr for seed in args.probe_seeds]
    runs, _ = run_all(args, [("uniform", seed) for _, seed in grid], [lr for lr, _ in grid])
    table = []
    for lr in args.probe_lr:
        of_lr = [r for (r_lr, _), r in zip(grid, runs, strict=True) if r_lr == lr]
        table.append(
            {
                "lr": lr,
                "initial": statistics.mean(r["held_out"][0] for r in of_lr),
                "final": statistics.mean(r["held_out"][-1] for r in of_lr),
                "per_seed_final": [r["held_out"][-1] for r in of_lr],
            }
        )
    chosen = max(table, key=lambda row: row["final"])["lr"]
    payload = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "probe": table,
        "chosen_lr": chosen,
        "runs": runs,
        "seconds_total": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }
    path = _write(args.out, args.name, payload)
    print(probe_table(payload))
    print(f"chosen lr {chosen:g}; wrote {path}")
    return 0


def resummarise(path: Path, *more: Path) -> int:
    """The summary, tables and plot of `path` again, with the runs of `more` added: other seeds
    of the same arms, or other arms on the same seeds (settings otherwise equal); written to
    `path`."""
    payload = json.loads(path.read_text())
    settings = payload["settings"]
    for other in map(json.loads, (m.read_text() for m in more)):
        theirs = other["settings"]
        different = {k for k, v in theirs.items() if settings.get(k) != v}
        if different - {"seeds", "arms", "name", "jobs", "resummarise"}:
            raise SystemExit(f"settings differ: {sorted(different)}")
        same_seeds = sorted(theirs["seeds"]) == sorted(settings["seeds"])
        if theirs["arms"] == settings["arms"] and not set(theirs["seeds"]) & set(settings["seeds"]):
            if any(r.get("batch") for r in payload["runs"]):
                raise SystemExit("add the seeds first, then the arms (one batch of each)")
            settings["seeds"] += theirs["seeds"]
        elif same_seeds and "uniform" in theirs["arms"]:  # new arms, paired on the same seeds
            if held_out(other["runs"], "uniform") != held_out(payload["runs"], "uniform"):
                raise SystemExit("uniform's runs differ between the files: not the same pairs")
            new = [a for a in theirs["arms"] if a not in settings["arms"]]
            settings["arms"] += new
            payload["arms"] |= {a: other["arms"][a] for a in new}
            batch = 1 + max(r.get("batch", 0) for r in payload["runs"])
            other["runs"] = [
                r | {"batch": batch} for r in other["runs"] if r["arm"] in [*new, "uniform"]
            ]
        else:
            raise SystemExit("merge other seeds of the same arms, or other arms on the same seeds")
        payload["runs"] += other["runs"]
        payload["seconds_total"] += other["seconds_total"]
    x = np.array(payload["x"])
    payload["summary"] = summarise(payload["runs"], settings["arms"], settings["seeds"], x)
    _write(path.parent, path.stem, payload)
    plot(payload, path.with_suffix(".png"))
    print(pass_rate_table(payload))
    print(docs_table(payload))
    print(time_table(payload))
    return 0


def held_out(runs: Sequence[dict[str, Any]], arm: str) -> dict[int, list[float]]:
    """Each seed's held-out curve for `arm`."""
    return {r["seed"]: r["held_out"] for r in runs if r["arm"] == arm}


if __name__ == "__main__":
    raise SystemExit(main())
