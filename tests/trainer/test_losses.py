"""Batching, log-probabilities and the RAFT++ / GRPO losses, against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from trainer_client.trainer.losses import (
    collate,
    grpo_advantages,
    grpo_loss,
    raft_loss,
    sequence_logprobs,
)
from trainer_client.trainer.tiny import build_tiny, load_tiny


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> LlamaForCausalLM:
    # The build is cached by config hash under one shared folder: built once per session.
    folder: Path = build_tiny(tmp_path_factory.getbasetemp() / "gvm-tiny")
    model, _ = load_tiny(folder)
    return model


def test_collate_right_and_left_padding() -> None:
    prompts, responses = [[7, 8], [9]], [[1, 2, 3], []]
    right = collate(prompts, responses, pad_id=0)
    assert right.input_ids.tolist() == [[7, 8, 1, 2, 3], [9, 0, 0, 0, 0]]
    assert right.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert right.response_mask.int().tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]]
    assert right.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]

    left = collate(prompts, [[1], [4, 5, 6]], pad_id=0, padding_side="left")
    assert left.input_ids.tolist() == [[0, 7, 8, 1], [9, 4, 5, 6]]
    assert left.attention_mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert left.response_mask.int().tolist() == [[0, 0, 0, 1], [0, 1, 1, 1]]
    assert left.position_ids.tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]]


def test_collate_rejects_mismatched_or_empty_prompts() -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        collate([[1], [2]], [[3]], pad_id=0)
    with pytest.raises(ValueError, match="at least one token"):
        collate([[]], [[3]], pad_id=0)


def test_select_keeps_rows_and_trims_shared_padding() -> None:
    batch = collate([[1, 2, 3, 4], [5], [6, 7]], [[8], [9], [10]], pad_id=0, padding_side="left")
    sub = batch.select([1, 2])
    assert sub.input_ids.tolist() == [[0, 5, 9], [6, 7, 10]]
    assert sub.position_ids.tolist() == [[0, 0, 1], [0, 1, 2]]
    assert sub.response_mask.int().tolist() == [[0, 0, 1], [0, 0, 1]]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_sequence_logprobs_match_unpadded_forward(
    tiny_model: LlamaForCausalLM, padding_side: str
) -> None:
    prompts = [[1, 4, 50, 60, 70], [1, 4, 80]]
    responses = [[11, 12, 2], [13, 14, 15, 16, 2]]
    batch = collate(prompts, responses, pad_id=0, padding_side=padding_side)  # type: ignore[arg-type]
    got = sequence_logprobs(tiny_model, batch)
    assert got.shape == batch.input_ids.shape
    assert (got[~batch.response_mask] == 0).all()
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits[0, :-1]
        expected = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[-len(response) :, 0]
        torch.testing.assert_close(got[row][batch.response_mask[row]].detach(), expected)


# Two sequences of four positions; response tokens at positions 1-2 (row 0) and 1 (row 1).
MASK = torch.tensor([[False, True, True, False], [False, True, False, False]])
LOGPROBS = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -0.5, 0.0, 0.0]])
OLD = torch.tensor([[0.0, -1.0, -2.5, 0.0], [0.0, -0.2, 0.0, 0.0]])


def test_raft_loss_hand_computed() -> None:
    logprobs = LOGPROBS.clone().requires_grad_(True)
    out = raft_loss(logprobs, OLD, MASK, torch.tensor([True, False]), clip_eps=0.2)
    # Row 0 only: ratio 1 -> 1; ratio e^0.5 = 1.65 -> clipped to 1.2. Token mean of -min(.).
    assert out.loss.item() == pytest.approx(-(1.0 + 1.2) / 2)
    assert out.tokens == 2
    assert out.clip_fraction == pytest.approx(0.5)
    assert out.ratio_mean == pytest.approx((1 + math.exp(0.5)) / 2)
    assert out.kl is None
    assert out.advantages.tolist() == [1.0, 0.0]
    out.loss.backward()
    assert logprobs.grad is not None
    # d/dlogp of -ratio/2 is -ratio/2 where unclipped; 0 where clipped, masked or rejected.
    expected = torch.tensor([[0.0, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(logprobs.grad, expected)


def test_raft_loss_adds_k3_kl_to_the_reference() -> None:
    ref = torch.tensor([[0.0, -1.5, -2.0, 0.0], [0.0, 9.0, 0.0, 0.0]])  # row 1 is rejected
    out = raft_loss(LOGPROBS, OLD, MASK, torch.tensor([1, 0]), ref_logprobs=ref, kl_coef=0.1)
    k3 = math.exp(-0.5) + 0.5 - 1  # log(ref/π) = -0.5 at the first token, 0 at the second
    assert out.kl == pytest.approx(k3 / 2)
    assert out.loss.item() == pytest.approx(-1.1 + 0.1 * k3 / 2)


def test_raft_loss_without_accepted_samples_is_zero_and_differentiable() -> None:
    logprobs = LOGPROBS.clone().requires_grad_(True)
    out = raft_loss(logprobs, OLD, MASK, torch.tensor([False, False]))
    assert out.loss.item() == 0.0
    assert out.tokens == 0
    out.loss.backward()
    assert logprobs.grad is not None
    assert (logprobs.grad == 0).all()


def test_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        raft_loss(LOGPROBS, OLD[:, :3], MASK, torch.tensor([True, True]))


def test_grpo_advantages_unequal_groups_hand_computed() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5, 0.1, 0.1])
    groups = torch.tensor([7, 7, 7, 3, 42, 42, 9, 5, 5])  # sizes 3, 1, 2, 1, 2 (2 all-equal)
    adv = grpo_advantages(rewards, groups, eps=0.0)
    std3 = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # unbiased std of (1, 0, 0)
    std2 = math.sqrt(0.5)  # unbiased std of (1, 0)
    expected = [
        (2 / 3) / std3,
        -(1 / 3) / std3,
        -(1 / 3) / std3,
        0.0,  # a group of one: no baseline, no advantage
        0.5 / std2,
        -0.5 / std2,
        0.0,
        0.0,  # all rewards equal
        0.0,
    ]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64))


def test_grpo_loss_hand_computed() -> None:
    mask = torch.tensor([[False, True, True], [False, True, True]])
    logprobs = torch.tensor([[0.0, -1.0, -1.0], [0.0, -1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[0.0, -1.0, -1.3], [0.0, -0.5, -1.0]])
    out = grpo_loss(logprobs, old, mask, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), eps=0.0)
    a = math.sqrt(0.5)  # advantages +a and -a
    # Row 0 (A > 0): ratios 1 and e^0.3 -> 1.2 (clipped). Row 1 (A < 0): ratio e^-0.5 = 0.61 ->
    # 0.8 (clipped, the min picks it), then ratio 1.
    surrogate = a * 1 + a * 1.2 - a * 0.8 - a * 1
    assert out.loss.item() == pytest.approx(-surrogate / 4)
    assert out.tokens == 4
    assert out.clip_fraction == pytest.approx(0.5)
    torch.testing.assert_close(out.advantages, torch.tensor([a, -a]))
    out.loss.backward()
    assert logprobs.grad is not None
    expected = torch.tensor([[0.0, -a / 4, 0.0], [0.0, 0.0, a / 4]])
    torch.testing.assert_close(logprobs.grad, expected)


def test_grpo_loss_all_equal_rewards_gives_no_gradient() -> None:
    logprobs = LOGPROBS.clone().requires_grad_(True)
    out = grpo_loss(logprobs, OLD, MASK, torch.tensor([1.0, 1.0]), torch.tensor([0, 0]))
    out.loss.backward()
    assert out.tokens == 3
    assert logprobs.grad is not None
    assert (logprobs.grad == 0).all()


def test_clip_eps_high_widens_the_upper_bound() -> None:
    out = raft_loss(LOGPROBS, OLD, MASK, torch.tensor([True, False]), clip_eps_high=0.28)
    assert out.loss.item() == pytest.approx(-(1.0 + 1.28) / 2)
