"""The training loop: RAFT++ or GRPO, with per-prompt sample counts from the GVM Budget service.

    gvm-train --service-url http://127.0.0.1:8000 --allocation gvm --algo raft --steps 20
    gvm-train --config run.toml --resume

Reads top to bottom: set-up, then one loop whose phases are

    prompts -> (paper: pilot samples, report) -> allocation -> generate -> score
            -> gradient norms of accepted samples -> report -> update -> log/eval/checkpoint

(with ``allocation_rounds``, allocation .. report repeat once per round: each round after the
first asks for a top-up, telling the service what the step drew so far).

Modes. ``online``: the statistics of the samples a step trains on are reported after it and feed
the next step's allocation (no extra sampling). ``paper`` (the paper's Algorithm 2): each step
first draws ``pilot_samples`` per prompt and reports them, then asks for the allocation of the
rest of the budget. Pilot samples count as generated samples in every metric and, as in the
paper's trainer, they are trained on too: a prompt's group is its pilot and main samples.

Outputs in ``out_dir``: ``metrics.jsonl`` (one line per step), ``summary.json``, ``checkpoint/``
(a Hugging Face model folder plus ``trainer_state.pt``: optimizer, step, counters, RNG, config),
``reports.spool.jsonl`` (reports waiting for an unreachable service; replayed on resume), and
with ``--report-to tensorboard`` event files in ``tensorboard/`` (``logging_sinks``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from trainer_client import BudgetClient, NotFoundError, RunConfig, UnavailableError
from trainer_client.trainer.config import TrainConfig, format_overrides, parse_args
from trainer_client.trainer.evaluation import answer_probability, evaluate
from trainer_client.trainer.generation import Generator, SamplingConfig
from trainer_client.trainer.logging_sinks import open_sink
from trainer_client.trainer.policy import (
    autocast,
    load_policy,
    load_tokenizer,
    make_generator,
    model_folder,
    resolve_device,
)
from trainer_client.trainer.prompts import batch_indices, load_problems
from trainer_client.trainer.rewards import score
from trainer_client.trainer.samples import Samples, drawn_so_far, observations, to_batch
from trainer_client.trainer.tasks import Problem, encode_prompts
from trainer_client.trainer.trainer_state import (
    CHECKPOINT,
    keep_metrics_before,
    load_state,
    restore_rng,
    save_checkpoint,
)
from trainer_client.trainer.update import update

METRICS_FILE = "metrics.jsonl"
SPOOL_FILE = "reports.spool.jsonl"


# -- set-up helpers (everything the loop needs, built once) -------------------------------------


def sampling(config: TrainConfig, step: int, phase: int) -> SamplingConfig:
    """Seeded per (step, phase): a resumed run draws what the first run would have. Phases:
    0 the pilot, 1 the last allocation round, 2-3 earlier rounds (at most two: under 4, so no
    two steps share a seed)."""
    return SamplingConfig(
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=(config.seed * 1_000_003 + step * 4 + phase) % 2**31,
    )


def run_config(config: TrainConfig) -> RunConfig:
    """The service-side run: only the fields the trainer sets; the service fills the rest."""
    fields: dict[str, Any] = {"strategy": config.allocation, "algo": config.algo}
    optional = {
        "min_samples": config.effective_min_samples,
        "max_samples": config.max_samples,
        "half_life_steps": config.half_life_steps,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    return RunConfig(**fields)


@contextmanager
def timed(times: dict[str, float], phase: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        times[phase] = times.get(phase, 0.0) + time.perf_counter() - started


# -- the phases of a step ------------------------------------------------------------------------


def sample_and_score(
    generator: Generator,
    prompt_ids: Sequence[Sequence[int]],
    problems: Sequence[Problem],
    counts: Sequence[int],
    sampling_config: SamplingConfig,
    times: dict[str, float],
) -> Samples:
    with timed(times, "generate"):
        groups = generator.generate(prompt_ids, counts, sampling_config)
    samples = Samples.empty()
    with timed(times, "score"):
        for i, (problem, group) in enumerate(zip(problems, groups, strict=True)):
            for completion in group:
                samples.prompt.append(i)
                samples.completions.append(completion)
                samples.rewards.append(score(problem, completion.text))
    return samples


def allocation_spread(counts: Sequence[int]) -> dict[str, float]:
    mean = sum(counts) / len(counts)
    std = (sum((n - mean) ** 2 for n in counts) / len(counts)) ** 0.5
    return {"alloc_min": min(counts), "alloc_max": max(counts), "alloc_std": round(std, 4)}


# -- the loop -----------------------------------------------------------------------------------


def train(config: TrainConfig) -> dict[str, Any]:
    """Train for ``config.steps`` steps against the service; returns (and writes) the summary."""
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    state = load_state(out) if config.resume else None
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    # model and tokenizer: the checkpoint's when resuming, else --model or the warm tiny model
    folder = out / CHECKPOINT if state else model_folder(config)
    print(f"model: {folder} on {device}")
    model = load_policy(folder, config, device)
    tokenizer = load_tokenizer(folder)
    reference: Any = None
    if config.kl_coef > 0:  # the KL anchor: the policy the training started from
        reference = copy.deepcopy(model)
        if state:
            start = model_folder(config)
            reference = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
        reference.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )

    # prompts: the training pool and the held-out set, tokenized once
    train_set, held_out = load_problems(config)
    train_ids = encode_prompts(tokenizer, train_set)
    eval_ids = encode_prompts(tokenizer, held_out)
    seen = slice(config.eval_train_prompts)  # training prompts also evaluated (often none)
    train_eval, train_eval_ids = train_set[seen], train_ids[seen]

    def judge(ids: Sequence[Sequence[int]], problems: Sequence[Problem]) -> float:
        """Greedy accuracy, or with `eval_exact` the mean probability of the right answer."""
        if config.eval_exact:
            probabilities = answer_probability(model, tokenizer, ids, problems)
            return sum(probabilities) / len(probabilities)
        return evaluate(generator, ids, problems, config)

    # counters that survive a resume
    first_step, generated_total, accepted_total = 0, 0, 0
    session = uuid.uuid4().hex[:12]  # report ids: <session>-<step>-<phase>, stable on resume
    if state:
        optimizer.load_state_dict(state["optimizer"])
        first_step = state["step"]
        generated_total, accepted_total = state["generated_total"], state["accepted_total"]
        session = state["session"]
        restore_rng(state)
    metrics_path = out / METRICS_FILE
    keep_metrics_before(metrics_path, first_step)
    sink = open_sink(config, first_step)  # TensorBoard or W&B, when report_to names one

    run_id = config.run_name
    token = config.api_token or os.environ.get("GVM_API_TOKEN") or None
    client = BudgetClient(config.service_url, token=token, spool_path=out / SPOOL_FILE)
    generator = make_generator(config, model, tokenizer, folder)
    try:
        # the service-side run: a fresh one starts with no statistics unless asked to keep them
        try:
            if not (state or config.keep_stats):
                with suppress(NotFoundError):
                    client.delete_run(run_id)
            client.put_run(run_id, run_config(config))
        except UnavailableError as exc:
            raise SystemExit(
                f"cannot reach the budget service at {config.service_url} ({exc}); start it "
                "with `gvm-budget serve` or point --service-url at it"
            ) from exc

        initial_accuracy = accuracy = initial_train_accuracy = train_accuracy = None
        if not state:
            with autocast(config.precision, device):
                initial_accuracy = judge(eval_ids, held_out)
                if train_eval:
                    initial_train_accuracy = judge(train_eval_ids, train_eval)
            print(f"held-out accuracy before training: {initial_accuracy:.3f}")

        bar = tqdm(
            range(first_step, config.steps),
            initial=first_step,
            total=config.steps,
            disable=not config.progress,
            desc=run_id,
            dynamic_ncols=True,
        )
        with metrics_path.open("a") as metrics, autocast(config.precision, device):
            for step in bar:
                times: dict[str, float] = {}
                started = time.perf_counter()

                # 1. a batch of prompts
                batch_ix = batch_indices(step, config, len(train_set))
                problems = [train_set[i] for i in batch_ix]
                prompt_ids = [train_ids[i] for i in batch_ix]
                prompt_keys = [p.prompt_id for p in problems]
                samples = Samples.empty()
                pilot = 0

                # 2. paper mode: a pilot of N' samples per prompt, reported before the allocation
                if config.mode == "paper":
                    counts = [config.pilot_samples] * len(problems)
                    pilot_samples = sample_and_score(
                        generator, prompt_ids, problems, counts, sampling(config, step, 0), times
                    )
                    with timed(times, "grad_norms"):
                        batch = to_batch(pilot_samples, prompt_ids, tokenizer.pad_token_id, device)
                        found = observations(pilot_samples, problems, batch, model, config)
                    with timed(times, "report"):
                        client.report(run_id, step, found, report_id=f"{session}-{step}-pilot")
                    samples.extend(pilot_samples)
                    pilot = sum(counts)

                # 3-7, once per allocation round (allocation_rounds: the last takes the rest of
                # the budget): how many samples each prompt gets (pilot_filter: only the pilot's
                # solved; after the first round, or with pilot_as_drawn, a top-up told what the
                # step drew so far), generate and score them, gradient norms, report
                chosen = list(range(len(problems)))
                if config.pilot_filter:
                    pilot_rows = zip(samples.prompt, samples.rewards, strict=True)
                    solved = sorted({i for i, reward in pilot_rows if reward > 0.5})
                    chosen = solved or chosen  # none solved: the whole batch, unfiltered
                keys = [prompt_keys[i] for i in chosen]
                counts = [0] * len(problems)
                rounds: list[int] = []  # samples allocated per round
                fallback = False
                for r, round_budget in enumerate(config.round_budgets):
                    final = r == len(config.round_budgets) - 1
                    if final:  # whatever the earlier rounds (and the pilot) left
                        round_budget = config.budget - len(samples.rewards)
                    top_up = drawn_so_far(samples, chosen) if r or config.pilot_as_drawn else {}
                    with timed(times, "allocate"):
                        allocation = client.allocate(run_id, keys, round_budget, step, **top_up)
                    round_counts = [0] * len(problems)
                    for i, n in zip(chosen, allocation.counts, strict=True):
                        round_counts[i] = n
                        counts[i] += n
                    rounds.append(allocation.total)
                    fallback |= allocation.fallback
                    seeds = sampling(config, step, 1 if final else 2 + r)  # phase 0: the pilot
                    fresh = sample_and_score(
                        generator, prompt_ids, problems, round_counts, seeds, times
                    )
                    with timed(times, "grad_norms"):
                        batch = to_batch(fresh, prompt_ids, tokenizer.pad_token_id, device)
                        found = observations(fresh, problems, batch, model, config)
                    if found:
                        name = "main" if final else f"round{r + 1}"  # stable ids: idempotent
                        with timed(times, "report"):
                            client.report(run_id, step, found, report_id=f"{session}-{step}-{name}")
                    samples.extend(fresh)

                # 8. update the policy on the step's samples (pilot included), then the sampler
                with timed(times, "update"):
                    batch = to_batch(samples, prompt_ids, tokenizer.pad_token_id, device)
                    order = random.Random(f"{config.seed}/update/{step}")  # minibatch order
                    logged = update(model, reference, optimizer, samples, batch, config, order)
                    generator.load_weights(model)

                # 9. log, evaluate, checkpoint
                generated = len(samples.rewards)
                accepted = sum(r > 0.5 for r in samples.rewards)
                generated_total += generated
                accepted_total += accepted
                last = step == config.steps - 1
                accuracy = train_accuracy = None
                if (step + 1) % config.eval_every == 0 or last:
                    with timed(times, "eval"):
                        accuracy = judge(eval_ids, held_out)
                        if train_eval:
                            train_accuracy = judge(train_eval_ids, train_eval)
                times["step"] = time.perf_counter() - started
                record = {
                    "step": step,
                    "prompts": len(problems),
                    "generated": generated,
                    "pilot": pilot,
                    "cumulative_generated": generated_total,
                    "accepted": accepted,
                    "accept_rate": accepted / max(generated, 1),
                    "mean_reward": sum(samples.rewards) / max(generated, 1),
                    "eval_accuracy": accuracy,
                    "train_eval_accuracy": train_accuracy,
                    "budget": config.budget,
                    "allocated": sum(rounds),
                    "rounds": rounds,
                    "alloc_counts": counts,
                    **allocation_spread(counts),
                    "predicted_variance": allocation.predicted_variance,
                    "uniform_variance": allocation.uniform_variance,
                    "fallback": fallback,
                    "spooled": len(client.spool),
                    **logged,
                    **{f"time_{k}": round(v, 4) for k, v in times.items()},
                }
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                sink.log(record)
                bar.set_postfix(
                    accept=f"{record['accept_rate']:.2f}", n=f"{min(counts)}..{max(counts)}"
                )
                if config.log_every and (step % config.log_every == 0 or accuracy is not None):
                    tqdm.write(format_step(record), file=sys.stdout)
                if last or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0):
                    save_checkpoint(
                        out,
                        model,
                        tokenizer,
                        {
                            "step": step + 1,
                            "optimizer": optimizer.state_dict(),
                            "generated_total": generated_total,
                            "accepted_total": accepted_total,
                            "session": session,
                            "config": dataclasses.asdict(config),
                        },
                    )
        bar.close()

        pending = client.flush()  # anything spooled during an outage, now that we are done
        summary = {
            "run_id": run_id,
            "service_url": config.service_url,
            "device": str(device),
            "steps": config.steps,
            "cumulative_generated": generated_total,
            "accepted": accepted_total,
            "initial_eval_accuracy": initial_accuracy,
            "final_eval_accuracy": accuracy,
            "initial_train_eval_accuracy": initial_train_accuracy,
            "final_train_eval_accuracy": train_accuracy,
            "fallbacks": client.stats.fallbacks,
            "spooled_pending": pending,
            "out_dir": str(out),
            "metrics": str(metrics_path),
            "checkpoint": str(out / CHECKPOINT),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    finally:
        generator.close()
        client.close()
        sink.close()


def quiet_transformers() -> None:
    """No per-load and per-save progress bars from transformers between our step lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def format_step(record: dict[str, Any]) -> str:
    """One log line per step: samples, acceptance, the allocation's spread and predicted gain."""
    line = (
        f"step {record['step']:>4} | samples {record['generated']:>4} "
        f"(total {record['cumulative_generated']}) | accepted {record['accept_rate']:.2f} | "
        f"n_i {record['alloc_min']}..{record['alloc_max']} std {record['alloc_std']:.2f}"
    )
    if len(record["alloc_counts"]) <= 16:
        line += f" {record['alloc_counts']}"
    if record["predicted_variance"] is not None and record["uniform_variance"]:
        ratio = record["predicted_variance"] / record["uniform_variance"]
        line += f" | variance x{ratio:.2f} of uniform"
    if record["fallback"]:
        line += " | FALLBACK uniform (service unreachable)"
    if record["eval_accuracy"] is not None:
        line += f" | eval {record['eval_accuracy']:.3f}"
    return line + f" | {record['time_step']:.1f}s"


def main(argv: Sequence[str] | None = None) -> int:
    """``gvm-train``: parse flags (and ``--config``), print the overrides, train."""
    quiet_transformers()
    config, overrides = parse_args(argv)
    if config.resume:  # the checkpoint's config, then the file and flags of this invocation
        saved = load_state(config.output_dir)["config"]
        config, overrides = parse_args(argv, base=saved)
    print(f"gvm-train {config.run_name}, settings that differ from the defaults:")
    print(format_overrides(config, overrides))
    summary = train(config)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
