"""The training loop end to end: the warmed-up tiny model, the live service, real Redis.

The model is the one ``gvm-train`` and ``gvm-demo`` use by default: built and warmed up once into
the user cache (``warm_up()``, keyed by a hash of its configuration), then reused.
"""

import copy
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from support.http_faults import HttpFaultProxy
from transformers import AutoModelForCausalLM

from trainer_client import BudgetClient
from trainer_client.trainer.config import TrainConfig
from trainer_client.trainer.generation import Completion
from trainer_client.trainer.policy import load_policy, load_tokenizer
from trainer_client.trainer.prompts import batch_indices, load_problems
from trainer_client.trainer.samples import Samples, to_batch
from trainer_client.trainer.tiny import build_tiny, load_tiny
from trainer_client.trainer.train import METRICS_FILE, main, train
from trainer_client.trainer.trainer_state import CHECKPOINT
from trainer_client.trainer.update import minibatches, update
from trainer_client.trainer.warmup import warm_up


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return warm_up()


def test_a_tokenizer_without_pad_token_pads_with_eos(tiny_dir: Path, tmp_path: Path) -> None:
    own = load_tokenizer(tiny_dir)  # names its own pad token, which is kept
    assert own.pad_token is not None
    assert own.pad_token_id != own.eos_token_id
    _, tokenizer = load_tiny(tiny_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()).get("pad_token") is None

    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token is not None
    assert loaded.pad_token_id == loaded.eos_token_id


def small(model_dir: Path, service_url: str, out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "service_url": service_url,
        "model": str(model_dir),
        "steps": 3,
        "batch_size": 4,
        "budget": 24,
        "pilot_samples": 2,
        "train_prompts": 8,  # every prompt comes back every other step
        "eval_prompts": 8,
        "eval_every": 2,
        "max_new_tokens": 8,
        "out_dir": str(out),
        "progress": False,
        "log_every": 0,
        "lr": 1e-4,
    }
    return TrainConfig(**(values | overrides))


def read_metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


@pytest.mark.parametrize("mode", ["online", "paper"])
@pytest.mark.parametrize("algo", ["raft", "grpo"])
def test_both_algos_and_modes_feed_the_service(
    model_dir: Path, service_url: str, run_id: str, tmp_path: Path, algo: str, mode: str
) -> None:
    config = small(model_dir, service_url, tmp_path, run_id=run_id, algo=algo, mode=mode)
    summary = train(config)
    records = read_metrics(tmp_path)

    assert [r["step"] for r in records] == [0, 1, 2]
    pilot = config.pilot_samples * config.batch_size if mode == "paper" else 0
    for r in records:
        assert r["pilot"] == pilot
        assert r["generated"] == pilot + r["allocated"] == pilot + sum(r["alloc_counts"])
        assert r["allocated"] <= config.budget - pilot
        assert 0 <= r["accepted"] <= r["generated"]
        assert not r["fallback"]
        if algo == "grpo":
            assert r["alloc_min"] >= 2  # the run was created with min_samples 2
    assert summary["cumulative_generated"] == sum(r["generated"] for r in records)
    assert summary["accepted"] == sum(r["accepted"] for r in records)
    assert records[-1]["eval_accuracy"] is not None
    assert summary["spooled_pending"] == 0
    assert summary["device"] == "cpu"  # device "auto" on a machine without a GPU

    with BudgetClient(service_url) as client:
        run = client.get_run(run_id)
        assert run.config.strategy == "gvm"
        assert run.config.algo == algo
        stored = client.summary(run_id)
        # Every generated sample was reported (the pilot too), once.
        assert stored.samples == summary["cumulative_generated"]
        assert stored.accepted == summary["accepted"]
        assert stored.prompts == config.train_prompts
        assert stored.last_step == 2
        assert stored.grad_norm_count == summary["accepted"]  # one norm per accepted sample
        latest = client.latest_allocation(run_id)
        assert latest.step == 2
        assert latest.counts == records[-1]["alloc_counts"]


def test_allocations_follow_the_statistics(
    model_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    # The same six prompts every step (one per difficulty level), 8 samples each on average.
    config = small(
        model_dir, service_url, tmp_path, run_id=run_id, steps=4, batch_size=6,
        train_prompts=6, budget=48,
    )  # fmt: skip
    train(config)
    records = read_metrics(tmp_path)
    assert records[0]["alloc_std"] == 0  # nothing known yet: the prior is the same everywhere
    assert sum(r["accepted"] for r in records) > 0
    assert any(r["alloc_std"] > 0 for r in records[1:])  # the statistics moved the counts
    with BudgetClient(service_url) as client:
        latest = client.latest_allocation(run_id)
    assert len({item.p_hat for item in latest.items}) > 1
    assert latest.predicted_variance is not None
    assert latest.uniform_variance is not None
    assert latest.predicted_variance < latest.uniform_variance


def test_rejected_samples_norms_reach_the_service_when_asked_for(
    model_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    config = small(
        model_dir, service_url, tmp_path, run_id=run_id, steps=1, report_rejected_norms=True,
        allocation="uniform", train_prompts=4,
    )  # fmt: skip
    train(config)
    with BudgetClient(service_url) as client:
        summary = client.summary(run_id)
        stats = [client.prompt_stats(run_id, p.prompt_id) for p in load_problems(config)[0]]
    assert summary.rejected_grad_norm_count == summary.samples - summary.accepted > 0
    for prompt in stats:  # one step, no decay: a norm for every sample, each kind apart
        assert prompt.grad_norm_count == prompt.accepted
        assert prompt.rejected_grad_norm_count == prompt.samples - prompt.accepted
    assert all(p.rejected_grad_norm_sum > 0 for p in stats if p.samples > p.accepted)


def test_uniform_allocation_with_a_kl_anchor(
    model_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    config = small(
        model_dir, service_url, tmp_path, run_id=run_id, allocation="uniform", algo="grpo",
        kl_coef=0.05, steps=2,
    )  # fmt: skip
    train(config)
    records = read_metrics(tmp_path)
    assert all(r["alloc_counts"] == [6, 6, 6, 6] for r in records)
    assert all(r["kl"] >= 0 for r in records)  # GRPO trains on every sample: the KL is logged


def test_bf16_autocast_trains_and_keeps_fp32_weights(
    model_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    config = small(model_dir, service_url, tmp_path, run_id=run_id, precision="bf16", steps=2)
    summary = train(config)
    records = read_metrics(tmp_path)
    generated = sum(r["generated"] for r in records)
    assert summary["cumulative_generated"] == generated == config.steps * config.budget
    assert records[-1]["eval_accuracy"] is not None
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / CHECKPOINT)
    assert {p.dtype for p in saved.parameters()} == {torch.float32}
    start = AutoModelForCausalLM.from_pretrained(model_dir)
    assert any(
        not torch.equal(a, b) for a, b in zip(saved.parameters(), start.parameters(), strict=True)
    )  # the update ran


def test_training_goes_on_through_an_outage(
    model_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    proxy = HttpFaultProxy(service_url)
    proxy.start()
    # DELETE, PUT, step 0 (allocate, report) pass; all four attempts of step 1's allocate and of
    # its report fail; step 2 finds the service back and replays step 1's report first.
    proxy.faults.extend(["pass"] * 4 + ["drop_before"] * 8)
    try:
        summary = train(small(model_dir, proxy.url, tmp_path, run_id=run_id))
    finally:
        proxy.stop()
    records = read_metrics(tmp_path)
    assert [r["fallback"] for r in records] == [False, True, False]
    assert records[1]["alloc_counts"] == [6, 6, 6, 6]  # the client's even split
    assert records[1]["spooled"] == 1
    assert records[2]["spooled"] == 0
    assert summary["spooled_pending"] == 0
    with BudgetClient(service_url) as client:  # nothing lost, nothing counted twice
        assert client.summary(run_id).samples == summary["cumulative_generated"]


def test_resume_continues_where_the_checkpoint_left_off(
    model_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    train(small(model_dir, service_url, straight, run_id=f"{run_id}-a", steps=4))

    interrupted = tmp_path / "interrupted"
    resumed_id = f"{run_id}-b"
    train(small(model_dir, service_url, interrupted, run_id=resumed_id, steps=2))
    assert (interrupted / CHECKPOINT / "trainer_state.pt").is_file()
    # The CLI way: the checkpoint's config, then the flags of this invocation.
    assert main(["--out-dir", str(interrupted), "--resume", "--steps", "4"]) == 0

    records = read_metrics(interrupted)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    keys = ("generated", "accepted", "alloc_counts", "cumulative_generated")
    # Same prompts, same seeded samples, same optimizer state: the same run as without the stop.
    assert [{k: r[k] for k in keys} for r in records] == [
        {k: r[k] for k in keys} for r in read_metrics(straight)
    ]
    with BudgetClient(service_url) as client:
        assert client.summary(resumed_id).samples == records[-1]["cumulative_generated"]


def test_the_service_must_be_reachable_at_start(model_dir: Path, tmp_path: Path) -> None:
    config = small(model_dir, "http://127.0.0.1:9", tmp_path, steps=1)
    with pytest.raises(SystemExit, match="cannot reach the budget service"):
        train(config)


def test_batches_are_distinct_and_cover_the_pool() -> None:
    config = TrainConfig(batch_size=3, train_prompts=10)
    seen: list[int] = []
    for step in range(3):  # one epoch: three whole batches, the tenth prompt waits
        batch = batch_indices(step, config, 10)
        assert len(set(batch)) == 3
        seen += batch
    assert len(set(seen)) == 9
    assert batch_indices(3, config, 10) != batch_indices(0, config, 10)  # a new permutation


def test_minibatches_never_split_a_group() -> None:
    samples = Samples(prompt=[0, 0, 0, 1, 1, 2, 2, 2, 2], completions=[], rewards=[])
    chunks = minibatches(samples, list(range(9)), size=4)
    assert chunks == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]


def hand_made_samples(tokenizer: Any) -> tuple[Samples, Any]:
    """Nine samples of three prompts (groups of 3, 2 and 4), five accepted, and their batch."""
    rng = random.Random(0)
    prompts = [[tokenizer.bos_token_id, *rng.sample(range(10, 500), 4 + i)] for i in range(3)]
    groups = [0, 0, 0, 1, 1, 2, 2, 2, 2]  # unequal groups, one split by neither size below
    samples = Samples(
        prompt=groups,
        completions=[
            Completion(tuple(rng.sample(range(10, 500), rng.randint(2, 6))), "", True)
            for _ in groups
        ],
        rewards=[1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0],
    )
    return samples, to_batch(samples, prompts, tokenizer.pad_token_id, torch.device("cpu"))


def one_update(model: Any, samples: Samples, batch: Any, config: TrainConfig) -> list[torch.Tensor]:
    """Parameters after one SGD update of a copy of `model` (unclipped)."""
    copy_ = copy.deepcopy(model)
    optimizer = torch.optim.SGD(copy_.parameters(), lr=0.1)
    update(copy_, None, optimizer, samples, batch, config, random.Random(0))
    return [p.detach().clone() for p in copy_.parameters()]


@pytest.mark.parametrize("algo", ["raft", "grpo"])
def test_micro_batches_add_up_to_the_minibatch(algo: str, tmp_path: Path) -> None:
    model, tokenizer = load_tiny(build_tiny(tmp_path))
    samples, batch = hand_made_samples(tokenizer)

    def with_micro_batches(size: int) -> list[torch.Tensor]:
        config = TrainConfig(algo=algo, micro_batch_size=size, max_grad_norm=1e9)
        return one_update(model, samples, batch, config)

    whole, split = with_micro_batches(64), with_micro_batches(2)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    moved = [not torch.equal(a, b) for a, b in zip(whole, model.parameters(), strict=True)]
    assert any(moved)


def test_gradient_checkpointing_recomputes_and_changes_nothing(tiny_dir: Path) -> None:
    config = TrainConfig(algo="grpo", max_grad_norm=1e9)
    plain = load_policy(tiny_dir, config, torch.device("cpu"))
    checkpointed = load_policy(
        tiny_dir, dataclasses.replace(config, gradient_checkpointing=True), torch.device("cpu")
    )
    # what `is_gradient_checkpointing` (renamed `is_activation_checkpointing` in 5.25) reads
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in plain.modules())
    samples, batch = hand_made_samples(load_tokenizer(tiny_dir))

    def layer_calls(model: Any) -> tuple[list[torch.Tensor], int]:
        calls = 0

        def count(*_: Any) -> None:
            nonlocal calls
            calls += 1

        # one_update deep-copies the model, hook included: the copy's first MLP counts here (a
        # module inside the layer: transformers >= 5.25 recomputes `forward`, not the layer's hooks)
        hook = model.model.layers[0].mlp.register_forward_pre_hook(count)
        try:
            return one_update(model, samples, batch, config), calls
        finally:
            hook.remove()

    (expected, plain_calls), (got, checkpointed_calls) = (
        layer_calls(plain),
        layer_calls(checkpointed),
    )
    assert checkpointed_calls > plain_calls  # backward ran the layer's forward again
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
