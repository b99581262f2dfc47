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
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from trainer_client import BudgetClient, NotFoundError, Observation, RunConfig, UnavailableError
from trainer_client.trainer.checkpoints import resolve_model
from trainer_client.trainer.config import TrainConfig, format_overrides, parse_args
from trainer_client.trainer.generation import Completion, Generator, HFGenerator, SamplingConfig
from trainer_client.trainer.grad_norms import grad_norms
from trainer_client.trainer.logging_sinks import open_sink
from trainer_client.trainer.losses import (
    Batch,
    LossOutput,
    collate,
    grpo_loss,
    raft_loss,
    sequence_logprobs,
)
from trainer_client.trainer.rewards import score
from trainer_client.trainer.tasks import Problem, arithmetic_problems, encode_prompts, load_math
from trainer_client.trainer.warmup import warm_up

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
SPOOL_FILE = "reports.spool.jsonl"
EVAL_SEED = 1  # the held-out set is drawn with its own seed and excludes the training prompts


@dataclasses.dataclass
class Samples:
    """Responses of one phase of one step, flat: row r belongs to prompt ``prompt[r]``."""

    prompt: list[int]  # index into the step's prompt batch
    completions: list[Completion]
    rewards: list[float]

    @classmethod
    def empty(cls) -> Samples:
        return cls([], [], [])

    def extend(self, other: Samples) -> None:
        self.prompt += other.prompt
        self.completions += other.completions
        self.rewards += other.rewards


# -- set-up helpers (everything the loop needs, built once) -------------------------------------


def load_problems(config: TrainConfig) -> tuple[list[Problem], list[Problem]]:
    """The training pool and the fixed held-out set (the same for every seed of a config)."""
    if config.task == "arithmetic":
        levels = config.level_cycle
        train = arithmetic_problems(config.train_prompts, seed=config.data_seed, levels=levels)
        held_out = arithmetic_problems(
            config.eval_prompts, seed=EVAL_SEED, levels=levels, exclude=[p.prompt_id for p in train]
        )
        return train, held_out
    problems = load_math(config.data)
    random.Random(config.data_seed).shuffle(problems)
    if len(problems) < config.eval_prompts + config.batch_size:
        raise ValueError(f"{config.data} has {len(problems)} problems: too few for this config")
    held_out = problems[: config.eval_prompts]
    return problems[config.eval_prompts :][: config.train_prompts], held_out


def batch_indices(step: int, config: TrainConfig, pool: int) -> list[int]:
    """The prompts of ``step``: epochs of seeded permutations, whole batches only (so the ids
    of a batch are distinct), derived from the step alone so a resumed run picks the same."""
    per_epoch = pool // config.batch_size
    epoch, index = divmod(step, per_epoch)
    order = _permutation(pool, config.seed, epoch)
    return list(order[index * config.batch_size : (index + 1) * config.batch_size])


@lru_cache(maxsize=4)
def _permutation(pool: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(pool))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return tuple(order)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_folder(config: TrainConfig) -> Path:
    """The model to start from: ``--model``, or the tiny model after its supervised warm-up."""
    cache = config.cache_dir or None
    if config.model:
        return resolve_model(config.model, cache_dir=cache)
    print("model: the tiny model after its supervised warm-up (built on first use, then cached)")
    return warm_up(cache, progress=True)


def make_generator(
    config: TrainConfig, model: PreTrainedModel, tokenizer: Any, folder: Path
) -> Generator:
    if config.backend == "vllm":
        from trainer_client.trainer.vllm_backend import VLLMGenerator  # vllm only when chosen

        generator: Generator = VLLMGenerator(
            folder,
            dtype=config.vllm_dtype,
            gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size,
            max_model_len=config.max_model_len,
            seed=config.seed,
        )
        generator.load_weights(model)  # a resumed policy may differ from the folder's weights
        return generator
    return HFGenerator(model, tokenizer)


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


def drawn_so_far(samples: Samples, chosen: Sequence[int]) -> dict[str, list[int]]:
    """A top-up's `drawn` and `drawn_accepted`: what each chosen prompt drew (and had
    accepted) so far this step, all of it reported already."""
    drawn = Counter(samples.prompt)
    accepted = Counter(i for i, r in zip(samples.prompt, samples.rewards, strict=True) if r > 0.5)
    return {"drawn": [drawn[i] for i in chosen], "drawn_accepted": [accepted[i] for i in chosen]}


def to_batch(
    samples: Samples, prompt_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> Batch:
    prompts = [prompt_ids[i] for i in samples.prompt]
    responses = [c.token_ids for c in samples.completions]
    return collate(prompts, responses, pad_id, device=device)


def observations(
    samples: Samples, problems: Sequence[Problem], batch: Batch, model: Any, config: TrainConfig
) -> list[Observation]:
    """Per prompt: samples drawn, accepted, the accepted samples' gradient norms and, with
    `report_rejected_norms`, the rejected samples' too (one batched pass either way)."""
    accepted = [reward > 0.5 for reward in samples.rewards]
    rows = [r for r, ok in enumerate(accepted) if ok or config.report_rejected_norms]
    norms = (
        grad_norms(
            model,
            batch.select(rows),
            target=config.grad_norm_target,
            micro_batch_size=config.micro_batch_size,
        ).tolist()
        if rows
        else []
    )
    per_prompt: dict[tuple[int, bool], list[float]] = {}
    for row, norm in zip(rows, norms, strict=True):
        per_prompt.setdefault((samples.prompt[row], accepted[row]), []).append(norm)
    drawn: dict[int, int] = {}
    solved: dict[int, int] = {}
    for i, ok in zip(samples.prompt, accepted, strict=True):
        drawn[i] = drawn.get(i, 0) + 1
        solved[i] = solved.get(i, 0) + ok
    return [
        Observation(
            prompt_id=problems[i].prompt_id,
            samples=n,
            accepted=solved[i],
            grad_norms=per_prompt.get((i, True), []),
            rejected_grad_norms=(
                per_prompt.get((i, False), []) if config.report_rejected_norms else None
            ),
        )
        for i, n in sorted(drawn.items())
    ]


def minibatches(samples: Samples, rows: Sequence[int], size: int) -> list[list[int]]:
    """``rows`` in chunks of about ``size`` that never split a prompt's group (GRPO normalises
    advantages within a group, so a group must be whole in the loss that sees it)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    by_prompt: dict[int, list[int]] = {}
    for row in rows:
        by_prompt.setdefault(samples.prompt[row], []).append(row)
    for group in by_prompt.values():
        if current and len(current) + len(group) > size:
            chunks.append(current)
            current = []
        current += group
    if current:
        chunks.append(current)
    return chunks


@dataclasses.dataclass
class MicroBatch:
    """One forward/backward of an update: sequences, and what the loss compares them with."""

    batch: Batch
    old: torch.Tensor  # [B, T] log-probs under the policy that drew the samples
    ref: torch.Tensor | None  # [B, T] log-probs under the KL anchor
    rewards: torch.Tensor  # [B]
    groups: torch.Tensor  # [B] prompt index: GRPO's groups


def update(
    model: Any,
    reference: Any,
    optimizer: torch.optim.Optimizer,
    samples: Samples,
    batch: Batch,
    config: TrainConfig,
    rng: random.Random,
) -> dict[str, float]:
    """One RAFT++ or GRPO update on a step's samples; what to log about it.

    Minibatches of about ``minibatch_size`` samples take one optimizer step each, accumulated
    over micro-batches of about ``micro_batch_size`` sequences (memory). Neither ever splits a
    prompt's group, so GRPO normalises each group whole; each micro-batch's token-mean loss is
    weighted by its share of the minibatch's tokens, so the sum is the minibatch's token mean.
    """
    rows = list(range(len(samples.rewards)))
    if config.algo == "raft":  # rejected samples contribute nothing: leave them out
        rows = [r for r in rows if samples.rewards[r] > 0.5]
    if not rows:
        return {"loss": 0.0, "clip_fraction": 0.0, "trained_samples": 0}
    plan: list[list[MicroBatch]] = []
    for minibatch in minibatches(samples, rows, config.minibatch_size):
        micro_batches = []
        for micro in minibatches(samples, minibatch, config.micro_batch_size):
            part = batch.select(micro)
            with torch.no_grad():  # the policy that drew the samples, and the KL anchor
                old = sequence_logprobs(model, part)
                ref = sequence_logprobs(reference, part) if reference is not None else None
            rewards = torch.tensor([samples.rewards[r] for r in micro], device=old.device)
            groups = torch.tensor([samples.prompt[r] for r in micro], device=old.device)
            micro_batches.append(MicroBatch(part, old, ref, rewards, groups))
        plan.append(micro_batches)

    losses, clips, kls = [], [], []
    model.train()
    for _ in range(config.ppo_epochs):
        rng.shuffle(plan)
        for micro_batches in plan:
            tokens = sum(int(m.batch.response_mask.sum()) for m in micro_batches)
            optimizer.zero_grad(set_to_none=True)
            loss, clipped, kl = 0.0, 0.0, 0.0
            for m in micro_batches:
                out = policy_loss(model, m, config)
                share = out.tokens / max(tokens, 1)
                (out.loss * share).backward()  # type: ignore[no-untyped-call]
                loss += out.loss.item() * share
                clipped += out.clip_fraction * share
                kl += (out.kl or 0.0) * share
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(loss)
            clips.append(clipped)
            kls.append(kl)
    logged = {
        "loss": sum(losses) / len(losses),
        "clip_fraction": sum(clips) / len(clips),
        "trained_samples": len(rows),
    }
    if reference is not None:
        logged["kl"] = sum(kls) / len(kls)
    return logged


def policy_loss(model: Any, micro: MicroBatch, config: TrainConfig) -> LossOutput:
    """The configured algorithm's loss on one micro-batch (token mean over its tokens)."""
    logprobs = sequence_logprobs(model, micro.batch)
    mask, eps, kl, ref = micro.batch.response_mask, config.clip, config.kl_coef, micro.ref
    if config.algo == "raft":
        accepted = micro.rewards > 0.5
        return raft_loss(
            logprobs, micro.old, mask, accepted, clip_eps=eps, ref_logprobs=ref, kl_coef=kl
        )
    return grpo_loss(
        logprobs, micro.old, mask, micro.rewards, micro.groups, clip_eps=eps, ref_logprobs=ref,
        kl_coef=kl,
    )  # fmt: skip


def evaluate(
    generator: Generator,
    prompt_ids: Sequence[Sequence[int]],
    problems: Sequence[Problem],
    config: TrainConfig,
) -> float:
    """Greedy accuracy on the held-out set."""
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=config.max_new_tokens, seed=0)
    groups = generator.generate(prompt_ids, [1] * len(prompt_ids), greedy)
    correct = sum(score(p, g[0].text) for p, g in zip(problems, groups, strict=True))
    return correct / len(problems)


def answer_probability(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    problems: Sequence[Problem],
    *,
    chunk: int = 64,
) -> list[float]:
    """Per problem, the policy's probability of answering exactly ``answer<eos>`` (the form the
    warm-up teaches; a lower bound of the pass rate at temperature 1): one teacher-forced forward
    pass per chunk, no sampling noise."""
    answers = [
        tokenizer.encode(p.answer + tokenizer.eos_token, add_special_tokens=False) for p in problems
    ]
    was_training = model.training
    model.eval()
    probabilities: list[float] = []
    with torch.no_grad():
        for lo in range(0, len(problems), chunk):
            part = slice(lo, lo + chunk)
            batch = collate(prompt_ids[part], answers[part], tokenizer.pad_token_id)
            logprobs = sequence_logprobs(model, batch.to(model.device)).sum(dim=1)
            probabilities += logprobs.exp().tolist()
    model.train(was_training)
    return probabilities


def allocation_spread(counts: Sequence[int]) -> dict[str, float]:
    mean = sum(counts) / len(counts)
    std = (sum((n - mean) ** 2 for n in counts) / len(counts)) ** 0.5
    return {"alloc_min": min(counts), "alloc_max": max(counts), "alloc_std": round(std, 4)}


# -- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(out: Path, model: Any, tokenizer: Any, state: dict[str, Any]) -> Path:
    """Model folder + trainer state, written aside and swapped in (a crash keeps the old one)."""
    final, tmp, old = out / CHECKPOINT, out / f".{CHECKPOINT}.tmp", out / f".{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    rng = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save({**state, "rng": rng}, tmp / STATE_FILE)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(out: Path) -> dict[str, Any]:
    path = out / CHECKPOINT / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    state: dict[str, Any] = torch.load(path, weights_only=False)  # our own file
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def keep_metrics_before(path: Path, step: int) -> None:
    """On resume, drop lines of steps after the checkpoint (they are about to run again)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] < step]
    path.write_text("".join(f"{line}\n" for line in kept))


# -- the loop -----------------------------------------------------------------------------------


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """The trainer's forward passes (sampling with transformers, gradient norms, the update) in
    bf16 where `precision` says so: matrix products at the GPU's bf16 rate and half the
    activation memory, while weights, gradients, AdamW state and the log-softmax of the loss
    stay fp32 (torch's autocast lists). vLLM samples in its own `vllm_dtype` either way."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def load_policy(folder: str | Path, config: TrainConfig, device: torch.device) -> Any:
    """The policy's fp32 master weights on `device` (whatever `precision`), with gradient
    checkpointing when configured: the update then keeps each layer's input only and recomputes
    the rest in backward (about a third more compute, activations no longer grow with depth)."""
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.to(device)
    # transformers 5.25 renamed it: the old name is a deprecated alias (a FutureWarning) there.
    if config.gradient_checkpointing and hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_tokenizer(folder: str | Path) -> Any:
    """The model's tokenizer, with a pad token: batches are padded (and the padding masked out),
    and not every tokenizer names one (Llama's; SmolLM2's GGUF as transformers 5.17 reads it)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        print(f"the tokenizer has no pad token: padding with its eos token {tokenizer.eos_token}")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
