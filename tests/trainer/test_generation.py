"""The generation protocol's data types and the transformers backend (`HFGenerator`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from trainer_client.trainer.generation import Completion, Generator, HFGenerator, SamplingConfig
from trainer_client.trainer.tasks import arithmetic_problems, encode_prompts
from trainer_client.trainer.tiny import build_tiny, load_tiny

SAMPLE = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=7)
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    # The build is cached by config hash under one shared folder: built once per session.
    folder: Path = build_tiny(tmp_path_factory.getbasetemp() / "gvm-tiny")
    return load_tiny(folder)


@pytest.fixture(scope="module")
def prompts(tiny: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> list[list[int]]:
    ids = encode_prompts(tiny[1], arithmetic_problems(4, seed=0))
    assert len({len(p) for p in ids}) > 1  # different lengths: left padding is exercised
    return ids


@pytest.fixture
def generator(tiny: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> HFGenerator:
    return HFGenerator(*tiny, batch_size=5)


def test_counts_order_and_completion_fields(
    generator: Generator, prompts: list[list[int]], tiny: tuple[LlamaForCausalLM, object]
) -> None:
    out = generator.generate(prompts, [3, 0, 1, 4], SAMPLE)  # 8 rows in batches of 5
    assert [len(group) for group in out] == [3, 0, 1, 4]
    tokenizer = tiny[1]
    for completion in (c for group in out for c in group):
        assert isinstance(completion, Completion)
        assert 1 <= len(completion.token_ids) <= SAMPLE.max_new_tokens
        assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)  # type: ignore[attr-defined]
        ends_with_eos = completion.token_ids[-1] == tokenizer.eos_token_id  # type: ignore[attr-defined]
        assert completion.finished == ends_with_eos
        if not completion.finished:
            assert len(completion.token_ids) == SAMPLE.max_new_tokens
    assert generator.generate([], [], SAMPLE) == []


def test_seed_makes_sampling_reproducible(generator: HFGenerator, prompts: list[list[int]]) -> None:
    first = generator.generate(prompts, [4] * 4, SAMPLE)
    assert first == generator.generate(prompts, [4] * 4, SAMPLE)
    other = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=8)
    assert first != generator.generate(prompts, [4] * 4, other)
    # Samples of one prompt differ from each other (a random model at temperature 1).
    assert len({c.token_ids for c in first[0]}) > 1


def test_greedy_batched_equals_one_prompt_at_a_time(
    generator: HFGenerator, prompts: list[list[int]]
) -> None:
    batched = generator.generate(prompts, [2] * 4, GREEDY)
    for prompt, group in zip(prompts, batched, strict=True):
        (alone,) = generator.generate([prompt], [1], GREEDY)
        assert group == [alone[0], alone[0]]


def test_stops_on_eos_and_keeps_it(
    tiny: tuple[LlamaForCausalLM, PreTrainedTokenizerFast], prompts: list[list[int]]
) -> None:
    model, tokenizer = tiny
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1]
    first = int(logits.argmax())  # declare the greedy first token an EOS: generation stops there
    generator = HFGenerator(model, tokenizer)
    generator.eos_ids = frozenset({tokenizer.eos_token_id, first})
    (group,) = generator.generate(prompts[:1], [1], GREEDY)
    assert group == [
        Completion((first,), tokenizer.decode([first], skip_special_tokens=True), True)
    ]


def test_load_weights_copies_another_module(
    tiny: tuple[LlamaForCausalLM, PreTrainedTokenizerFast], prompts: list[list[int]]
) -> None:
    model, tokenizer = tiny
    sampler = LlamaForCausalLM(model.config)  # a separate, differently initialised module
    generator = HFGenerator(sampler, tokenizer)
    reference = HFGenerator(model, tokenizer).generate(prompts, [1] * 4, GREEDY)
    generator.load_weights(model)
    assert generator.generate(prompts, [1] * 4, GREEDY) == reference
    generator.load_weights(sampler)  # its own module: a no-op
    generator.close()


def test_ignores_the_checkpoints_generation_defaults(
    tiny: tuple[LlamaForCausalLM, PreTrainedTokenizerFast], prompts: list[list[int]]
) -> None:
    model, tokenizer = tiny
    chatty = LlamaForCausalLM(model.config)
    chatty.load_state_dict(model.state_dict())
    chatty.generation_config.top_k = 1  # if inherited, every sample would be the greedy one
    chatty.generation_config.repetition_penalty = 5.0
    sampled = HFGenerator(chatty, tokenizer).generate(prompts[:1], [8], SAMPLE)
    assert sampled == HFGenerator(model, tokenizer).generate(prompts[:1], [8], SAMPLE)
    assert len({c.token_ids for c in sampled[0]}) > 1
    assert chatty.generation_config.top_k == 1  # restored afterwards


def test_restores_training_mode(generator: HFGenerator, prompts: list[list[int]]) -> None:
    generator.model.train()
    generator.generate(prompts[:1], [1], GREEDY)
    assert generator.model.training


@pytest.mark.parametrize(
    ("prompt_ids", "counts", "sampling", "message"),
    [
        ([[1, 2]], [1, 1], SAMPLE, "1 prompts but 2 counts"),
        ([[1, 2]], [-1], SAMPLE, "counts must be >= 0"),
        ([[]], [1], SAMPLE, "at least one token"),
        ([[1]], [1], SamplingConfig(top_p=0.0), "0 < top_p <= 1"),
        ([[1]], [1], SamplingConfig(max_new_tokens=0), "max_new_tokens >= 1"),
    ],
)
def test_rejects_malformed_requests(
    generator: HFGenerator,
    prompt_ids: list[list[int]],
    counts: list[int],
    sampling: SamplingConfig,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        generator.generate(prompt_ids, counts, sampling)
