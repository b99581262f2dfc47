"""TrainConfig: defaults < config file < flags, every key and type checked, overrides printed."""

import dataclasses
import json
from pathlib import Path

import pytest
from support import REPO
from support.readme import DOCS, section

from trainer_client.trainer.config import (
    TrainConfig,
    build_parser,
    format_overrides,
    parse_args,
    read_config_file,
)


def test_defaults_are_valid_and_documented() -> None:
    config = TrainConfig()
    assert config.run_name == "gvm-raft-online-s0"
    assert config.output_dir == Path("runs/gvm-raft-online-s0")
    help_text = build_parser().format_help()
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name.replace('_', '-')}" in help_text
    assert "samples per step, the pilot included in paper mode" in help_text  # from the comments


def test_flags_override_the_file_which_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[service]\nservice_url = "http://gpu-box:8000"\n\n'
        '[algorithm]\nalgo = "grpo"\nsteps = 50\nlr = 1\nhalf_life_steps = 20\n'
    )
    config, overrides = parse_args(["--config", str(path), "--steps", "7", "--no-progress"])
    assert config.service_url == "http://gpu-box:8000"
    assert config.algo == "grpo"
    assert config.steps == 7
    assert config.lr == 1.0
    assert isinstance(config.lr, float)  # a TOML int for a float field is stored as a float
    assert config.progress is False
    assert overrides["steps"] == (7, "flag")
    assert overrides["algo"] == ("grpo", str(path))
    printed = format_overrides(config, overrides)
    assert "  steps = 7  (flag)" in printed
    assert f"  algo = 'grpo'  ({path})" in printed
    assert "budget" not in printed  # unchanged keys are not listed


def test_json_files_and_optional_values(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"max_samples": 32, "min_samples": None, "mode": "paper"}))
    config, _ = parse_args(["--config", str(path), "--max-samples", "none"])
    assert config.max_samples is None
    assert config.mode == "paper"
    config, _ = parse_args(["--half-life-steps", "12.5", "--min-samples", "3"])
    assert (config.half_life_steps, config.min_samples) == (12.5, 3)


def test_unknown_keys_are_rejected_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("learning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key 'learning_rate'"):
        parse_args(["--config", str(path)])
    with pytest.raises(ValueError, match=r"did you mean 'budget'"):
        TrainConfig.from_dict({"budgets": 3})
    with pytest.raises(SystemExit):
        parse_args(["--learning-rate", "0.1"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": "10"}, "steps must be int"),
        ({"steps": True}, "steps must be int"),
        ({"lr": "fast"}, "lr must be float"),
        ({"algo": "ppo"}, "algo must be one of 'raft', 'grpo'"),
        ({"max_samples": 2.5}, "max_samples must be int or null"),
        ({"progress": 1}, "progress must be bool"),
    ],
)
def test_types_are_checked(values: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        TrainConfig.from_dict(values)


def test_bad_flag_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--steps", "ten"])
    assert "expected int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--algo", "ppo"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"algo": "grpo", "min_samples": 1}, "grpo needs min_samples >= 2"),
        ({"mode": "paper", "budget": 16, "batch_size": 8}, "must exceed pilot_samples"),
        ({"algo": "grpo", "budget": 10, "batch_size": 8}, r"fewer than min_samples \(2\)"),
        ({"task": "math"}, "needs data="),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_rules_across_fields(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values)


def test_grpo_runs_get_two_samples_per_prompt_at_least() -> None:
    assert TrainConfig(algo="grpo").effective_min_samples == 2
    assert TrainConfig(algo="grpo", min_samples=4).effective_min_samples == 4
    assert TrainConfig(algo="raft").effective_min_samples is None


def test_a_saved_config_round_trips() -> None:
    config = TrainConfig(algo="grpo", mode="paper", budget=40, half_life_steps=5.0)
    assert TrainConfig.from_dict(dataclasses.asdict(config)) == config


def test_a_checkpoint_config_is_the_base_of_a_resume() -> None:
    saved = dataclasses.asdict(TrainConfig(steps=10, lr=1e-3, run_id="r1"))
    config, overrides = parse_args(["--steps", "20", "--resume"], base=saved)
    assert (config.steps, config.lr, config.run_id, config.resume) == (20, 1e-3, "r1", True)
    assert "  lr = 0.001  (checkpoint)" in format_overrides(config, overrides)


def test_the_token_is_never_printed() -> None:
    config, overrides = parse_args(["--api-token", "s3cret"])
    assert "s3cret" not in format_overrides(config, overrides)


def test_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "run.toml"
    bad.write_text("steps = \n")
    with pytest.raises(ValueError, match="cannot read"):
        read_config_file(bad)
    with pytest.raises(ValueError, match=r"\.toml or \.json"):
        read_config_file(tmp_path / "run.yaml")
    twice = tmp_path / "twice.toml"
    twice.write_text("steps = 1\n[loop]\nsteps = 2\n")
    with pytest.raises(ValueError, match="given twice"):
        read_config_file(twice)


def test_the_docs_document_every_key() -> None:
    table = section(DOCS / "configuration.md", "Trainer flags and config files")
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f"`{f.name}`" not in table]
    assert not missing


def test_vllm_engine_knobs_come_from_the_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "gpu.toml"
    path.write_text(
        '[sampling]\nbackend = "vllm"\nvllm_dtype = "float16"\ngpu_memory_utilization = 0.35\n'
        "tensor_parallel_size = 2\nmax_model_len = 4096\n"
    )
    config, _ = parse_args(["--config", str(path), "--gpu-memory-utilization", "0.4"])
    assert (config.vllm_dtype, config.gpu_memory_utilization) == ("float16", 0.4)
    assert (config.tensor_parallel_size, config.max_model_len) == (2, 4096)
    assert TrainConfig().vllm_dtype == "bfloat16"  # the engine dtype by default


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gpu_memory_utilization": 0}, r"gpu_memory_utilization must be in \(0, 1\]"),
        ({"gpu_memory_utilization": 1.2}, r"gpu_memory_utilization must be in \(0, 1\]"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size must be >= 1"),
        ({"max_model_len": 16, "max_new_tokens": 16}, "max_model_len .* must exceed"),
        ({"eval_train_prompts": 300, "train_prompts": 256}, "eval_train_prompts must be"),
    ],
)
def test_vllm_knobs_and_training_evaluation_are_checked(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values)
    with pytest.raises(TypeError, match="vllm_dtype must be one of"):
        TrainConfig.from_dict({"vllm_dtype": "fp8"})


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")))
def test_shipped_configs_are_valid(path: Path) -> None:
    config, _ = parse_args(["--config", str(path)])
    assert config.backend == "vllm"


def test_the_paper_config_has_the_papers_setting() -> None:
    path = REPO / "configs" / "paper-qwen2.5-math-1.5b.toml"
    config, _ = parse_args(["--config", str(path)])
    n = config.batch_size
    assert (n, config.pilot_samples, config.budget) == (1024, 8, 8 * n + 8 * n)  # N' = 8, N = 8n
    assert (config.allocation, config.mode, config.algo) == ("gvm-paper", "paper", "raft")
    assert (config.model, config.task, config.device) == ("Qwen/Qwen2.5-Math-1.5B", "math", "cuda")
    assert (config.vllm_dtype, config.tensor_parallel_size) == ("bfloat16", 1)
    assert config.max_model_len is not None
    assert config.max_model_len > config.max_new_tokens
