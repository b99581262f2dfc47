"""A step's samples, and what they become: a padded batch and the observations the service gets."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from trainer_client import Observation
from trainer_client.trainer.config import TrainConfig
from trainer_client.trainer.generation import Completion
from trainer_client.trainer.grad_norms import grad_norms
from trainer_client.trainer.losses import Batch, collate
from trainer_client.trainer.tasks import Problem


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
