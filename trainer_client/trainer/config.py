"""The trainer's whole configuration: one flat dataclass, CLI flags, an optional config file.

Precedence: the defaults below < the config file (``--config run.toml`` or ``.json``) < flags.
Every key is checked: unknown keys are rejected (with a suggestion), values must have the
field's type (an int is no str, a bool is no int), and choices must be one of the listed ones.
What differs from the defaults is printed at start-up, so a run's log says how it was configured;
the same dict is saved in every checkpoint (``asdict(config)``) and read back with ``from_dict``.

The comment after each field below is also its ``--help`` text.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import inspect
import json
import re
import tomllib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


@dataclass
class TrainConfig:
    # -- the budget service ------------------------------------------------------------------
    service_url: str = "http://127.0.0.1:8000"  # base URL of the GVM Budget service
    run_id: str = ""  # the service's run id; "" = <allocation>-<algo>-<mode>-s<seed>
    api_token: str = ""  # bearer token, if the service wants one (or set GVM_API_TOKEN)
    allocation: Literal["gvm", "gvm-paper", "uniform", "knapsack"] = "gvm"  # the run's strategy
    min_samples: int | None = None  # per-prompt floor; None = the service's (grpo: at least 2)
    max_samples: int | None = None  # per-prompt cap; None = none
    half_life_steps: float | None = None  # statistics halve every this many steps; None = keep
    keep_stats: bool = False  # keep the run's stored statistics (else a new run starts empty)
    # -- the algorithm -----------------------------------------------------------------------
    algo: Literal["raft", "grpo"] = "raft"  # RAFT++ (accepted samples) or GRPO (group advantages)
    mode: Literal["online", "paper"] = "online"  # online: trained samples feed the next step
    steps: int = 20  # training steps (one prompt batch each)
    batch_size: int = 8  # prompts per step
    budget: int = 64  # samples per step, the pilot included in paper mode
    pilot_samples: int = 2  # paper mode: samples per prompt before the allocation (N')
    pilot_filter: bool = False  # paper mode: allocate only over the prompts the pilot solved
    pilot_as_drawn: bool = False  # paper mode: the pilot is sent as drawn, the allocation a top-up
    allocation_rounds: str = ""  # per-prompt samples of the first rounds ("2,4"), last: the rest
    lr: float = 1e-5  # AdamW learning rate (constant); ~1e-6 for models of 1B parameters
    weight_decay: float = 0.0  # AdamW weight decay
    clip: float = 0.2  # PPO clip range epsilon of the importance ratio
    kl_coef: float = 0.0  # weight of the KL to the initial policy; 0 = no reference model
    max_grad_norm: float = 1.0  # gradient clipping of each optimizer step
    ppo_epochs: int = 1  # passes over a step's samples
    minibatch_size: int = 64  # samples per optimizer step within a pass
    micro_batch_size: int = 16  # sequences per forward/backward (memory); gradients add up
    grad_norm_target: Literal["embedding", "lm_head"] = "embedding"  # W of G = |dlogp/dW|
    report_rejected_norms: bool = False  # also the rejected samples' norms: G for 0/N' prompts
    # -- sampling ----------------------------------------------------------------------------
    backend: Literal["hf", "vllm"] = "hf"  # generation: transformers generate, or vLLM
    max_new_tokens: int = 16  # response length cap
    temperature: float = 1.0  # sampling temperature of training samples
    top_p: float = 1.0  # nucleus sampling of training samples
    # -- the vLLM engine (backend = "vllm") ----------------------------------------------------
    vllm_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"  # engine weights dtype
    gpu_memory_utilization: float = 0.5  # GPU memory share vLLM takes; the rest is the trainer's
    tensor_parallel_size: int = 1  # GPUs per engine; > 1 pushes weights through /dev/shm files
    max_model_len: int | None = None  # prompt + response tokens; None = the model's context
    # -- model and data ----------------------------------------------------------------------
    model: str = ""  # HF folder, .gguf, "smollm2" or hub id; "" = the warmed-up tiny model
    cache_dir: str = ""  # where built and converted models are cached; "" = ~/.cache/gvm-budget
    task: Literal["arithmetic", "math"] = "arithmetic"  # the prompt set
    data: str = ""  # math task: a JSONL file of {problem, answer}
    max_level: int = 6  # arithmetic task: difficulty levels 1..max_level (pool and held-out set)
    level_mix: str = ""  # arithmetic task: shares of levels 1..max_level ("1:4:2:1"); "" = equal
    train_prompts: int = 256  # size of the training prompt pool
    data_seed: int = 0  # draws the pool (and the math split); the held-out set is fixed
    eval_prompts: int = 64  # size of the fixed held-out set (greedy accuracy)
    eval_exact: bool = False  # score held-out prompts by the policy's probability of the answer
    eval_every: int = 5  # evaluate every this many steps (and at the start and the end)
    eval_train_prompts: int = 0  # also greedy accuracy on this many training prompts; 0 = off
    device: str = "auto"  # torch device; auto = cuda when available
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: the trainer's passes autocast to bf16
    gradient_checkpointing: bool = False  # recompute layer activations in backward: less memory
    # -- output ------------------------------------------------------------------------------
    out_dir: str = ""  # metrics, checkpoint and spool; "" = runs/<run_id>
    checkpoint_every: int = 0  # save every this many steps; 0 = only at the end
    log_every: int = 1  # print a summary line every this many steps; 0 = never
    report_to: Literal["none", "tensorboard", "wandb"] = "none"  # also log steps to TB or W&B
    resume: bool = False  # continue from out_dir's checkpoint (its config, then these flags)
    seed: int = 0  # prompts, sampling and initialisation
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        check_types(self)
        problems = []
        positive = ("steps", "batch_size", "budget", "max_new_tokens", "eval_prompts",
                    "train_prompts", "eval_every", "ppo_epochs", "minibatch_size",
                    "micro_batch_size")  # fmt: skip
        problems += [f"{name} must be >= 1" for name in positive if getattr(self, name) < 1]
        if self.algo == "grpo" and self.min_samples is not None and self.min_samples < 2:
            problems.append("grpo needs min_samples >= 2 (a group of one has no baseline)")
        if self.mode == "paper":
            if self.pilot_samples < 1:
                problems.append("paper mode needs pilot_samples >= 1")
            elif self.budget <= self.pilot_samples * self.batch_size:
                problems.append(
                    f"paper mode: budget ({self.budget}) must exceed pilot_samples x batch_size "
                    f"({self.pilot_samples} x {self.batch_size}), which the pilot spends first"
                )
        pilot = self.pilot_samples * self.batch_size if self.mode == "paper" else 0
        floor = self.effective_min_samples or 0
        if self.budget - pilot < floor * self.batch_size:
            problems.append(
                f"budget ({self.budget}) leaves {self.budget - pilot} samples after the pilot, "
                f"fewer than min_samples ({floor}) x batch_size ({self.batch_size})"
            )
        if self.task == "math" and not self.data:
            problems.append("task 'math' needs data=<JSONL file of problem/answer>")
        if self.clip <= 0 or self.lr <= 0:
            problems.append("clip and lr must be > 0")
        if not 1 <= self.max_level <= 6:
            problems.append("max_level must be between 1 and 6")
        elif self.level_mix:
            try:
                _ = self.level_cycle
            except ValueError as exc:
                problems.append(str(exc))
        if self.pilot_filter and self.mode != "paper":
            problems.append("pilot_filter needs paper mode (the pilot it filters on)")
        if self.pilot_as_drawn and (self.mode != "paper" or self.allocation == "gvm-paper"):
            problems.append("pilot_as_drawn needs paper mode, and gvm or uniform (no top-ups)")
        if self.allocation_rounds:
            try:
                _ = self.round_budgets
            except ValueError as exc:
                problems.append(str(exc))
        if not 0 < self.gpu_memory_utilization <= 1:
            problems.append("gpu_memory_utilization must be in (0, 1]")
        if self.tensor_parallel_size < 1:
            problems.append("tensor_parallel_size must be >= 1")
        if self.max_model_len is not None and self.max_model_len <= self.max_new_tokens:
            problems.append(
                f"max_model_len ({self.max_model_len}) must exceed max_new_tokens "
                f"({self.max_new_tokens}): it holds the prompt and the response"
            )
        if not 0 <= self.eval_train_prompts <= self.train_prompts:
            problems.append("eval_train_prompts must be between 0 and train_prompts")
        if self.batch_size > self.train_prompts:
            problems.append("batch_size must be <= train_prompts")
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))

    @property
    def run_name(self) -> str:
        """``run_id``, or the default one built from the settings that tell runs apart."""
        return self.run_id or f"{self.allocation}-{self.algo}-{self.mode}-s{self.seed}"

    @property
    def level_cycle(self) -> tuple[int, ...]:
        """The levels the arithmetic pool and held-out set cycle through: each level as many
        times as its share in `level_mix` ("1:4:2:1" -> 1, 2, 2, 2, 2, 3, 3, 4), or each once."""
        levels = range(1, self.max_level + 1)
        if not self.level_mix:
            return tuple(levels)
        parts = self.level_mix.split(":")
        if len(parts) != self.max_level or not all(p.strip().isdigit() for p in parts):
            raise ValueError(
                f"level_mix {self.level_mix!r} must be {self.max_level} whole numbers "
                "separated by ':' (one per level 1..max_level)"
            )
        shares = [int(p) for p in parts]
        if not any(shares):
            raise ValueError("level_mix must give some level a share above 0")
        return tuple(level for level, n in zip(levels, shares, strict=True) for _ in range(n))

    @property
    def round_budgets(self) -> tuple[int, ...]:
        """The step's budget per allocation round: `allocation_rounds` per prompt x batch_size
        for the first rounds ("2,4" -> 2 x 8, 4 x 8 with 8 prompts), the rest of the budget in
        the last one; a single round without it. Each round after the first is a top-up told
        what the step drew so far."""
        if not self.allocation_rounds:
            return (self.budget,)
        parts = self.allocation_rounds.split(",")
        if not all(p.strip().isdigit() and int(p) > 0 for p in parts) or len(parts) > 2:
            raise ValueError(
                f"allocation_rounds {self.allocation_rounds!r} must be one or two whole numbers "
                '> 0 separated by "," (samples per prompt of the first rounds; the last round '
                "takes the rest)"
            )
        first = [int(p) * self.batch_size for p in parts]
        floor = self.effective_min_samples or 1
        if first[0] < floor * self.batch_size:
            raise ValueError(f"allocation_rounds: the first round needs >= {floor} per prompt")
        if sum(first) >= self.budget:
            raise ValueError(
                f"allocation_rounds {self.allocation_rounds!r} x batch_size ({self.batch_size}) "
                f"leaves nothing of the budget ({self.budget}) for the last round"
            )
        if self.mode != "online" or self.allocation == "gvm-paper":
            raise ValueError("allocation_rounds needs online mode, and gvm, uniform or knapsack")
        return (*first, self.budget - sum(first))

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.run_name}")

    @property
    def effective_min_samples(self) -> int | None:
        """What the run is created with: GRPO needs two samples per prompt for a baseline."""
        if self.algo == "grpo":
            return max(self.min_samples or 2, 2)
        return self.min_samples

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, origin: str = "config") -> TrainConfig:
        """A config from a mapping (a file, a checkpoint); unknown keys and bad types raise."""
        check_keys(values, origin)
        return cls(**values)


# -- checking -----------------------------------------------------------------------------------


def _fields() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def check_keys(values: Mapping[str, Any], origin: str) -> None:
    known = _fields()
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{origin}: unknown key {key!r}{hint}")


def _accepts(kind: Any, value: Any) -> bool:
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        return any(_accepts(arg, value) for arg in get_args(kind))
    if origin is Literal:
        return value in get_args(kind)
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(kind: Any) -> str:
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(kind))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(kind))
    return "null" if kind is type(None) else kind.__name__


def check_types(config: TrainConfig) -> None:
    for name, kind in _fields().items():
        value = getattr(config, name)
        if not _accepts(kind, value):
            raise TypeError(f"{name} must be {_describe(kind)}, got {value!r}")
        if float in _members(kind) and isinstance(value, int):  # JSON/TOML ints: store floats
            setattr(config, name, float(value))


# -- the command line ---------------------------------------------------------------------------


def _help_texts() -> dict[str, str]:
    """The comment after each field of ``TrainConfig`` (its documentation, kept in one place)."""
    try:
        source = inspect.getsource(TrainConfig)
    except (OSError, TypeError):
        return {}
    found = re.findall(r"^\s{4}(\w+): [^=]+= .*?  # (.*)$", source, flags=re.MULTILINE)
    return dict(found)


def _members(kind: Any) -> tuple[Any, ...]:
    """The alternatives of a union type, or the type itself."""
    return get_args(kind) if get_origin(kind) in (Union, types.UnionType) else (kind,)


def _parse_value(kind: Any, text: str) -> Any:
    """A flag's text as a value of the field's type (``none`` for an optional field)."""
    members = _members(kind)
    if type(None) in members and text.lower() in ("none", "null"):
        return None
    for member in members:
        if get_origin(member) is Literal:
            return text  # argparse checks the choices
        if member is not type(None):
            try:
                return member(text)
            except ValueError:
                continue
    raise argparse.ArgumentTypeError(f"expected {_describe(kind)}, got {text!r}")


def _metavar(kind: Any) -> str:
    names = [m.__name__.upper() for m in _members(kind) if m is not type(None)]
    return "|".join(names) + ("|none" if type(None) in _members(kind) else "")


def build_parser(prog: str = "gvm-train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="RAFT++ / GRPO training with per-prompt sample counts from GVM Budget.",
        argument_default=argparse.SUPPRESS,  # only flags actually given are overrides
    )
    parser.add_argument("--config", type=Path, help="TOML or JSON file of config keys")
    helps = _help_texts()
    defaults = TrainConfig()
    for name, kind in _fields().items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        text = f"{helps.get(name, '')} (default: {default!r})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=text)
            continue
        choices = get_args(kind) if get_origin(kind) is Literal else None
        parser.add_argument(
            flag,
            dest=name,
            type=functools.partial(_parse_value, kind),
            choices=choices,
            metavar=None if choices else _metavar(kind),
            help=text,
        )
    return parser


def read_config_file(path: Path) -> dict[str, Any]:
    """Keys of a ``.toml`` or ``.json`` file (TOML may group keys in tables: they are flattened)."""
    try:
        if path.suffix == ".toml":
            with path.open("rb") as f:
                raw = tomllib.load(f)
        elif path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            raise ValueError(f"{path}: config files are .toml or .json")
    except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the config ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a table of keys at the top level")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for inner, v in items:
            if inner in flat:
                raise ValueError(f"{path}: key {inner!r} is given twice")
            flat[inner] = v
    return flat


def parse_args(
    argv: Sequence[str] | None = None, *, base: Mapping[str, Any] | None = None
) -> tuple[TrainConfig, dict[str, tuple[Any, str]]]:
    """The config from ``base`` (e.g. a checkpoint's), then the file, then the flags.

    Returns the config and the overrides: key -> (value, where it came from).
    """
    namespace = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = dict(base or {})
    overrides: dict[str, tuple[Any, str]] = {}
    if (path := namespace.pop("config", None)) is not None:
        from_file = read_config_file(path)
        check_keys(from_file, str(path))
        values.update(from_file)
        overrides.update({k: (v, str(path)) for k, v in from_file.items()})
    values.update(namespace)
    overrides.update({k: (v, "flag") for k, v in namespace.items()})
    config = TrainConfig.from_dict(values)
    return config, overrides


def format_overrides(config: TrainConfig, overrides: Mapping[str, tuple[Any, str]]) -> str:
    """One line per key that differs from the default, with where it was set."""
    defaults = dataclasses.asdict(TrainConfig())
    lines = []
    for key, value in dataclasses.asdict(config).items():
        if value != defaults[key]:
            source = overrides.get(key, (None, "checkpoint"))[1]
            shown = "***" if key == "api_token" else repr(value)
            lines.append(f"  {key} = {shown}  ({source})")
    return "\n".join(lines) if lines else "  (all defaults)"


def main(argv: Sequence[str] | None = None) -> int:
    """``gvm-train``: the flags are checked, and ``--help`` answered, before the trainer imports
    torch and transformers (seconds), then ``train.main`` runs."""
    build_parser().parse_args(argv)
    from trainer_client.trainer.train import main as train

    return train(argv)
