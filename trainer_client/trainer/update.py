"""The policy update: RAFT++ or GRPO on a step's samples, in minibatches that keep groups whole."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import torch

from trainer_client.trainer.config import TrainConfig
from trainer_client.trainer.losses import Batch, LossOutput, grpo_loss, raft_loss, sequence_logprobs
from trainer_client.trainer.samples import Samples


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
