"""How well the policy answers: greedy accuracy, or the exact probability of the right answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainer_client.trainer.config import TrainConfig
from trainer_client.trainer.generation import Generator, SamplingConfig
from trainer_client.trainer.losses import collate, sequence_logprobs
from trainer_client.trainer.rewards import score
from trainer_client.trainer.tasks import Problem


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
