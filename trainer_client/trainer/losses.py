"""Policy losses (RAFT++ and GRPO) and the batching and log-probabilities they consume.

All tensors are laid out by sequence position: `[B, T]` with `B` sequences (prompt + response)
and `T` positions. Position t of a log-probability tensor holds log π(x_t | x_<t) when x_t is a
response token, so one `response_mask` serves the batch, the log-probs and the losses.

Loss conventions (both losses): the PPO-clipped surrogate per token
`-min(r A, clip(r, 1 - ε_low, 1 + ε_high) A)` with `r = exp(logp - old_logp)`, averaged over
all tokens that enter the loss ("token mean", every token weighs the same whatever the length of
its response). With `ref_logprobs` and `kl_coef > 0`, `kl_coef` times the token mean of the k3
estimator `exp(ref - logp) - (ref - logp) - 1` of KL(π || π_ref) is added over the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedModel

PaddingSide = Literal["left", "right"]


@dataclass(frozen=True, slots=True)
class Batch:
    """Padded prompt + response sequences."""

    input_ids: Tensor  # [B, T] long; padding holds the pad id
    attention_mask: Tensor  # [B, T] long; 1 on real tokens
    response_mask: Tensor  # [B, T] bool; True on response tokens (the likelihood's targets)
    position_ids: Tensor  # [B, T] long; 0, 1, ... from each sequence's first real token

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on `device`."""
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.response_mask.to(device),
            self.position_ids.to(device),
        )

    def select(self, rows: Sequence[int] | Tensor) -> Batch:
        """The sub-batch of `rows`, without the columns that are padding in all of them."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        mask = self.attention_mask[index]
        used = mask.any(dim=0).nonzero().flatten()
        columns = slice(int(used[0]), int(used[-1]) + 1) if len(used) else slice(0, 0)
        return Batch(
            self.input_ids[index, columns],
            mask[:, columns],
            self.response_mask[index, columns],
            self.position_ids[index, columns],
        )


def collate(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    *,
    padding_side: PaddingSide = "right",
    device: torch.device | str | None = None,
) -> Batch:
    """Pad `prompts[i] + responses[i]` into one batch; the response tokens are the targets."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token (the first one is never a target)")
    width = max((len(p) + len(r) for p, r in zip(prompts, responses, strict=True)), default=0)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    response_mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        length = len(prompt) + len(response)
        start = width - length if padding_side == "left" else 0
        input_ids[row, start : start + length] = torch.tensor([*prompt, *response])
        attention_mask[row, start : start + length] = 1
        response_mask[row, start + len(prompt) : start + length] = True
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    batch = Batch(input_ids, attention_mask, response_mask, position_ids)
    return batch if device is None else batch.to(device)


def embedding_layers(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The input embedding and the output projection (`lm_head`) of a causal LM."""
    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no output projection: pass a *ForCausalLM model"
        )
    return model.get_input_embeddings(), head


def response_hidden_states(
    model: PreTrainedModel, batch: Batch, inputs_embeds: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Final hidden states at the positions that predict response tokens.

    Returns `(hidden [N, H], targets [N], rows [N])`: one row per response token of the batch
    (N in all), the token it predicts and the sequence it belongs to. Runs the decoder only; the
    caller applies the output projection, so logits are never computed for prompt positions.
    Assumes logits = lm_head(last_hidden_state), as in Llama, Qwen2, Mistral and SmolLM2.
    """
    if inputs_embeds is None:
        inputs_embeds = model.get_input_embeddings()(batch.input_ids)
    hidden = model.base_model(
        inputs_embeds=inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state
    predicts = batch.response_mask[:, 1:]  # position t predicts token t + 1
    rows = predicts.nonzero()[:, 0]
    return hidden[:, :-1][predicts], batch.input_ids[:, 1:][predicts], rows


def sequence_logprobs(model: PreTrainedModel, batch: Batch) -> Tensor:
    """`[B, T]` log-probabilities of the response tokens under `model`; 0 elsewhere.

    Differentiable; wrap in `torch.no_grad()` for old or reference log-probs.
    """
    hidden, targets, _ = response_hidden_states(model, batch)
    _, head = embedding_layers(model)
    logits = head(hidden).float()
    token_logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    out = torch.zeros(batch.input_ids.shape, dtype=token_logprobs.dtype, device=logits.device)
    out[batch.response_mask] = token_logprobs
    return out


@dataclass(frozen=True, slots=True)
class LossOutput:
    """A loss to backpropagate and what to log about it."""

    loss: Tensor  # scalar
    advantages: Tensor  # [B] the per-sequence advantage used (RAFT++: 1 accepted, 0 rejected)
    tokens: int  # tokens in the mean (the denominator)
    clip_fraction: float  # share of those tokens whose ratio was clipped out of the gradient
    ratio_mean: float  # mean importance ratio over those tokens
    kl: float | None  # mean k3 KL to the reference over those tokens, when one was given


def _clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    mask: Tensor,
    advantages: Tensor,
    *,
    clip_eps: float,
    clip_eps_high: float | None,
    ref_logprobs: Tensor | None,
    kl_coef: float,
) -> LossOutput:
    """PPO-clip token-mean loss over the tokens in `mask` (shared by RAFT++ and GRPO)."""
    if not logprobs.shape == old_logprobs.shape == mask.shape:
        raise ValueError(
            f"shapes differ: logprobs {tuple(logprobs.shape)}, "
            f"old_logprobs {tuple(old_logprobs.shape)}, mask {tuple(mask.shape)}"
        )
    high = clip_eps if clip_eps_high is None else clip_eps_high
    weights = mask.to(logprobs.dtype)
    tokens = int(mask.sum())
    denominator = max(tokens, 1)  # no token: a zero loss that still backpropagates
    ratio = torch.exp(logprobs - old_logprobs.detach())
    adv = advantages.to(logprobs.dtype)[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    loss = (per_token * weights).sum() / denominator
    kl_value = None
    if ref_logprobs is not None:
        log_ref_ratio = ref_logprobs.detach() - logprobs
        k3 = torch.exp(log_ref_ratio) - log_ref_ratio - 1
        kl = (k3 * weights).sum() / denominator
        loss = loss + kl_coef * kl
        kl_value = float(kl.detach())
    with torch.no_grad():
        clipped_out = (clipped < unclipped) & mask.bool()  # where the min picked the clipped term
        clip_fraction = float(clipped_out.sum()) / denominator
        ratio_mean = float((ratio * weights).sum()) / denominator if tokens else 1.0
    return LossOutput(loss, advantages, tokens, clip_fraction, ratio_mean, kl_value)


def raft_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    mask: Tensor,
    accepted: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> LossOutput:
    """RAFT++: the PPO-clipped ratio with advantage 1 on the accepted samples' tokens only.

    `accepted` is `[B]` bool (or 0/1). Rejected samples contribute nothing, not even to the
    token count. Without any accepted sample the loss is 0.
    """
    accepted = accepted.bool()
    return _clipped_surrogate(
        logprobs,
        old_logprobs,
        mask.bool() & accepted[:, None],
        accepted.to(logprobs.dtype),
        clip_eps=clip_eps,
        clip_eps_high=clip_eps_high,
        ref_logprobs=ref_logprobs,
        kl_coef=kl_coef,
    )


def grpo_advantages(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6) -> Tensor:
    """`(r - mean_g) / (std_g + eps)` within each sample's group g (one group per prompt).

    Groups may differ in size. `std_g` is the unbiased sample standard deviation (as in
    DeepSeekMath's GRPO and TRL); a group of one sample, or whose rewards are all equal, has
    advantage 0 for all its samples.
    """
    rewards = rewards.to(torch.float64)
    _, groups = torch.unique(group_ids, return_inverse=True)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    count = torch.zeros(n_groups, dtype=torch.float64, device=rewards.device)
    count.index_add_(0, groups, torch.ones_like(rewards))
    total = torch.zeros_like(count).index_add_(0, groups, rewards)
    centred = rewards - (total / count)[groups]
    squares = torch.zeros_like(count).index_add_(0, groups, centred**2)
    std = torch.sqrt(squares / (count - 1).clamp(min=1))
    # Equal rewards are detected exactly (rounding in the mean would leave ±1e-17 / 1e-17).
    highest = torch.full_like(count, -torch.inf).scatter_reduce(0, groups, rewards, "amax")
    lowest = torch.full_like(count, torch.inf).scatter_reduce(0, groups, rewards, "amin")
    informative = (highest > lowest)[groups]
    advantages = centred / (std[groups] + eps)
    return torch.where(informative, advantages, torch.zeros_like(advantages))


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    eps: float = 1e-6,
) -> LossOutput:
    """GRPO: the PPO-clipped ratio with group-normalised advantages, token mean over all samples.

    `rewards` and `group_ids` are `[B]`; samples of the same prompt share a group id. Samples
    with advantage 0 add nothing to the gradient but their tokens count in the mean.
    """
    advantages = grpo_advantages(rewards, group_ids, eps=eps).to(logprobs.dtype)
    return _clipped_surrogate(
        logprobs,
        old_logprobs,
        mask.bool(),
        advantages,
        clip_eps=clip_eps,
        clip_eps_high=clip_eps_high,
        ref_logprobs=ref_logprobs,
        kl_coef=kl_coef,
    )
