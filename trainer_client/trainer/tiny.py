"""A tiny Llama and its tokenizer, built locally in seconds (no downloads, never committed).

`build_tiny()` trains a byte-level BPE tokenizer on text generated from the tasks, builds a
randomly initialised 2-layer `LlamaForCausalLM` (~1.6M parameters with the defaults) and saves
both with `save_pretrained` into a folder named by a hash of the configuration, so a second build
with the same configuration returns at once. Same configuration and seed, same folder content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainer_client.trainer.tasks import LEVELS, MATH_INSTRUCTION, arithmetic_problems

FORMAT_VERSION = 1
"""Bump when the tokenizer corpus or the build changes, so old cache entries are not reused."""

PAD, BOS, END = "<|pad|>", "<|bos|>", "<|end|>"
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""One special token per role; `<|end|>` closes every turn and is the EOS token."""

_FILLER_TEXT = (
    "the answer is a number; we add and subtract the terms, then simplify the fraction and "
    "the square root. Let x be the value of the expression, so the sum of the digits, the "
    "product of two integers, the remainder when divided by seven, the probability that a "
    "point lies inside the circle of radius r, the area of the triangle and the angle in "
    "degrees follow. Find the smallest positive integer such that the equation holds for "
    "every real number y. How many ways are there to choose the terms of the sequence?"
)
"""Generic math prose so that MATH-style prompts get sensible merges too."""


@dataclass(frozen=True, slots=True)
class TinyConfig:
    """Everything the tiny model and tokenizer depend on; its hash names the cache folder."""

    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 512
    seed: int = 0

    def key(self) -> str:
        """A short hash of the fields, the build format and the transformers major version."""
        payload = {
            **dataclasses.asdict(self),
            "format": FORMAT_VERSION,
            "transformers": transformers.__version__.split(".")[0],
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest[:16]


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/gvm-budget` (or `~/.cache/gvm-budget`): where built models live."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gvm-budget"


def _corpus(seed: int) -> Iterator[str]:
    """Text covering what the tokenizer will see: chat turns of every task, answers, prose."""
    rng = random.Random(seed)
    for problem in arithmetic_problems(600, seed=seed, levels=LEVELS):
        yield f"{BOS}<|user|>{problem.question}{END}<|assistant|>{problem.answer}{END}"
    words = (_FILLER_TEXT + " " + MATH_INSTRUCTION).split()
    for _ in range(2000):
        yield " ".join(rng.choice(words) for _ in range(12))
    yield "\\frac{1}{2} \\sqrt{3} \\pi \\boxed{42} $x^2 + y^2$ \\left( 3, \\frac{\\pi}{2} \\right)"


def build_tokenizer(vocab_size: int = 512, *, seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with exactly `vocab_size` ids.

    Digits are split one per token (arithmetic is learnable digit by digit). If the corpus runs
    out of merges before `vocab_size`, reserved special tokens fill the rest, so the model's
    embedding matrix and the tokenizer always agree.
    """
    specials = [PAD, BOS, END, *(f"<|{role}|>" for role in ROLES)]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ValueError(f"vocab_size must be at least {len(alphabet) + len(specials)}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    missing = vocab_size - tokenizer.get_vocab_size()
    tokenizer.add_special_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tokenizer.get_vocab_size()} ids, not {vocab_size}")
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",  # decoder-only generation pads on the left
    )


def build_model(config: TinyConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A randomly initialised Llama; the seed is applied without touching the global RNG."""
    llama = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(llama)  # type: ignore[no-untyped-call]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def cached_build(cache_dir: Path, name: str, build: Callable[[Path], None]) -> Path:
    """`cache_dir/name`, calling `build(tmp)` first if it is missing.

    The build writes into a temporary sibling that is renamed into place, so a concurrent or
    interrupted build never leaves a half-written folder behind under the final name.
    """
    final = cache_dir / name
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache_dir))
    try:
        build(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # not a lost race with another builder: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_tiny(cache_dir: str | Path | None = None, config: TinyConfig | None = None) -> Path:
    """The folder of the tiny model and tokenizer for `config`, built on first use.

    Load it with `load_tiny(path)` or with `AutoModelForCausalLM` / `AutoTokenizer`.
    """
    config = config or TinyConfig()

    def build(folder: Path) -> None:
        tokenizer = build_tokenizer(config.vocab_size, seed=config.seed)
        model = build_model(config, tokenizer)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "tiny_config.json").write_text(json.dumps(dataclasses.asdict(config)))

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cached_build(root, f"tiny-{config.key()}", build)


def load_tiny(path: str | Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Model (fp32) and tokenizer from a folder written by `build_tiny` or `warm_up`."""
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    return model, tokenizer
