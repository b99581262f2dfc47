"""A short supervised warm-up, so RL starts from a policy that is right some of the time.

A randomly initialised tiny model never answers correctly, so every acceptance rate is 0 and
neither RAFT++ nor GVM has a signal. `warm_up()` trains it for a fixed number of steps on the
arithmetic task (teacher forcing on `answer<|end|>`, loss on the response tokens only), which is
enough for easy levels and not for hard ones: the result has acceptance rates spread across
difficulty levels and across prompts. It is deterministic (fixed seeds, a fixed step count, no
wall-clock stopping, one thread) and cached next to the tiny model under a hash of both
configurations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainer_client.trainer.generation import HFGenerator, SamplingConfig
from trainer_client.trainer.losses import collate, sequence_logprobs
from trainer_client.trainer.rewards import score
from trainer_client.trainer.tasks import (
    LEVELS,
    Problem,
    arithmetic_problems,
    encode_prompts,
    random_problem,
)
from trainer_client.trainer.tiny import TinyConfig, build_tiny, cached_build, load_tiny

REPORT_FILE = "warmup.json"


@dataclass(frozen=True, slots=True)
class WarmupConfig:
    """The warm-up's schedule and its acceptance measurement; its hash names the cache folder."""

    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3  # AdamW peak, linear warm-up over the first 5% of steps, cosine to 10%
    levels: tuple[int, ...] = tuple(LEVELS)
    # Easy levels are drawn more often: they are learned within the budget, hard ones mostly not.
    level_weights: tuple[float, ...] = (4, 2, 2, 1, 1, 1)
    seed: int = 0
    # The acceptance measurement written to warmup.json (sampling as RL will, temperature 1).
    eval_prompts_per_level: int = 16
    eval_samples: int = 16
    eval_seed: int = 1234

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(self)).encode()).hexdigest()
        return digest[:16]


@dataclass(frozen=True, slots=True)
class LevelAcceptance:
    """Acceptance of one difficulty level: the mean, and how it spreads over prompts."""

    level: int
    prompts: int
    acceptance: float  # mean over all samples of the level
    none_correct: float  # share of prompts with no accepted sample
    all_correct: float  # share of prompts with every sample accepted


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One torch intra-op thread for the block, restored afterwards.

    The tiny model's matrices are too small to gain from more threads, and on a busy machine
    extra threads cost several times the CPU (measured: 645 CPU-s with 2 threads against 120 s
    with 1 for the default warm-up, at load average 6 on 2 cores).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _learning_rate(step: int, config: WarmupConfig) -> float:
    ramp = max(1, config.steps // 20)
    if step < ramp:
        return config.lr * (step + 1) / ramp
    progress = (step - ramp) / max(1, config.steps - ramp)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_warmup(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: WarmupConfig,
    *,
    progress: bool = False,
) -> list[float]:
    """Supervised steps on fresh arithmetic problems, in place; returns the loss per step.
    `progress`: a tqdm bar with the ETA on stderr."""
    if len(config.level_weights) != len(config.levels):
        raise ValueError(
            f"level_weights has {len(config.level_weights)} entries for {len(config.levels)} levels"
        )
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    model.train()
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        bar = tqdm(range(config.steps), desc="warm-up", unit="step", disable=not progress)
        for step in bar:
            levels = rng.choices(config.levels, weights=config.level_weights, k=config.batch_size)
            problems = [random_problem(rng, level) for level in levels]
            prompts = encode_prompts(tokenizer, problems)
            answers = [
                tokenizer.encode(p.answer + tokenizer.eos_token, add_special_tokens=False)
                for p in problems
            ]
            batch = collate(prompts, answers, tokenizer.pad_token_id, device=model.device)
            logprobs = sequence_logprobs(model, batch)
            loss = -(logprobs.sum() / batch.response_mask.sum())
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    optimizer.zero_grad(set_to_none=True)
    return losses


def acceptance_by_level(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    *,
    samples: int,
    sampling: SamplingConfig,
) -> list[LevelAcceptance]:
    """Sample `samples` responses per problem, score them, and summarise by level."""
    generator = HFGenerator(model, tokenizer)
    completions = generator.generate(
        encode_prompts(tokenizer, problems), [samples] * len(problems), sampling
    )
    rates: dict[int, list[float]] = {}
    for problem, responses in zip(problems, completions, strict=True):
        correct = sum(score(problem, c.text) for c in responses)
        rates.setdefault(problem.level, []).append(correct / samples)
    return [
        LevelAcceptance(
            level=level,
            prompts=len(p),
            acceptance=sum(p) / len(p),
            none_correct=sum(r == 0 for r in p) / len(p),
            all_correct=sum(r == 1 for r in p) / len(p),
        )
        for level, p in sorted(rates.items())
    ]


def warm_up(
    cache_dir: str | Path | None = None,
    tiny: TinyConfig | None = None,
    config: WarmupConfig | None = None,
    *,
    progress: bool = False,
) -> Path:
    """The folder of the warmed-up tiny model (model, tokenizer and `warmup.json`), cached.

    `warmup.json` records the loss curve, the training time and the acceptance per level
    measured after training (`read_report`). `progress`: when it is built, say so (it happens
    once) and show a progress bar with the ETA.
    """
    tiny = tiny or TinyConfig()
    config = config or WarmupConfig()
    base = build_tiny(cache_dir, tiny)

    def build(folder: Path) -> None:
        if progress:
            print(
                f"warming up the tiny model: {config.steps} supervised steps, then an acceptance "
                f"check (1-2 min, once: cached in {base.parent})",
                flush=True,
            )
        model, tokenizer = load_tiny(base)
        problems = arithmetic_problems(
            config.eval_prompts_per_level * len(config.levels),
            seed=config.eval_seed,
            levels=config.levels,
        )
        with single_threaded():
            started, cpu_started = time.perf_counter(), time.process_time()
            losses = train_warmup(model, tokenizer, config, progress=progress)
            train_seconds = time.perf_counter() - started
            train_cpu_seconds = time.process_time() - cpu_started  # less load-sensitive
            started = time.perf_counter()
            levels = acceptance_by_level(
                model,
                tokenizer,
                problems,
                samples=config.eval_samples,
                sampling=SamplingConfig(temperature=1.0, max_new_tokens=8, seed=config.eval_seed),
            )
            eval_seconds = time.perf_counter() - started
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        report = {
            "tiny": dataclasses.asdict(tiny),
            "warmup": dataclasses.asdict(config),
            "train_seconds": round(train_seconds, 2),
            "train_cpu_seconds": round(train_cpu_seconds, 2),
            "eval_seconds": round(eval_seconds, 2),
            "load_average": os.getloadavg(),  # the times above depend on it
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "levels": [dataclasses.asdict(level) for level in levels],
        }
        (folder / REPORT_FILE).write_text(json.dumps(report, indent=2))

    return cached_build(base.parent, f"{base.name}-warm-{config.key()}", build)


def read_report(folder: str | Path) -> dict[str, Any]:
    """The `warmup.json` a `warm_up()` build wrote into `folder`."""
    report: dict[str, Any] = json.loads((Path(folder) / REPORT_FILE).read_text())
    return report
