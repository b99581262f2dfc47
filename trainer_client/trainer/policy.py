"""The policy: where it starts from, its fp32 weights and tokenizer, bf16 autocast, its sampler."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from trainer_client.trainer.checkpoints import resolve_model
from trainer_client.trainer.config import TrainConfig
from trainer_client.trainer.generation import Generator, HFGenerator
from trainer_client.trainer.warmup import warm_up


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_folder(config: TrainConfig) -> Path:
    """The model to start from: ``--model``, or the tiny model after its supervised warm-up."""
    cache = config.cache_dir or None
    if config.model:
        return resolve_model(config.model, cache_dir=cache)
    print("model: the tiny model after its supervised warm-up (built on first use, then cached)")
    return warm_up(cache, progress=True)


def make_generator(
    config: TrainConfig, model: PreTrainedModel, tokenizer: Any, folder: Path
) -> Generator:
    if config.backend == "vllm":
        from trainer_client.trainer.vllm_backend import VLLMGenerator  # vllm only when chosen

        generator: Generator = VLLMGenerator(
            folder,
            dtype=config.vllm_dtype,
            gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size,
            max_model_len=config.max_model_len,
            seed=config.seed,
        )
        generator.load_weights(model)  # a resumed policy may differ from the folder's weights
        return generator
    return HFGenerator(model, tokenizer)


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """The trainer's forward passes (sampling with transformers, gradient norms, the update) in
    bf16 where `precision` says so: matrix products at the GPU's bf16 rate and half the
    activation memory, while weights, gradients, AdamW state and the log-softmax of the loss
    stay fp32 (torch's autocast lists). vLLM samples in its own `vllm_dtype` either way."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def load_policy(folder: str | Path, config: TrainConfig, device: torch.device) -> Any:
    """The policy's fp32 master weights on `device` (whatever `precision`), with gradient
    checkpointing when configured: the update then keeps each layer's input only and recomputes
    the rest in backward (about a third more compute, activations no longer grow with depth)."""
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.to(device)
    # transformers 5.25 renamed it: the old name is a deprecated alias (a FutureWarning) there.
    if config.gradient_checkpointing and hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_tokenizer(folder: str | Path) -> Any:
    """The model's tokenizer, with a pad token: batches are padded (and the padding masked out),
    and not every tokenizer names one (Llama's; SmolLM2's GGUF as transformers 5.17 reads it)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        print(f"the tokenizer has no pad token: padding with its eos token {tokenizer.eos_token}")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
