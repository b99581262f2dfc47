"""vLLM generation backend: one engine for the whole run, new weights pushed into it every step.

`VLLMGenerator.generate` sends the whole batch as ONE `LLM.generate` call with one
`SamplingParams(n=counts[i])` per prompt, so prompts with different sample counts share the
engine's continuous batching. Nothing here imports vllm until an engine is created: the module
imports cleanly where vllm is not installed.

Weight updates never rebuild the engine (30 s and more). `load_weights(model)`:

1. validates the payload before anything reaches the engine: exactly the tensor names of the
   checkpoint the engine was started from (so fused groups, q/k/v and gate/up, are complete),
   the same shapes, floating point, all finite. A reload that fails half-way leaves vLLM's layers
   on the meta device and the next `generate` kills the engine, so nothing partial is ever sent;
2. runs vLLM's in-place `reload_weights` on each worker with the HF parameter names, through the
   `WeightSyncExtension` mixed into vLLM's worker class;
3. rebuilds a tied `lm_head` from the new embeddings (vLLM skips it on reload, and on CPU it keeps
   a separately packed copy of the old matrix: logprobs would be off by up to tens of nats);
4. resets the prefix cache, whose KV blocks were computed with the old weights.

How the tensors reach the workers (`weight_sync`):

- `"direct"` (the default with one GPU or on CPU): the engine runs inside the trainer's process
  (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) and the worker receives the trainer's tensors by
  reference, cast to the engine's dtype layer by layer. Cost: benchmarks/vllm_weight_update.py
  (README, section vLLM).
- `"files"` (needed for tensor parallelism, where workers are other processes and tensors cannot
  cross vLLM's RPC): the weights are written as one safetensors file (in /dev/shm when it
  exists) and every worker loads it from there.

NCCL / CUDA-IPC transfer for multi-GPU trainers (vLLM's weight-transfer engines) is future work.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from transformers import AutoTokenizer

from trainer_client.trainer.checkpoints import checkpoint_tensors
from trainer_client.trainer.generation import Completion, SamplingConfig, check_request

if TYPE_CHECKING:
    from vllm import LLM

logger = logging.getLogger(__name__)

Dtype = Literal["bfloat16", "float16", "float32"]
WeightSync = Literal["direct", "files"]

_DEFAULT_CPU_KV_CACHE_GIB = 1.0
"""KV cache on CPU when neither `kv_cache_gib` nor VLLM_CPU_KVCACHE_SPACE says otherwise."""


class WeightUpdateError(RuntimeError):
    """vLLM failed while loading validated weights: the engine is unusable, make a new one."""


class VLLMGenerator:
    """The `Generator` protocol on a vLLM engine created from a local HF model folder.

    `model_dir` must be a folder with safetensors weights (`checkpoints.resolve_model` turns a hub
    id, a GGUF file or "smollm2" into one); the trainer's model must have the same architecture
    and parameter names, since its weights are pushed into the engine by name.

    Knobs (None picks the platform's sensible value):
    - `dtype`: engine dtype; bf16 by default, "float32" for exact comparisons with transformers.
    - `gpu_memory_utilization`: fraction of GPU memory vLLM may take (weights + KV cache); leave
      room for the trainer's model, gradients and optimizer when they share the GPU.
    - `tensor_parallel_size`: GPUs per engine; > 1 requires `weight_sync="files"`.
    - `max_model_len`: prompt + response tokens; defaults to the model's context length.
    - `enforce_eager`: None = eager on CPU (compiling costs ~80 s there and gains nothing), CUDA
      graphs on GPU.
    - `kv_cache_gib`: KV cache size; on GPU None sizes it from `gpu_memory_utilization`, on CPU
      None means VLLM_CPU_KVCACHE_SPACE or 1 GiB.
    - `seed`: the engine's seed for requests without one.
    - `engine_kwargs`: anything else `vllm.LLM` accepts (e.g. `max_num_seqs`, `quantization`).
    """

    _in_process: ClassVar[weakref.WeakSet[VLLMGenerator]] = weakref.WeakSet()
    """Open generators whose engine runs in this process (at most one, see `__init__`)."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        dtype: Dtype = "bfloat16",
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        kv_cache_gib: float | None = None,
        seed: int = 0,
        weight_sync: WeightSync | None = None,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.weight_sync: WeightSync = weight_sync or (
            "direct" if tensor_parallel_size == 1 else "files"
        )
        if self.weight_sync == "direct" and tensor_parallel_size != 1:
            raise ValueError(
                "weight_sync='direct' needs tensor_parallel_size=1 (tensor-parallel workers are "
                "separate processes); use weight_sync='files'"
            )
        if self.weight_sync == "direct" and VLLMGenerator._in_process:
            # vLLM's in-process engines share this process's torch.distributed state, and
            # shutting one down tears it down under the other.
            raise RuntimeError(
                "this process already runs an in-process vLLM engine; close() that "
                "VLLMGenerator first, or use weight_sync='files' (engine in other processes)"
            )
        # Reference for validating updates, read from the safetensors headers (no weights loaded).
        self._expected = checkpoint_tensors(self.model_dir)
        self._broken = False

        import vllm
        from vllm.platforms import current_platform

        kwargs = engine_arguments(
            self.model_dir,
            on_cpu=current_platform.is_cpu(),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            kv_cache_gib=kv_cache_gib,
            seed=seed,
            engine_kwargs=engine_kwargs,
        )
        started = time.perf_counter()
        if self.weight_sync == "direct":
            with _trainer_process_state(), _env(VLLM_ENABLE_V1_MULTIPROCESSING="0"):
                self._llm: LLM | None = vllm.LLM(**kwargs)
        else:
            self._llm = vllm.LLM(**kwargs)
        self.start_seconds = time.perf_counter() - started
        if self.weight_sync == "direct":
            VLLMGenerator._in_process.add(self)
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model_config = self._llm.llm_engine.model_config
        self.dtype: torch.dtype = getattr(torch, str(model_config.dtype).removeprefix("torch."))
        self.tie_word_embeddings = bool(
            getattr(model_config.hf_config, "tie_word_embeddings", False)
        )
        logger.info(
            "vLLM engine for %s ready in %.1f s (weight sync: %s)",
            self.model_dir,
            self.start_seconds,
            self.weight_sync,
        )

    @property
    def llm(self) -> LLM:
        """The engine; raises once the generator is closed or a weight update broke it."""
        if self._llm is None:
            raise RuntimeError("this VLLMGenerator is closed")
        if self._broken:
            raise RuntimeError(
                "a failed weight update left this engine unusable; create a new VLLMGenerator"
            )
        return self._llm

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        """`counts[i]` completions of prompt i, in order, from one `LLM.generate` call.

        With `sampling.seed` set, prompt i gets its own seed derived from it (so identical prompts
        in a batch still get different samples) and the whole call is reproducible.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        check_request(prompt_ids, counts, sampling)
        active = [i for i, count in enumerate(counts) if count > 0]
        seeds: list[int | None] = [None] * len(counts)
        if sampling.seed is not None:
            seeds = [
                int(s) for s in np.random.SeedSequence(sampling.seed).generate_state(len(counts))
            ]
        results: list[list[Completion]] = [[] for _ in counts]
        if not active:
            return results
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(prompt_ids[i])) for i in active],
            [
                SamplingParams(
                    n=counts[i],
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_new_tokens,
                    seed=seeds[i],
                    # Decoded below in one batch, exactly as the transformers backend decodes.
                    detokenize=False,
                )
                for i in active
            ],
            use_tqdm=False,
        )
        samples = [
            (i, out) for i, output in zip(active, outputs, strict=True) for out in output.outputs
        ]
        texts = self._tokenizer.batch_decode(
            [list(out.token_ids) for _, out in samples], skip_special_tokens=True
        )
        for (i, out), text in zip(samples, texts, strict=True):
            results[i].append(Completion(tuple(out.token_ids), text, out.finish_reason == "stop"))
        return results

    def load_weights(self, model: torch.nn.Module) -> None:
        """Push `model`'s current parameters into the running engine (see the module docstring).

        Raises `ValueError` for a payload that does not match the engine's checkpoint (the engine
        is untouched and keeps its old weights) and `WeightUpdateError` if the engine itself fails.
        """
        llm = self.llm
        started = time.perf_counter()
        weights = self._validated_weights(model)
        if self.weight_sync == "direct":
            # Cast lazily, to the engine's dtype: vLLM holds a layer's tensors only until the
            # layer is complete, so at most about one layer of copies exists at a time.
            cast = ((name, tensor.to(self.dtype)) for name, tensor in weights)
            self._reload(llm, "gvm_load_weights", cast)
        else:
            with _shared_memory_dir() as folder:
                path = folder / "weights.safetensors"
                _save_safetensors(weights, path, self.dtype)
                self._reload(llm, "gvm_load_weights_from_file", str(path))
        llm.reset_prefix_cache()
        logger.debug("pushed %d tensors in %.3f s", len(weights), time.perf_counter() - started)

    def _reload(self, llm: LLM, method: str, payload: object) -> None:
        """Run a `WeightSyncExtension` method on every worker; a failure breaks the engine."""
        try:
            llm.collective_rpc(method, args=(payload,))
        except Exception as exc:
            self._broken = True  # some layers may hold new weights, some none at all
            raise WeightUpdateError(
                f"vLLM failed while loading new weights ({exc}); this engine is unusable, "
                "create a new VLLMGenerator"
            ) from exc

    def _validated_weights(self, model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs for every checkpoint tensor, checked against the checkpoint."""
        params = {name: p.detach() for name, p in model.named_parameters()}
        if self.tie_word_embeddings:  # vLLM reads the tied head from the embeddings
            params.pop("lm_head.weight", None)
        expected = {
            name: shape
            for name, shape in self._expected.items()
            if not (self.tie_word_embeddings and name == "lm_head.weight")
        }
        missing = sorted(expected.keys() - params.keys())
        unexpected = sorted(params.keys() - expected.keys())
        if missing or unexpected:
            raise ValueError(
                f"model parameters do not match the engine's checkpoint {self.model_dir}: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        for name, shape in expected.items():
            tensor = params[name]
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)}, engine expects {shape}")
            if not tensor.is_floating_point():
                raise ValueError(f"{name}: dtype {tensor.dtype} is not floating point")
        # A NaN or inf anywhere makes its tensor's sum non-finite: one reduction per tensor and a
        # single device sync, ~9x faster than isfinite().all() on CPU.
        sums = torch.stack([params[name].sum(dtype=torch.float32) for name in expected])
        if not bool(torch.isfinite(sums).all()):
            bad = [
                name
                for name, total in zip(expected, sums.tolist(), strict=True)
                if not math.isfinite(total)
            ]
            raise ValueError(
                f"non-finite values (NaN, inf or overflow) in {bad[:5]}; engine not updated"
            )
        return [(name, params[name]) for name in expected]

    def close(self) -> None:
        """Shut the engine down and free its memory; safe to call twice."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        # Also tears down the torch.distributed state and vLLM's environment cache that an
        # in-process engine set up in this process.
        llm.llm_engine.engine_core.shutdown()
        VLLMGenerator._in_process.discard(self)

    def __enter__(self) -> VLLMGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def engine_arguments(
    model_dir: Path,
    *,
    on_cpu: bool,
    dtype: Dtype,
    gpu_memory_utilization: float,
    tensor_parallel_size: int,
    max_model_len: int | None,
    enforce_eager: bool | None,
    kv_cache_gib: float | None,
    seed: int,
    engine_kwargs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM` for `VLLMGenerator`'s knobs on this platform.

    On CPU `gpu_memory_utilization` means nothing (the KV cache is sized in GiB instead) and
    eager mode is the default; `engine_kwargs` override everything.
    """
    if kv_cache_gib is None and on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        kv_cache_gib = _DEFAULT_CPU_KV_CACHE_GIB
    return {
        "model": str(model_dir),
        "dtype": dtype,
        "seed": seed,
        "tensor_parallel_size": tensor_parallel_size,
        "max_model_len": max_model_len,
        "enforce_eager": on_cpu if enforce_eager is None else enforce_eager,
        "worker_extension_cls": f"{__name__}.{WeightSyncExtension.__qualname__}",
        **({} if on_cpu else {"gpu_memory_utilization": gpu_memory_utilization}),
        **({} if kv_cache_gib is None else {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)}),
        **(engine_kwargs or {}),
    }


class WeightSyncExtension:
    """Methods mixed into vLLM's worker class (`worker_extension_cls`), called by `collective_rpc`.

    `self` is the vLLM worker: it has `reload_weights`, `model_runner` and `model_config`.
    """

    def gvm_load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """In-place reload with HF names, then refresh a tied lm_head from the new embeddings."""
        worker: Any = self
        with _quiet_expected_reload_warnings():
            worker.reload_weights(weights_iterator=weights)
        lm_head: Any = getattr(worker.model_runner.get_model(), "lm_head", None)
        tied = getattr(worker.model_config.hf_config, "tie_word_embeddings", False)
        if tied and hasattr(lm_head, "quant_method"):
            # No-op on GPU (the head shares the embedding tensor); on CPU it repacks the matrix.
            lm_head.quant_method.process_weights_after_loading(lm_head)

    def gvm_load_weights_from_file(self, path: str) -> None:
        """The same from a safetensors file, for workers in other processes."""
        from safetensors import safe_open

        with safe_open(path, framework="pt") as file:
            self.gvm_load_weights((name, file.get_tensor(name)) for name in file.keys())  # noqa: SIM118


@contextlib.contextmanager
def _quiet_expected_reload_warnings() -> Iterator[None]:
    """Drop vLLM's per-reload warnings for layers that never have checkpoint weights.

    Rotary embeddings hold only computed buffers and a tied lm_head is read from the embeddings;
    vLLM reports both as "Failed to load weights" on every reload. Other layers still warn.
    """

    def keep(record: logging.LogRecord) -> bool:
        return not (
            record.msg == "%s: Failed to load weights"
            and isinstance(record.args, tuple)
            and str(record.args[0]).endswith(("RotaryEmbedding", "ParallelLMHead"))
        )

    vllm_logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    vllm_logger.addFilter(keep)
    try:
        yield
    finally:
        vllm_logger.removeFilter(keep)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _trainer_process_state() -> Iterator[None]:
    """Undo what starting an in-process engine does to process-wide state the trainer owns.

    vLLM seeds Python's, numpy's and torch's global RNGs, lowers torch's thread count for serving
    and, on CPU, replaces `torch.set_num_threads` with a function that refuses to change it.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    initialized = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    cuda = list(range(torch.cuda.device_count())) if initialized else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)


@contextlib.contextmanager
def _shared_memory_dir() -> Iterator[Path]:
    """A temporary folder in RAM (/dev/shm) when the machine has one, removed afterwards."""
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(
        prefix="gvm-weights-", dir=shm if shm.is_dir() else None
    ) as folder:
        yield Path(folder)


def _save_safetensors(
    weights: Sequence[tuple[str, torch.Tensor]], path: Path, dtype: torch.dtype
) -> None:
    from safetensors.torch import save_file

    save_file({name: t.to(device="cpu", dtype=dtype).contiguous() for name, t in weights}, path)
