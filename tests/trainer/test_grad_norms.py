"""Batched per-sample gradient norms equal one-backward-per-sample autograd (fp32, 1e-4 rel)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trainer_client.trainer.grad_norms import (
    PASS_COST_TOKENS,
    grad_norms,
    grad_norms_loop,
    length_groups,
)
from trainer_client.trainer.losses import Batch, PaddingSide, collate
from trainer_client.trainer.policy import autocast
from trainer_client.trainer.tiny import build_tiny, load_tiny

RTOL = 1e-4


@pytest.fixture(scope="session")
def tied_model(tmp_path_factory: pytest.TempPathFactory) -> LlamaForCausalLM:
    # The build is cached by config hash under one shared folder: built once per session.
    folder: Path = build_tiny(tmp_path_factory.getbasetemp() / "gvm-tiny")
    model, _ = load_tiny(folder)
    return model


@pytest.fixture(scope="module")
def untied_model() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config)


def random_batch(vocab: int, padding_side: PaddingSide, seed: int = 0, size: int = 8) -> Batch:
    """Prompts and responses of varied lengths, with repeated tokens inside and across them."""
    g = torch.Generator().manual_seed(seed)

    def tokens(low: int, high: int) -> list[int]:
        length = int(torch.randint(low, high, (1,), generator=g))
        return torch.randint(3, 40, (length,), generator=g).tolist()

    prompts = [tokens(1, 12) for _ in range(size)]
    responses = [tokens(1, 10) for _ in range(size)]
    responses[0] = [7, 7, 7, prompts[0][0], 7]  # the same id several times, also in the prompt
    assert max(map(max, prompts + responses)) < vocab
    return collate(prompts, responses, pad_id=0, padding_side=padding_side)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert (expected > 0).all()
    rel = ((actual - expected).abs() / expected).max().item()
    assert rel < RTOL, f"max relative error {rel:.2e}"


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_tied_embeddings_batched_equals_per_sample(
    tied_model: LlamaForCausalLM, padding_side: PaddingSide
) -> None:
    assert tied_model.get_input_embeddings().weight is tied_model.get_output_embeddings().weight
    batch = random_batch(tied_model.config.vocab_size, padding_side)
    assert_rel_close(grad_norms(tied_model, batch), grad_norms_loop(tied_model, batch))


@pytest.mark.parametrize("target", ["embedding", "lm_head"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_untied_batched_equals_per_sample(
    untied_model: LlamaForCausalLM, padding_side: PaddingSide, target: str
) -> None:
    batch = random_batch(untied_model.config.vocab_size, padding_side, seed=1)
    assert_rel_close(
        grad_norms(untied_model, batch, target=target),  # type: ignore[arg-type]
        grad_norms_loop(untied_model, batch, target=target),  # type: ignore[arg-type]
    )


def test_a_sampled_padding_token_is_handled_like_nn_embedding(
    tied_model: LlamaForCausalLM,
) -> None:
    """`nn.Embedding(padding_idx=...)` gives that row no lookup gradient, even inside a sequence."""
    pad = tied_model.config.pad_token_id
    assert tied_model.get_input_embeddings().padding_idx == pad
    batch = collate([[5, pad, 7], [8]], [[9, pad, 10], [pad, 11]], pad_id=pad)
    assert_rel_close(grad_norms(tied_model, batch), grad_norms_loop(tied_model, batch))


def test_padding_side_and_micro_batches_do_not_change_the_norms(
    tied_model: LlamaForCausalLM,
) -> None:
    right = grad_norms(tied_model, random_batch(512, "right", seed=2))
    left = grad_norms(tied_model, random_batch(512, "left", seed=2))
    chunked = grad_norms(tied_model, random_batch(512, "left", seed=2), micro_batch_size=5)
    assert_rel_close(left, right)
    assert_rel_close(chunked, right)


def test_tied_norm_includes_the_output_projection_term(tied_model: LlamaForCausalLM) -> None:
    """With tied weights both targets are the one shared matrix, and its gradient has a term
    from the output projection: the norm differs from the lookup-only gradient's."""
    batch = random_batch(512, "right", seed=3, size=4)
    embedding = grad_norms(tied_model, batch, target="embedding")
    torch.testing.assert_close(grad_norms(tied_model, batch, target="lm_head"), embedding)

    lookup_only = []
    for j in range(4):
        real = batch.attention_mask[j].bool()
        ids = batch.input_ids[j, real][None]
        embeds = tied_model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = tied_model(inputs_embeds=embeds).logits[0, :-1]
        logprobs = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
        (g,) = torch.autograd.grad(logprobs[batch.response_mask[j, real][1:]].sum(), embeds)
        dense = torch.zeros_like(tied_model.get_input_embeddings().weight)
        dense.index_add_(0, ids[0], g[0])
        lookup_only.append(dense.norm().item())
    assert all(abs(a - b) / b > 1e-2 for a, b in zip(embedding.tolist(), lookup_only, strict=True))


def test_no_response_tokens_give_zero_and_grads_are_left_alone(
    tied_model: LlamaForCausalLM,
) -> None:
    batch = collate([[5, 6, 7], [8, 9]], [[], [10, 11]], pad_id=0)
    tied_model.zero_grad(set_to_none=True)
    norms = grad_norms(tied_model, batch)
    assert norms[0].item() == 0.0
    assert norms[1].item() > 0
    assert all(p.grad is None for p in tied_model.parameters())
    assert all(p.requires_grad for p in tied_model.parameters())  # unfrozen after the pass
    assert grad_norms_loop(tied_model, batch)[0].item() == 0.0
    empty = collate([[5, 6], [7]], [[], []], pad_id=0)
    assert grad_norms(tied_model, empty).tolist() == [0.0, 0.0]


def test_rejects_an_unknown_target(tied_model: LlamaForCausalLM) -> None:
    with pytest.raises(ValueError, match="target must be"):
        grad_norms(tied_model, random_batch(512, "right"), target="attention")  # type: ignore[arg-type]


def set_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest):
        yield [[first], *partition]
        for k in range(len(partition)):
            yield [*partition[:k], [first, *partition[k]], *partition[k + 1 :]]


def padded_cost(groups: list[list[int]], lengths: list[int]) -> int:
    return sum(len(g) * max(lengths[j] for j in g) + PASS_COST_TOKENS for g in groups)


@pytest.mark.parametrize("seed", range(6))
def test_length_groups_find_the_cheapest_split_of_any_kind(seed: int) -> None:
    """Against every set partition (not just runs of the sorted order) of up to 7 sequences."""
    g = torch.Generator().manual_seed(seed)
    size = int(torch.randint(1, 8, (1,), generator=g))
    lengths = torch.randint(1, 200, (size,), generator=g)
    max_size = int(torch.randint(1, size + 1, (1,), generator=g))
    groups = length_groups(lengths, max_size)
    flat = torch.cat(groups).tolist()
    assert sorted(flat) == list(range(size))
    assert all(len(group) <= max_size for group in groups)
    as_lists = [group.tolist() for group in groups]
    best = min(
        padded_cost(p, lengths.tolist())
        for p in set_partitions(list(range(size)))
        if all(len(group) <= max_size for group in p)
    )
    assert padded_cost(as_lists, lengths.tolist()) == best


def test_norms_come_back_in_batch_order_when_passes_are_grouped_by_length(
    tied_model: LlamaForCausalLM,
) -> None:
    """Long and short sequences interleaved: the grouped passes reorder them, the result not."""
    short, long = [5, 6], list(range(3, 40))
    prompts = [long if j % 2 else short for j in range(12)]
    responses = [[7 + j, 8] for j in range(12)]
    batch = collate(prompts, responses, pad_id=0)
    assert len(length_groups(batch.attention_mask.sum(dim=1), 12)) == 2
    assert_rel_close(grad_norms(tied_model, batch), grad_norms_loop(tied_model, batch))


@pytest.mark.parametrize("target", ["embedding", "lm_head"])
def test_bf16_autocast_norms_stay_close_to_fp32(
    untied_model: LlamaForCausalLM, target: str
) -> None:
    """`precision = "bf16"` runs the passes under autocast: the norms move by bf16 rounding only
    (and do move, so the autocast really reached the matrix products)."""
    batch = random_batch(untied_model.config.vocab_size, "right", seed=2)
    exact = grad_norms(untied_model, batch, target=target)  # type: ignore[arg-type]
    with autocast("bf16", torch.device("cpu")):
        mixed = grad_norms(untied_model, batch, target=target)  # type: ignore[arg-type]
    assert mixed.dtype == exact.dtype
    relative = ((mixed - exact).abs() / exact).max().item()
    assert 1e-5 < relative < 5e-2, relative
