"""The learning regime's trainer settings (level mix, exact held-out score, pilot filter) and its
benchmark (benchmarks/learning_regime.py): a tiny end-to-end run, and the docs table it feeds."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import torch
from support import REPO

from trainer_client import BudgetClient
from trainer_client.trainer.config import TrainConfig
from trainer_client.trainer.evaluation import answer_probability
from trainer_client.trainer.policy import load_policy, load_tokenizer
from trainer_client.trainer.prompts import batch_indices, load_problems
from trainer_client.trainer.tasks import encode_prompts
from trainer_client.trainer.train import train
from trainer_client.trainer.warmup import warm_up

BENCHMARKS = REPO / "benchmarks"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return warm_up()


@pytest.fixture(scope="module")
def regime() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import learning_regime
    finally:
        sys.path.remove(str(BENCHMARKS))
    return learning_regime


def test_level_mix_sets_the_shares_of_the_pool_and_the_held_out_set() -> None:
    config = TrainConfig(max_level=4, level_mix="1:4:2:1", train_prompts=64, eval_prompts=16)
    assert config.level_cycle == (1, 2, 2, 2, 2, 3, 3, 4)
    pool, held_out = load_problems(config)
    assert Counter(p.level for p in pool) == {1: 8, 2: 32, 3: 16, 4: 8}
    assert Counter(p.level for p in held_out) == {1: 2, 2: 8, 3: 4, 4: 2}
    assert not {p.prompt_id for p in pool} & {p.prompt_id for p in held_out}
    assert TrainConfig(max_level=3).level_cycle == (1, 2, 3)  # no mix: equal shares


def test_the_regime_fits_level_1s_200_problems() -> None:
    """1,024 + 256 prompts at 1:4:2:1 take 160 of level 1's 200 distinct problems."""
    config = TrainConfig(max_level=4, level_mix="1:4:2:1", train_prompts=1024, eval_prompts=256)
    pool, held_out = load_problems(config)
    ids = [p.prompt_id for p in pool + held_out]
    assert len(set(ids)) == 1280
    assert sum(p.level == 1 for p in pool + held_out) == 160


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_level": 4, "level_mix": "1:4"}, "must be 4 whole numbers"),
        ({"max_level": 2, "level_mix": "1:-1"}, "must be 2 whole numbers"),
        ({"max_level": 2, "level_mix": "0:0"}, "some level a share above 0"),
        ({"pilot_filter": True}, "pilot_filter needs paper mode"),
    ],
)
def test_regime_settings_are_checked(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)  # type: ignore[arg-type]


def test_answer_probability_is_the_chained_probability_of_answer_and_eos(
    model_dir: Path,
) -> None:
    """Batched, padded and chunked, it equals each answer's token-by-token product computed
    on its own unpadded sequence."""
    config = TrainConfig(max_level=4, train_prompts=8, eval_prompts=5)
    model = load_policy(model_dir, config, torch.device("cpu"))
    tokenizer = load_tokenizer(model_dir)
    _, problems = load_problems(config)
    prompts = encode_prompts(tokenizer, problems)
    batched = answer_probability(model, tokenizer, prompts, problems, chunk=2)
    for prompt, problem, got in zip(prompts, problems, batched, strict=True):
        answer = tokenizer.encode(problem.answer + tokenizer.eos_token, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).logits[0]
        steps = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)
        expected = steps.gather(1, torch.tensor(answer)[:, None]).sum().exp().item()
        assert got == pytest.approx(expected, rel=1e-4)
    assert all(0 < p < 1 for p in batched)


def test_pilot_filter_allocates_only_to_prompts_the_pilot_solved(
    model_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    """Uniform after a filtering pilot (filter-only): a prompt gets main samples exactly when the
    pilot solved it; the exact held-out score is the mean answer probability."""
    config = TrainConfig(
        service_url=service_url, run_id=run_id, model=str(model_dir), allocation="uniform",
        mode="paper", pilot_filter=True, pilot_samples=4, steps=1, batch_size=8, budget=64,
        train_prompts=8, max_level=2, eval_prompts=8, eval_exact=True, max_new_tokens=8,
        out_dir=str(tmp_path), progress=False, log_every=0,
    )  # fmt: skip
    summary = train(config)
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    pool, held_out = load_problems(config)
    batch = [pool[i] for i in batch_indices(0, config, len(pool))]
    counts = record["alloc_counts"]
    assert sum(counts) == config.budget - record["pilot"]
    assert 0 < counts.count(0) < len(counts)  # this seed: the filter has something to do
    with BudgetClient(service_url) as client:
        for problem, n in zip(batch, counts, strict=True):
            stats = client.prompt_stats(run_id, problem.prompt_id)
            assert stats.samples == config.pilot_samples + n
            if n == 0:
                assert stats.accepted == 0
            else:  # the pilot solved it (the main draw may add more)
                assert stats.accepted > 0

    start = load_policy(model_dir, config, torch.device("cpu"))
    tokenizer = load_tokenizer(model_dir)
    exact = answer_probability(start, tokenizer, encode_prompts(tokenizer, held_out), held_out)
    assert summary["initial_eval_accuracy"] == pytest.approx(sum(exact) / len(exact))


def test_pilot_as_drawn_asks_for_a_top_up_of_the_pilot(
    model_dir: Path, service_url: str, run_id: str, tmp_path: Path
) -> None:
    """Told as `drawn`, the pilot counts toward each prompt's cap: with max_samples = 2 N' and
    a budget that fills every cap, each prompt tops its pilot up by exactly N' (without drawn,
    the cap would bound the main draw alone and leave room to spread)."""
    config = TrainConfig(
        service_url=service_url, run_id=run_id, model=str(model_dir), allocation="gvm",
        mode="paper", pilot_as_drawn=True, pilot_samples=4, max_samples=8, steps=1,
        batch_size=8, budget=64, train_prompts=8, max_level=2, eval_prompts=8,
        max_new_tokens=8, out_dir=str(tmp_path), progress=False, log_every=0,
    )  # fmt: skip
    train(config)
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["generated"] == config.budget
    assert record["alloc_counts"] == [4] * 8


@pytest.mark.slow
def test_the_regime_benchmark_runs_and_summarises(tmp_path: Path, regime: ModuleType) -> None:
    subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "learning_regime.py"),
            *("--seeds", "0", "--steps", "2", "--arms", "uniform", "filter-only"),
            *("--batch-size", "8", "--train-prompts", "16", "--eval-prompts", "16"),
            *("--per-prompt", "4", "--pilot-samples", "2"),
            *("--jobs", "2", "--out", str(tmp_path), "--name", "smoke"),
        ],
        cwd=REPO, check=True, timeout=600,
    )  # fmt: skip
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["x"] == [0, 32, 64]
    assert [(r["arm"], r["counted"]) for r in result["runs"]] == [
        ("uniform", [0, 32, 64]),
        ("filter-only", [0, 32, 64]),
    ]
    arms = result["summary"]["arms"]
    assert arms["filter-only"]["seeds"] == 1
    assert set(arms["uniform"]["phase_seconds"]) == {"generate", "grad_norms", "update", "other"}
    assert 0 <= arms["filter-only"]["sign_flip_p_holm"] <= 1
    assert result["summary"]["comparisons_with_uniform"] == 1
    assert set(result["pass_rates_before_training"]["pool"]) == {"1", "2", "3", "4", "all"}
    assert regime.docs_table(result).count("\n") == 3  # header, rule, two arms
    assert (tmp_path / "smoke.png").stat().st_size > 0


@pytest.mark.slow
def test_the_learning_rate_probe_runs_uniform_alone_and_keeps_the_best(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "learning_regime.py"),
            *("--probe-lr", "1e-5", "3e-4", "--probe-seeds", "5", "--steps", "2"),
            *("--batch-size", "8", "--train-prompts", "16", "--eval-prompts", "16"),
            *("--per-prompt", "4", "--jobs", "2", "--out", str(tmp_path), "--name", "probe"),
        ],
        cwd=REPO, check=True, timeout=600,
    )  # fmt: skip
    result = json.loads((tmp_path / "probe.json").read_text())
    assert [row["lr"] for row in result["probe"]] == [1e-5, 3e-4]
    assert {r["arm"] for r in result["runs"]} == {"uniform"}
    finals = [row["final"] for row in result["probe"]]
    assert finals[0] != finals[1]  # each run trained at its own rate
    assert result["chosen_lr"] == result["probe"][finals.index(max(finals))]["lr"]


def _fake_result(arms: dict[str, list[float]], seconds: float) -> dict[str, object]:
    """A results file with two seeds: each arm's held-out curve (two steps) as given, seed 1's
    a little higher; every run `seconds` long, uniform's too."""
    runs = [
        {
            "arm": arm, "seed": seed, "counted": [0, 8, 16], "generated": 16, "accepted": 4,
            "held_out": [h + 0.01 * seed for h in curve],
            "train_seconds": [0, seconds / 2, seconds],
            "phase_seconds": {"generate": 1.0, "grad_norms": 1.0, "update": 1.0, "other": 0.0},
            "seconds": seconds, "prompt_steps": 8, "unallocated_prompt_steps": 0,
        }
        for seed in (0, 1)
        for arm, curve in arms.items()
    ]  # fmt: skip
    settings = {"arms": list(arms), "seeds": [0, 1], "algo": "raft", "lr": 1e-5, "train_prompts": 8}
    return {
        "settings": settings, "arms": {a: {} for a in arms}, "x": [0.0, 8.0, 16.0],
        "pass_rates_before_training": {"pool": {}, "held_out": {}}, "runs": runs,
        "seconds_total": 1.0,
    }  # fmt: skip


def test_arms_added_later_are_paired_and_timed_against_their_own_batch(
    tmp_path: Path, regime: ModuleType
) -> None:
    """resummarise adds arms run later on the same seeds only when uniform's curves are the
    same (the runs are deterministic, so the pairs are too), and times each arm against the
    uniform runs of its own batch (a later batch on a quieter machine runs faster)."""
    first = tmp_path / "first.json"
    first.write_text(json.dumps(_fake_result({"uniform": [0.1, 0.2, 0.3]}, seconds=100.0)))
    later = _fake_result({"uniform": [0.1, 0.2, 0.3], "knapsack": [0.1, 0.3, 0.35]}, 40.0)
    (tmp_path / "later.json").write_text(json.dumps(later))
    assert regime.resummarise(first, tmp_path / "later.json") == 0
    merged = json.loads(first.read_text())
    assert merged["settings"]["arms"] == ["uniform", "knapsack"]
    assert {(r["arm"], r.get("batch", 0)) for r in merged["runs"]} == {
        ("uniform", 0),
        ("uniform", 1),
        ("knapsack", 1),
    }
    knapsack = merged["summary"]["arms"]["knapsack"]
    assert knapsack["samples_ratio"] == pytest.approx(0.5)  # reaches 0.3 (+0.01) at 8 of 16
    assert knapsack["time_ratio"] == pytest.approx(0.5)  # 20 s of its batch's uniform's 40 s
    assert merged["summary"]["arms"]["uniform"]["train_seconds"] == 100.0  # batch 0's

    other = _fake_result({"uniform": [0.1, 0.25, 0.3], "gvm": [0.1, 0.2, 0.3]}, 40.0)
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="uniform's runs differ"):
        regime.resummarise(first, tmp_path / "other.json")


@pytest.mark.parametrize(
    "name",
    [
        "learning_regime",
        "learning_regime_grpo",
        "learning_regime_lr",
        "learning_regime_lr_replication",
    ],
)
def test_docs_tables_are_the_committed_results(name: str, regime: ModuleType) -> None:
    """Each setting's table (and its time and contrast tables) in docs/benchmarks.md is what its
    results file holds, in the regime the issue asks for."""
    from support.readme import DOCS, RESULTS, section

    payload = json.loads((RESULTS / f"{name}.json").read_text())
    text = section(DOCS / "benchmarks.md", "Learning per generated sample (the regime)")
    assert regime.docs_table(payload) in text
    assert regime.pass_rate_table(payload) in text  # the same warm policy and pool everywhere
    settings = payload["settings"]
    assert (settings["train_prompts"], settings["batch_size"], settings["steps"]) == (1024, 64, 16)
    assert settings["eval_prompts"] >= 256
    assert len(settings["seeds"]) >= 10
    if name == "learning_regime_lr_replication":  # fresh seeds, one comparison
        assert settings["arms"] == ["uniform", "knapsack"]
        assert not set(settings["seeds"]) & set(
            json.loads((RESULTS / "learning_regime_lr.json").read_text())["settings"]["seeds"]
        )
        return
    assert regime.time_table(payload) in text
    simulated = json.loads((RESULTS / "simulator.json").read_text())
    assert regime.contrast_table(payload, simulated if name == "learning_regime" else None) in text


def test_the_learning_rate_was_chosen_on_uniform_alone_and_used(regime: ModuleType) -> None:
    from support.readme import DOCS, RESULTS, section

    probe = json.loads((RESULTS / "learning_regime_lr_probe.json").read_text())
    text = section(DOCS / "benchmarks.md", "Learning per generated sample (the regime)")
    assert regime.probe_table(probe) in text
    assert {r["arm"] for r in probe["runs"]} == {"uniform"}
    for name in ("learning_regime_lr", "learning_regime_lr_replication"):
        settings = json.loads((RESULTS / f"{name}.json").read_text())["settings"]
        assert settings["lr"] == probe["chosen_lr"]
        assert not set(probe["settings"]["probe_seeds"]) & set(settings["seeds"])  # unused there
