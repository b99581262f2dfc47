"""Per-sample gradient norms: one batched backward vs one backward per sample.

For a batch of sampled responses on the tiny model, three methods run in the same process on the
same batch and must agree within 1e-4 relative:

* batched: `grad_norms` (one forward and one backward to the input embeddings for the batch);
* per-sample: `grad_norms_loop`, one unpadded forward and `autograd.grad` to the embedding
  matrix per sequence (the leanest loop: no other parameter gradient is computed);
* published: what the published code does per sample, `zero_grad`, `loss.backward()` (every
  parameter's gradient), then the norm of `embed_tokens.weight.grad`.

Two workloads: the warmed-up tiny model's own responses (what the CPU training loop computes each
step: short answers) and 32-token responses of the untrained model (more compute per sample).
The methods take turns, one run each per round (7 rounds after an untimed one); median wall
times, speed-ups (the median over rounds of each round's ratio) and the machine's load go to
benchmarks/results/grad_norms.json.

    python benchmarks/grad_norms.py [--batch 32] [--repeats 7] [--threads N] [--cache-dir DIR]
                                    [--device cuda --output benchmarks/results/grad_norms_gpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from trainer_client.trainer.generation import HFGenerator, SamplingConfig
from trainer_client.trainer.grad_norms import grad_norms, grad_norms_loop, length_groups
from trainer_client.trainer.losses import Batch, collate
from trainer_client.trainer.tasks import arithmetic_problems, encode_prompts
from trainer_client.trainer.tiny import build_tiny, default_cache_dir, load_tiny
from trainer_client.trainer.warmup import warm_up

RESULTS = Path(__file__).parent / "results" / "grad_norms.json"


def published_loop(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """The published method: a full backward per sample, then the embedding's `.grad` norm."""
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    norms = []
    for j in range(len(batch.input_ids)):
        real = batch.attention_mask[j].bool()
        ids = batch.input_ids[j, real][None]
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None]).squeeze(1)
        model.zero_grad(set_to_none=True)
        logprobs[batch.response_mask[j, real][1:]].sum().backward()  # type: ignore[no-untyped-call]
        assert weight.grad is not None
        norms.append(weight.grad.double().norm())
    model.zero_grad(set_to_none=True)
    return torch.stack(norms)


def timed_rounds(
    functions: dict[str, Callable[[], torch.Tensor]], repeats: int
) -> tuple[dict[str, torch.Tensor], dict[str, list[float]], dict[str, list[float]]]:
    """Each function's result, and its wall and process CPU times over `repeats` rounds that run
    every function once in turn (after one untimed round): the machine's slow and fast phases
    reach every method alike."""
    results = {name: function() for name, function in functions.items()}
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            results[name] = function()
            seconds[name].append(time.perf_counter() - started)
            cpu_seconds[name].append(time.process_time() - cpu_started)
    return results, seconds, cpu_seconds


def on_host(method: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`method` with its result copied to the CPU: the copy waits for a GPU to finish, so the
    timings include all the work."""
    return lambda: method().cpu()


def workload(
    name: str,
    model: PreTrainedModel,
    tokenizer: Any,
    size: int,
    repeats: int,
    device: torch.device,
) -> dict[str, Any]:
    """Sample one response per prompt (on the CPU), then time and compare the three methods on
    `device`."""
    prompts = encode_prompts(tokenizer, arithmetic_problems(size, seed=0))
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=32, seed=0)
    completions = HFGenerator(model, tokenizer).generate(prompts, [1] * size, sampling)
    responses = [group[0].token_ids for group in completions]
    batch = collate(prompts, responses, tokenizer.pad_token_id, device=device)
    model.to(device)
    lengths = [len(r) for r in responses]
    print(
        f"\n{name}: {size} responses of {min(lengths)}-{max(lengths)} tokens "
        f"(mean {statistics.mean(lengths):.1f}), padded batch {tuple(batch.input_ids.shape)}"
    )
    methods = {
        "batched": partial(grad_norms, model, batch),
        "per_sample": partial(grad_norms_loop, model, batch),
        "published": partial(published_loop, model, batch),
    }
    methods = {key: on_host(method) for key, method in methods.items()}
    values, seconds, cpu_seconds = timed_rounds(methods, repeats)
    real_lengths = batch.attention_mask.sum(dim=1).cpu()
    passes = [
        [len(rows), int(real_lengths[rows].max())] for rows in length_groups(real_lengths, size)
    ]
    print(f"  batched passes, grouped by length: {' + '.join(f'{r} x {w}' for r, w in passes)}")
    result: dict[str, Any] = {
        "response_tokens": lengths,
        "padded_shape": list(batch.input_ids.shape),
        "batched_pass_shapes": passes,  # grouped by length: less padding than padded_shape
        "mean_norm": float(values["batched"].mean()),
    }

    def paired(times: dict[str, list[float]], method: str) -> float:
        """Median over rounds of method / batched in the same round: immune to the machine
        drifting between rounds, which medians taken apart are not."""
        pairs = zip(times[method], times["batched"], strict=True)
        return statistics.median(slow / fast for slow, fast in pairs)

    for method in methods:
        relative = float(
            ((values[method] - values["per_sample"]).abs() / values["per_sample"]).max()
        )
        assert relative < 1e-4, f"{method} differs from per_sample by {relative:.2e}"
        median, cpu = statistics.median(seconds[method]), statistics.median(cpu_seconds[method])
        result[method] = {
            "seconds": seconds[method],
            "cpu_seconds": cpu_seconds[method],
            "median_seconds": median,
            "median_cpu_seconds": cpu,
            "speedup_of_batched": paired(seconds, method),
            "cpu_speedup_of_batched": paired(cpu_seconds, method),
            "max_relative_difference": relative,
        }
        print(
            f"  {method:10s} {median * 1e3:8.1f} ms wall {cpu * 1e3:8.1f} ms CPU   batched is "
            f"{paired(seconds, method):5.1f}x faster ({paired(cpu_seconds, method):5.1f}x in CPU "
            "time, median of the rounds' ratios)   "
            f"max relative difference {relative:.1e}"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="responses in the batch")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="tiny model cache")
    parser.add_argument("--device", default="cpu", help="torch device of the timed work")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cache = args.cache_dir or default_cache_dir()
    warm_dir, random_dir = warm_up(cache), build_tiny(cache)  # cached after the first run
    device = torch.device(args.device)
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load_before}")
    workloads = {
        "warm_model_responses": workload(
            "warmed-up model", *load_tiny(warm_dir), args.batch, args.repeats, device
        ),
        "long_responses": workload(
            "untrained model", *load_tiny(random_dir), args.batch, args.repeats, device
        ),
    }
    report = {
        "benchmark": "per-sample gradient norms w.r.t. the (tied) embedding matrix, fp32",
        "model": "tiny Llama (trainer_client.trainer.tiny), 1.58M parameters, tied embeddings",
        "batch": args.batch,
        "repeats": args.repeats,
        "target_speedup": 5.0,
        "workloads": workloads,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
