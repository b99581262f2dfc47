"""The generation protocol the trainer samples through, and its transformers backend.

A backend turns token-id prompts and per-prompt sample counts into completions. The trainer
only calls `generate`, `load_weights` (after every update, so the next samples come from the new
policy) and `close`. `HFGenerator` is the light backend (tests, CPU runs); the vLLM backend lives
in `vllm_backend.py` behind the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """How to sample. `temperature == 0` means greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int | None = None  # None: draw from the process's RNG


@dataclass(frozen=True, slots=True)
class Completion:
    """One sampled response."""

    token_ids: tuple[int, ...]  # response tokens only (no prompt), including EOS if generated
    text: str  # decoded response, special tokens skipped
    finished: bool  # True when it stopped on EOS, False when cut by max_new_tokens


class Generator(Protocol):
    """What the trainer needs from a generation backend."""

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        """`counts[i]` completions for prompt i, in order; `counts[i] == 0` gives `[]`."""
        ...

    def load_weights(self, model: torch.nn.Module) -> None:
        """After this returns, `generate` samples from `model`'s current parameters."""
        ...

    def close(self) -> None:
        """Release the backend's resources; the generator is unusable afterwards."""
        ...


def check_request(
    prompt_ids: Sequence[Sequence[int]], counts: Sequence[int], sampling: SamplingConfig
) -> None:
    """Reject a malformed request with a message that names the problem (shared by backends)."""
    if len(prompt_ids) != len(counts):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(counts)} counts")
    if any(count < 0 for count in counts):
        raise ValueError(f"counts must be >= 0, got {list(counts)}")
    if any(len(prompt) == 0 for prompt in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    if sampling.temperature < 0 or not 0 < sampling.top_p <= 1 or sampling.max_new_tokens < 1:
        raise ValueError(
            "need temperature >= 0, 0 < top_p <= 1 and max_new_tokens >= 1, got "
            f"{sampling.temperature}, {sampling.top_p}, {sampling.max_new_tokens}"
        )


class HFGenerator:
    """Samples with transformers' `generate` from the policy model itself.

    Because it holds the very module the trainer updates, `load_weights(policy)` has nothing to
    do; given another module it copies that module's parameters into its own. Prompts are
    repeated `counts[i]` times and generated `batch_size` rows at a time, left-padded. Sampling
    follows `SamplingConfig` only: the checkpoint's own generation defaults are set aside.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 256,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (set tokenizer.pad_token)")
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("neither the model's generation_config nor the tokenizer has an EOS")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id: int = tokenizer.pad_token_id
        self.eos_ids: frozenset[int] = frozenset(eos if isinstance(eos, list) else [eos])
        # transformers fills every unset field from the checkpoint's generation_config.json
        # (top_k, repetition_penalty, min_p...); RL must sample exactly `SamplingConfig`.
        self._neutral = GenerationConfig(  # type: ignore[no-untyped-call]
            bos_token_id=model.generation_config.bos_token_id,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
        )

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        check_request(prompt_ids, counts, sampling)
        rows = [i for i, count in enumerate(counts) for _ in range(count)]
        results: list[list[Completion]] = [[] for _ in counts]
        was_training, checkpoint_config = self.model.training, self.model.generation_config
        self.model.train(False)
        self.model.generation_config = self._neutral
        try:
            with torch.random.fork_rng(devices=[], enabled=sampling.seed is not None):
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    batch = self._generate_rows([prompt_ids[i] for i in chunk], sampling)
                    for i, completion in zip(chunk, batch, strict=True):
                        results[i].append(completion)
        finally:
            self.model.train(was_training)
            self.model.generation_config = checkpoint_config
        return results

    def _generate_rows(
        self, prompts: list[Sequence[int]], sampling: SamplingConfig
    ) -> list[Completion]:
        width = max(len(prompt) for prompt in prompts)
        device = self.model.device
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        if sampling.temperature == 0:
            config = GenerationConfig(  # type: ignore[no-untyped-call]
                max_new_tokens=sampling.max_new_tokens, do_sample=False
            )
        else:
            config = GenerationConfig(  # type: ignore[no-untyped-call]
                max_new_tokens=sampling.max_new_tokens,
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,  # unset would mean transformers' default top-k of 50
            )
        with torch.inference_mode():
            output = self.model.generate(  # type: ignore[operator]
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
            )
        completions = []
        for new_tokens in output[:, width:].tolist():
            end = next((k for k, t in enumerate(new_tokens) if t in self.eos_ids), None)
            tokens = tuple(new_tokens if end is None else new_tokens[: end + 1])
            text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
            completions.append(Completion(tokens, str(text), finished=end is not None))
        return completions

    def load_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do for the policy module itself; another module's parameters are copied."""
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    def close(self) -> None:
        """Nothing is held beyond the model, which belongs to the caller."""
