"""The tiny model and tokenizer: exact vocabulary, size, caching and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer_client.trainer.tiny import (
    TinyConfig,
    build_tiny,
    build_tokenizer,
    load_tiny,
)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The build is cached by config hash under one shared folder: built once per session.
    return build_tiny(tmp_path_factory.getbasetemp() / "gvm-tiny")


def test_model_matches_the_recipe(tiny_dir: Path) -> None:
    model, tokenizer = load_tiny(tiny_dir)
    config = model.config
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (512, 256, 688)
    assert (config.num_hidden_layers, config.num_attention_heads) == (2, 4)
    assert config.num_key_value_heads == 2
    assert config.tie_word_embeddings
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    parameters = sum(p.numel() for p in model.parameters())
    assert 1.5e6 < parameters < 1.7e6
    assert len(tokenizer) == config.vocab_size
    assert (config.pad_token_id, config.bos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
    )
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == config.eos_token_id
    assert tokenizer.eos_token == "<|end|>"


def test_tokenizer_round_trips_task_text_and_math(tiny_dir: Path) -> None:
    _, tokenizer = load_tiny(tiny_dir)
    for text in ["What is 812+556-372?", "Let $x = \\frac{1}{2}$ and \\boxed{3\\sqrt{13}}."]:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    ) == ("<|bos|><|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>")


def test_vocab_is_filled_to_the_exact_size_with_reserved_tokens() -> None:
    tokenizer = build_tokenizer(vocab_size=2048)  # more ids than the corpus has merges for
    assert len(tokenizer) == 2048
    assert "<|reserved_0|>" in tokenizer.get_vocab()
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        build_tokenizer(vocab_size=100)


def test_second_build_is_a_cache_hit(tiny_dir: Path) -> None:
    weights = tiny_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny(tiny_dir.parent) == tiny_dir
    assert weights.stat().st_mtime_ns == before
    assert json.loads((tiny_dir / "tiny_config.json").read_text())["seed"] == 0
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_build_is_deterministic_and_keyed_by_config(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny(tmp_path)
    assert again.name == tiny_dir.name
    assert (again / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()
    first, second = (
        load_file(tiny_dir / "model.safetensors"),
        load_file(again / "model.safetensors"),
    )
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)

    other = build_tiny(tmp_path, TinyConfig(seed=1))
    assert other.name != again.name
    reseeded = load_file(other / "model.safetensors")
    assert not torch.equal(
        reseeded["model.embed_tokens.weight"], first["model.embed_tokens.weight"]
    )
    assert TinyConfig(tie_word_embeddings=False).key() != TinyConfig().key()


def test_build_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(tmp_path, TinyConfig(seed=5))
    torch.testing.assert_close(torch.rand(3), expected)
