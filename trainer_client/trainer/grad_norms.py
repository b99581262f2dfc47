"""Per-sample gradient norms G of the summed response log-likelihood, for the whole batch at once.

For sequence j with response positions R_j, L_j = Σ_{t∈R_j} log π(x_t | x_<t) (summed, not
length-normalised) and G_j = ‖∂L_j/∂W‖_F for one weight matrix W:

* `target="embedding"` (the GVM paper's choice): W is the input embedding matrix E.
* `target="lm_head"`: W is the output projection.

**Definition for tied embeddings.** G_j is the norm of the gradient with respect to the
*parameter*: what `W.grad` holds after `L_j.backward()`, which is what a per-sample loop (the
published code's method) measures. When E is also the output projection, that gradient has two
terms, and both targets name the same matrix and give the same number:

    ∂L_j/∂E = Σ_u e_{x_u} g_uᵀ   (input lookups: g_u = ∂L_j/∂(embedding at position u))
            + Σ_{t∈R_j} a_t h_tᵀ (output projection: a_t = onehot(x_t) - softmax_t, h_t the final
                                  hidden state that predicts x_t)

**One batched pass.** Sequences in a batch do not interact, so one backward of Σ_j L_j w.r.t.
the batch's input embeddings gives every g_u of every sequence. The first term's norm comes from
scatter-adding each sequence's g_u by token id (over the distinct (sequence, token) pairs only,
never a dense [vocab, hidden] matrix per sequence). The second term is never materialised:

    ‖Σ_t a_t h_tᵀ‖² = Σ_{t,s} (a_t·a_s)(h_t·h_s)   (Gram matrices of the response positions)
    ⟨Σ_u e_{x_u} g_uᵀ, Σ_t a_t h_tᵀ⟩ = Σ_{u,t} a_t[x_u] (g_u·h_t)

so a tied model costs one forward, one backward to the embeddings and a few small batched
matrix products; an untied `lm_head` target needs no backward at all. `grad_norms_loop` is the
one-backward-per-sample reference the batched result is tested and benchmarked against.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel

from trainer_client.trainer.losses import Batch, embedding_layers, response_hidden_states

Target = Literal["embedding", "lm_head"]


def _weights(model: PreTrainedModel) -> tuple[Tensor, Tensor]:
    embedding, head = embedding_layers(model)
    if not isinstance(embedding.weight, Tensor) or not isinstance(head.weight, Tensor):
        raise TypeError("the embedding and the output projection need a `weight` parameter")
    return embedding.weight, head.weight


def grad_norms(
    model: PreTrainedModel,
    batch: Batch,
    *,
    target: Target = "embedding",
    micro_batch_size: int | None = None,
) -> Tensor:
    """`[B]` float64 norms G_j (on the CPU) for every sequence of `batch` (see the module doc).

    Parameter `.grad`s are left untouched. `micro_batch_size` bounds memory: no pass runs more
    than that many sequences. Passes group sequences of similar length (`length_groups`), so
    little of the work is padding. Sequences without response tokens get 0.
    """
    if target not in ("embedding", "lm_head"):
        raise ValueError(f"target must be 'embedding' or 'lm_head', got {target!r}")
    size = len(batch.input_ids)
    if size == 0:
        return torch.zeros(0, dtype=torch.float64)
    groups = length_groups(batch.attention_mask.sum(dim=1), micro_batch_size or size)
    with _parameters_frozen(model):
        parts = [_grad_norms_batched(model, batch.select(rows), target) for rows in groups]
    norms = torch.empty(size, dtype=torch.float64)
    norms[torch.cat(groups)] = torch.cat(parts).cpu()
    return norms


PASS_COST_TOKENS = 64
"""What one more forward/backward pass costs beyond its tokens (Python, kernel launches), in
padded tokens. Chosen on the tiny CPU model: there the benchmark's 32 x 24 batch ran 15-20% faster
as 2 passes grouped by length than as 1, and 3 or 4 passes were no faster than 2. A larger model's
token costs more and its pass overhead relatively less, so for it this errs towards fewer passes."""


def length_groups(lengths: Tensor, max_size: int) -> list[Tensor]:
    """Row indices split into passes of at most `max_size` sequences that minimise padded tokens
    plus `PASS_COST_TOKENS` per pass.

    Sorted by length, the best split into consecutive runs is a shortest path: best[j], the cost
    of the j shortest sequences, is min over i of best[i] + (j - i) * length[j-1] + pass cost
    (a run costs its size times its longest member). O(B * max_size), vectorised over i.
    """
    lengths = lengths.cpu()
    order = torch.argsort(lengths, stable=True)
    ordered = lengths[order].numpy().astype(np.float64)
    size = len(order)
    best = np.zeros(size + 1)
    start = np.zeros(size + 1, dtype=np.int64)
    for j in range(1, size + 1):
        first = max(0, j - max_size)
        costs = best[first:j] + np.arange(j - first, 0, -1) * ordered[j - 1]
        pick = int(np.argmin(costs))
        best[j], start[j] = costs[pick] + PASS_COST_TOKENS, first + pick
    groups = []
    end = size
    while end > 0:
        groups.append(order[int(start[end]) : end])
        end = int(start[end])
    return groups[::-1]


@contextmanager
def _parameters_frozen(model: PreTrainedModel) -> Iterator[None]:
    """No parameter requires grad inside: the pass differentiates w.r.t. the input embeddings
    only, so autograd neither records nor keeps what weight gradients would need (about 8%
    faster on the tiny CPU model, and less activation memory)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def _grad_norms_batched(model: PreTrainedModel, batch: Batch, target: Target) -> Tensor:
    embedding, head = _weights(model)
    tied = embedding is head
    input_term = target == "embedding" or tied
    output_term = target == "lm_head" or tied
    size = len(batch.input_ids)

    with torch.enable_grad() if input_term else torch.no_grad():
        embeds = model.get_input_embeddings()(batch.input_ids).detach()
        embeds.requires_grad_(input_term)
        hidden, targets, rows = response_hidden_states(model, batch, inputs_embeds=embeds)
        logprobs = torch.log_softmax(embedding_layers(model)[1](hidden).float(), dim=-1)
        if input_term:
            total = logprobs.gather(1, targets[:, None]).sum()
            (g,) = torch.autograd.grad(total, embeds)  # [B, T, H]: ∂L_j/∂(embedding at u)
            g = g.float() * _lookup_mask(model, batch)[..., None]

    squared = torch.zeros(size, dtype=torch.float64, device=hidden.device)
    if input_term:
        squared += _lookup_term(g, batch, vocab=embedding.shape[0])
    if output_term:
        # a_t = onehot(x_t) - softmax_t, the gradient of log π(x_t) w.r.t. the logits.
        a = -logprobs.detach().exp()
        a[torch.arange(len(targets)), targets] += 1
        a_pad, h_pad = _pad_by_row(a, rows, size), _pad_by_row(hidden.detach().float(), rows, size)
        gram_a = torch.bmm(a_pad, a_pad.transpose(1, 2))
        gram_h = torch.bmm(h_pad, h_pad.transpose(1, 2))
        squared += (gram_a * gram_h).sum(dim=(1, 2)).double()
        if input_term:  # tied: the cross term 2⟨lookup term, projection term⟩
            ids = batch.input_ids[:, None, :].expand(-1, a_pad.shape[1], -1)
            a_at_inputs = a_pad.gather(2, ids)  # [B, R, T]: a_t[x_u]
            h_dot_g = torch.bmm(h_pad, g.transpose(1, 2))  # [B, R, T]: h_t · g_u
            squared += 2 * (a_at_inputs * h_dot_g).sum(dim=(1, 2)).double()
    return squared.clamp(min=0).sqrt()


def _lookup_mask(model: PreTrainedModel, batch: Batch) -> Tensor:
    """`[B, T]` positions whose lookup gradient reaches the embedding matrix.

    Not padding (it never reaches a loss; zeroed anyway so it cannot leak into a norm), and not
    the embedding's `padding_idx` row, which `nn.Embedding` never gives a gradient, even where
    that token is part of a sequence (a sampled `<|pad|>`).
    """
    mask = batch.attention_mask.bool()
    padding_idx = getattr(model.get_input_embeddings(), "padding_idx", None)
    if padding_idx is not None:
        mask = mask & (batch.input_ids != padding_idx)
    return mask


def _lookup_term(g: Tensor, batch: Batch, vocab: int) -> Tensor:
    """‖Σ_u e_{x_u} g_uᵀ‖² per sequence: g scatter-added over distinct (sequence, token) pairs."""
    rows = torch.arange(len(g), device=g.device)[:, None].expand_as(batch.input_ids)
    real = batch.attention_mask.bool()
    keys = rows[real] * vocab + batch.input_ids[real]
    unique, inverse = torch.unique(keys, return_inverse=True)
    summed = torch.zeros(len(unique), g.shape[-1], dtype=torch.float64, device=g.device)
    summed.index_add_(0, inverse, g[real].double())
    squared = torch.zeros(len(g), dtype=torch.float64, device=g.device)
    return squared.index_add_(0, unique // vocab, summed.square().sum(dim=1))


def _pad_by_row(values: Tensor, rows: Tensor, size: int) -> Tensor:
    """`[N, D]` values grouped by sequence into a zero-padded `[size, max count, D]`.

    `rows` must be sorted (it is: `nonzero()` enumerates the batch row by row).
    """
    counts = torch.bincount(rows, minlength=size)
    slot = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    width = int(counts.max()) if len(rows) else 0
    padded = values.new_zeros(size, width, values.shape[-1])
    padded[rows, slot] = values
    return padded


def grad_norms_loop(
    model: PreTrainedModel, batch: Batch, *, target: Target = "embedding"
) -> Tensor:
    """The reference: one unpadded forward and one backward per sequence (the published method).

    Computes ‖∂L_j/∂W‖ with autograd on the parameter itself through the model's ordinary
    forward, so it shares no code path with `grad_norms` beyond the batch layout.
    """
    embedding, head = _weights(model)
    weight = embedding if target == "embedding" else head
    norms = []
    for j in range(len(batch.input_ids)):
        real = batch.attention_mask[j].bool()
        ids = batch.input_ids[j, real][None]
        predicts = batch.response_mask[j, real][1:]
        if not predicts.any():
            norms.append(torch.zeros((), dtype=torch.float64))
            continue
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(logprobs[predicts].sum(), weight)
        norms.append(grad.double().norm().cpu())
    return torch.stack(norms) if norms else torch.zeros(0, dtype=torch.float64)
