"""GVM allocation inside TRL's ``GRPOTrainer``: each prompt gets its own number of completions.

A TRL user changes one import and adds the ``budget_*`` fields::

    from trainer_client.integrations.trl import GVMGRPOConfig as GRPOConfig
    from trainer_client.integrations.trl import GVMGRPOTrainer as GRPOTrainer

``num_generations`` becomes the group *width*, the most completions a prompt can get. Each
training batch, the trainer asks the service how to spread ``budget_per_prompt`` x (distinct
prompts) completions over the batch's prompts, generates only those, and pads every group to the
width with one-token rows that carry no signal:

- their reward is set to NaN, so TRL's NaN-aware group mean and std ignore them and their
  advantage is zero (reward functions never see them);
- their completion mask is zeroed and their tokens are taken out of ``num_items_in_batch``, so
  they add nothing to the loss or to its normaliser.

That is exact for the token-normalised losses (``dapo``, the default, ``bnpo``, ``cispo``,
``vespo``). ``grpo``, ``sapo``, ``dr_grpo`` and ``luspo`` divide by a number of rows, which
padding would dilute; the trainer refuses them (``UnsupportedLossError``).

After scoring, each prompt's samples and accepted count (total reward above
``budget_accept_threshold``) are reported, so the next allocation uses them ("online" mode). A
prompt that appears k times in a batch gets its count in each of its k groups, and one report that
sums them. When the service is unreachable, ``BudgetClient`` splits the budget evenly and spools
the reports until it is back: training never stops. Single process only; see
docs/integrations-trl.md for the limits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from trl.trainer.grpo_config import GRPOConfig
from trl.trainer.grpo_trainer import GRPOTrainer

from trainer_client.client import BudgetClient
from trainer_client.errors import UnavailableError
from trainer_client.integrations._batch import observations_from_rows
from trainer_client.models import Allocation

__all__ = [
    "EXACT_LOSS_TYPES",
    "GVMGRPOConfig",
    "GVMGRPOTrainer",
    "UnsupportedLossError",
    "group_counts",
    "prompt_id_of",
]

logger = logging.getLogger("trainer_client.integrations.trl")

EXACT_LOSS_TYPES = ("dapo", "bnpo", "cispo", "vespo")
"""Loss types normalised by the masked token count: padded rows drop out of them exactly."""


class UnsupportedLossError(ValueError):
    """A ``loss_type`` that padded rows would dilute (it divides by a number of rows)."""


# TrainingArguments fields renamed in transformers 5.25 (old name, new name).
_RENAMED_ARGUMENTS = (
    ("gradient_checkpointing", "activation_checkpointing"),
    ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
)


@dataclass
class GVMGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the budget service's settings. ``num_generations`` is the group width."""

    budget_url: str | None = field(
        default=None, metadata={"help": "Base URL of the GVM Budget service (required)."}
    )
    budget_run_id: str | None = field(
        default=None, metadata={"help": "The service's run id for this training run (required)."}
    )
    budget_per_prompt: float | None = field(
        default=None,
        metadata={
            "help": "Average completions per prompt, 2 <= budget_per_prompt <= num_generations. "
            "None: num_generations (every group full; statistics are still reported)."
        },
    )
    budget_token: str | None = field(
        default=None, metadata={"help": "Bearer token of the service (masked in logs)."}
    )
    budget_accept_threshold: float = field(
        default=0.5,
        metadata={"help": "A completion is accepted when its total reward is above this."},
    )
    budget_prompt_id_column: str = field(
        default="prompt_id",
        metadata={
            "help": "Dataset column naming each prompt; without it a prompt's id is a hash of "
            "its text."
        },
    )
    budget_run_config: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "RunConfig fields sent with PUT at start (a dict or JSON). Default: "
            '{"algo": "grpo", "min_samples": 2, "max_samples": num_generations}.'
        },
    )
    budget_spool_path: str | None = field(
        default=None,
        metadata={"help": "Spool of undelivered reports. Default: output_dir/gvm-spool.jsonl."},
    )
    budget_timeout: float = field(
        default=10.0, metadata={"help": "Seconds per request to the service."}
    )

    def __post_init__(self) -> None:
        # TRL 1.16 sets gradient_checkpointing=True by default; transformers >= 5.25 renames it
        # activation_checkpointing and warns on the old name (removed in v6): pass the value on
        # under the new name where it exists, so a GVMGRPOConfig raises no deprecation warning.
        for old, new in _RENAMED_ARGUMENTS:
            if hasattr(self, new) and getattr(self, new) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
                setattr(self, old, None)
        super().__post_init__()  # type: ignore[no-untyped-call]
        if not self.budget_url or not self.budget_run_id:
            raise ValueError("GVMGRPOConfig needs budget_url and budget_run_id")
        width = self.width
        if self.budget_per_prompt is None:
            self.budget_per_prompt = float(width)
        if not 2 <= self.budget_per_prompt <= width:
            raise ValueError(
                f"budget_per_prompt must be in [2, num_generations={width}], "
                f"got {self.budget_per_prompt}"
            )
        if isinstance(self.budget_run_config, str):
            self.budget_run_config = json.loads(self.budget_run_config)
        if self.loss_type not in EXACT_LOSS_TYPES:
            raise UnsupportedLossError(
                f"GVMGRPOTrainer supports loss_type in {EXACT_LOSS_TYPES}, got "
                f"{self.loss_type!r}: it normalises per row, so the rows that pad each group to "
                "num_generations would dilute the loss. Use 'dapo' (TRL's default)."
            )

    @property
    def width(self) -> int:
        """The most completions a prompt can get: ``num_generations``."""
        assert self.num_generations is not None  # GRPOConfig defaults it to 8
        return self.num_generations

    def run_config(self) -> dict[str, Any]:
        """The RunConfig fields the trainer sends: GRPO floor of 2, cap at the width."""
        assert not isinstance(self.budget_run_config, str)  # parsed in __post_init__
        defaults = {"algo": "grpo", "min_samples": 2, "max_samples": self.width}
        return defaults | (self.budget_run_config or {})


def prompt_id_of(row: Mapping[str, Any], column: str) -> str:
    """The service's id of a dataset row: its ``column`` value, else a hash of its prompt."""
    if row.get(column) is not None:
        return str(row[column])
    text = json.dumps(row["prompt"], sort_keys=True, default=str)
    return "sha1:" + hashlib.sha1(text.encode()).hexdigest()


def group_counts(
    group_ids: Sequence[str], allocation: Allocation, width: int
) -> tuple[list[str], list[int]]:
    """Distinct prompt ids (first-appearance order, as allocated) and each group's count.

    A prompt's count applies to each group it has; counts are capped at the group width.
    """
    distinct = list(dict.fromkeys(group_ids))
    if [item.prompt_id for item in allocation.items] != distinct:
        raise ValueError("the allocation does not answer this batch's prompts")
    per_prompt = dict(zip(distinct, allocation.counts, strict=True))
    return distinct, [min(per_prompt[p], width) for p in group_ids]


@dataclass(slots=True)
class _Plan:
    """One generation batch: a prompt id and a count per group of ``width`` rows."""

    group_ids: list[str]
    counts: list[int]
    width: int
    allocation: Allocation
    rewards: torch.Tensor | None = None  # per row, total reward; NaN on padded rows

    @property
    def keep(self) -> list[bool]:
        """Per row: generated (True) or padding (False)."""
        return [j < n for n in self.counts for j in range(self.width)]


class GVMGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose prompts get the service's per-prompt counts (see the module doc).

    ``budget_client``: a ``BudgetClient`` to use instead of one built from ``args``. The
    trainer's client is ``trainer.budget``; close it when done.
    """

    args: GVMGRPOConfig

    def __init__(
        self,
        model: Any,
        reward_funcs: Any,
        args: GVMGRPOConfig,
        *,
        budget_client: BudgetClient | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, GVMGRPOConfig):
            raise TypeError("GVMGRPOTrainer needs a GVMGRPOConfig")
        for name in ("tools", "rollout_func", "environment_factory"):
            if kwargs.get(name) is not None:
                raise NotImplementedError(f"GVMGRPOTrainer does not support {name} yet")
        super().__init__(model, reward_funcs, args=args, **kwargs)
        if self.accelerator.num_processes > 1:
            raise NotImplementedError(
                "GVMGRPOTrainer runs in a single process: the allocation needs every completion "
                "of a batch on one process"
            )
        if self._is_vlm:
            raise NotImplementedError("GVMGRPOTrainer does not support vision-language models yet")
        # all three are set by GVMGRPOConfig.__post_init__
        assert args.budget_url
        assert args.budget_run_id
        assert args.budget_per_prompt
        self.run_id: str = args.budget_run_id
        self._per_prompt: float = args.budget_per_prompt
        self.budget = budget_client or BudgetClient(
            args.budget_url,
            token=args.budget_token,
            timeout=args.budget_timeout,
            spool_path=args.budget_spool_path
            or os.path.join(args.output_dir or ".", "gvm-spool.jsonl"),
        )
        self._run_ready = self._put_run()
        self._plan: _Plan | None = None

    def _put_run(self) -> bool:
        """Create or configure the run (statistics are kept); False if the service is down."""
        try:
            self.budget.put_run(self.run_id, **self.args.run_config())
        except UnavailableError as exc:
            logger.warning("budget service unreachable (%s); will configure the run later", exc)
            return False
        return True

    # -- one batch: allocate, generate, score, mask, report ------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.model is None or not self.model.training:  # evaluation: plain GRPO
            return super()._generate_and_score_completions(inputs)
        self._plan = plan = self._allocate(inputs)
        try:
            output: dict[str, Any] = super()._generate_and_score_completions(inputs)
        finally:
            self._plan = None
        padded = ~torch.tensor(plan.keep, device=output["completion_mask"].device)
        padded_tokens = output["completion_mask"][padded].sum()  # no tools: mask = loss mask
        output["num_items_in_batch"] = output["num_items_in_batch"] - padded_tokens
        output["completion_mask"][padded] = 0
        self._report(inputs, plan)
        return output

    def _allocate(self, inputs: list[dict[str, Any]]) -> _Plan:
        width = self.args.width
        column = self.args.budget_prompt_id_column
        group_ids = []
        for start in range(0, len(inputs), width):
            block = inputs[start : start + width]
            if len(block) != width or any(row["prompt"] != block[0]["prompt"] for row in block):
                raise RuntimeError(
                    "GVMGRPOTrainer expects each prompt repeated num_generations times in "
                    "consecutive rows, as TRL's RepeatSampler yields them"
                )
            group_ids.append(prompt_id_of(block[0], column))
        distinct = list(dict.fromkeys(group_ids))
        if not self._run_ready:
            self._run_ready = self._put_run()
        allocation = self.budget.allocate(
            self.run_id,
            distinct,
            int(self._per_prompt * len(distinct)),
            step=self.state.global_step,
        )
        _, counts = group_counts(group_ids, allocation, width)
        if not any(counts):
            raise RuntimeError("the allocation gave no completion to any prompt of the batch")
        plan = _Plan(group_ids, counts, width, allocation)
        self._log_allocation(plan)
        return plan

    def _generate_single_turn(
        self,
        prompt_ids: list[list[int]],
        images: Any,
        multimodal_fields: Any,
        num_generations: int,
        has_tool_images: bool = False,
    ) -> tuple[list[list[int]], list[list[float]] | None]:
        """Generate the plan's rows only; padded rows get one EOS token (and NaN logprob)."""
        plan = self._plan
        if plan is None or all(plan.keep):
            return super()._generate_single_turn(  # type: ignore[no-untyped-call,no-any-return]
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        rows = [r for r, kept in enumerate(plan.keep) if kept]
        if self.use_vllm and self.vllm_mode == "server":
            # Server mode asks for `num_generations` completions of every `num_generations`-th
            # row: one request per distinct count keeps that layout.
            calls = {}
            for n in sorted(set(plan.counts) - {0}):
                calls[n] = [r for r in rows if plan.counts[r // plan.width] == n]
        else:
            calls = {num_generations: rows}
        completions: dict[int, list[int]] = {}
        logprobs: dict[int, list[float]] | None = {}
        for n, call_rows in calls.items():
            ids, lps = super()._generate_single_turn(  # type: ignore[no-untyped-call]
                [prompt_ids[r] for r in call_rows], None, multimodal_fields, n, has_tool_images
            )
            completions.update(zip(call_rows, ids, strict=True))
            if lps is None:
                logprobs = None
            elif logprobs is not None:
                logprobs.update(zip(call_rows, lps, strict=True))
        eos = [self.eos_token_ids[0]]
        nan = [float("nan")]  # TRL treats a NaN sampling logprob as "unknown": IS ratio 1
        return (
            [completions.get(r, eos) for r in range(len(prompt_ids))],
            None if logprobs is None else [logprobs.get(r, nan) for r in range(len(prompt_ids))],
        )

    def _calculate_rewards(
        self,
        inputs: list[dict[str, Any]],
        prompts: list[Any],
        completions: list[Any],
        completion_ids_list: list[list[int]],
    ) -> torch.Tensor:
        """Reward functions score the generated rows only; padded rows get NaN."""
        plan = self._plan
        if plan is None:
            return super()._calculate_rewards(  # type: ignore[no-any-return]
                inputs, prompts, completions, completion_ids_list
            )
        rows = [r for r, kept in enumerate(plan.keep) if kept]
        scored = super()._calculate_rewards(
            [inputs[r] for r in rows],
            [prompts[r] for r in rows],
            [completions[r] for r in rows],
            [completion_ids_list[r] for r in rows],
        )
        rewards = torch.full(
            (len(inputs), scored.size(1)), torch.nan, dtype=scored.dtype, device=scored.device
        )
        rewards[rows] = scored
        for column, values in self._pending_extra_logs.items():  # one per scored row: realign
            if len(values) == len(rows):
                aligned: list[Any] = [None] * len(inputs)
                for r, value in zip(rows, values, strict=True):
                    aligned[r] = value
                self._pending_extra_logs[column] = aligned
        total = (rewards * self.reward_weights.to(rewards.device)).nansum(dim=1)
        total[rewards.isnan().all(dim=1)] = torch.nan
        plan.rewards = total
        return rewards

    def _report(self, inputs: list[dict[str, Any]], plan: _Plan) -> None:
        """Post each prompt's generated samples and accepted count (reward > threshold)."""
        assert plan.rewards is not None  # set by _calculate_rewards
        rows = [r for r, kept in enumerate(plan.keep) if kept]
        accepted = (plan.rewards > self.args.budget_accept_threshold).tolist()
        observations = observations_from_rows(
            [plan.group_ids[r // plan.width] for r in rows], [accepted[r] for r in rows]
        )
        self.budget.report(self.run_id, self.state.global_step, observations)
        self._metrics["train"]["gvm/spooled_reports"].append(float(len(self.budget.spool)))

    def _log_allocation(self, plan: _Plan) -> None:
        metrics = self._metrics["train"]
        real = sum(plan.counts)
        metrics["gvm/samples_mean"].append(real / len(plan.counts))
        metrics["gvm/samples_min"].append(float(min(plan.counts)))
        metrics["gvm/samples_max"].append(float(max(plan.counts)))
        metrics["gvm/padded_fraction"].append(1.0 - real / (len(plan.counts) * plan.width))
        metrics["gvm/fallback"].append(float(plan.allocation.fallback))
        predicted, uniform = plan.allocation.predicted_variance, plan.allocation.uniform_variance
        if predicted is not None and uniform:
            metrics["gvm/variance_ratio"].append(predicted / uniform)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``, then one more try at delivering spooled reports."""
        try:
            return super().train(*args, **kwargs)
        finally:
            if pending := self.budget.flush():
                logger.warning("%d report(s) still spooled (%s)", pending, self.budget.spool.path)
