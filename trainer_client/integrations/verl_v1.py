"""GVM allocation inside verl 0.8+: a v1 trainer that sizes each prompt's group and reports it.

verl's v1 trainer (the default since 0.8; checked against 0.9.1) hands each prompt row to its agent
loop, which draws ``row["__rollout_n__"]`` samples when the row has that field and
``actor_rollout_ref.rollout.n`` when it has not. ``GVMTrainer`` is verl's synchronous trainer
(``PPOTrainerSync``) plus two steps:

- before a step's prompts go to rollout, it asks the service how to spread ``per_prompt x
  prompts`` samples over them and writes each prompt's count into ``__rollout_n__``;
- after the step has trained, it reports per prompt the samples drawn and those whose score (the
  summed ``rm_scores``) is above ``accept_threshold``.

verl does the rest: its replay buffer takes each prompt group with however many trajectories it
has, GRPO's baseline is per uid, and a batch that no longer divides into mini-batches is padded
with rows that ``token-mean`` leaves out.

verl finds a trainer by the name in ``trainer.v1.trainer_mode``, inside its Ray task runner, so
this module registers ``GVMTrainer`` as ``gvm`` when imported and must be imported there: set
``VERL_USE_EXTERNAL_MODULES=trainer_client.integrations.verl_v1`` (``import verl`` imports it).
Settings (under ``trainer.v1.gvm``): ``service_url`` and ``run_id`` are required; ``per_prompt``
(``actor_rollout_ref.rollout.n``), ``accept_threshold`` (0.5), ``run_config`` (RunConfig fields,
sent with ``PUT`` at start; ``algo`` is ``grpo``), ``spool_path``. The bearer token comes from
``GVM_API_TOKEN``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf, open_dict
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer
from verl.utils import tensordict_utils as tu
from verl.utils.debug import marked_timer

from trainer_client.client import BudgetClient
from trainer_client.integrations._batch import (
    dataset_prompt_ids,
    observations_from_rows,
    prompt_id,
    row_counts,
)

__all__ = ["ROLLOUT_N", "GVMSettings", "GVMTrainer"]

logger = logging.getLogger("trainer_client.integrations.verl_v1")

ROLLOUT_N = "__rollout_n__"  # the prompt-row field verl's agent loop reads its sample count from


@dataclass(frozen=True, slots=True)
class GVMSettings:
    """``trainer.v1.gvm`` keys of the trainer."""

    service_url: str
    run_id: str
    per_prompt: int  # average samples per prompt: a step's budget is this x its prompts
    accept_threshold: float = 0.5  # a sample is accepted when its score is above this
    run_config: Mapping[str, Any] = field(default_factory=lambda: {"algo": "grpo"})
    spool_path: str | None = None

    @classmethod
    def from_config(cls, config: DictConfig) -> GVMSettings:
        raw = OmegaConf.select(config, "trainer.v1.gvm")
        section = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else {}
        options = {str(k): v for k, v in cast(dict[str, Any], section).items()}
        missing = [k for k in ("service_url", "run_id") if options.get(k) is None]
        if missing:
            keys = " ".join(f"+trainer.v1.gvm.{k}=..." for k in missing)
            raise ValueError(f"GVMTrainer needs {', '.join(missing)}: add {keys} to verl's config")
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            known = sorted(cls.__dataclass_fields__)
            raise ValueError(f"unknown trainer.v1.gvm keys {unknown}; known: {known}")
        run_config = {"algo": "grpo", **(options.pop("run_config", None) or {})}
        if run_config["algo"] != "grpo":
            raise ValueError(
                "verl's advantages are per group: trainer.v1.gvm.run_config.algo must be grpo "
                "(each prompt gets 2 samples or more)"
            )
        per_prompt = int(options.pop("per_prompt", None) or config.actor_rollout_ref.rollout.n)
        if per_prompt < 2:
            raise ValueError("trainer.v1.gvm.per_prompt must be >= 2 (a GRPO group needs two)")
        # These make verl fetch and submit one prompt at a time: nothing left to allocate over.
        if OmegaConf.select(config, "algorithm.filter_groups.enable", default=False) or (
            OmegaConf.select(config, "trainer.v1.sampler.sync_refill_failed_groups", default=False)
        ):
            raise ValueError(
                "GVMTrainer allocates over a whole batch; algorithm.filter_groups and "
                "trainer.v1.sampler.sync_refill_failed_groups submit prompts one by one"
            )
        return cls(**options, per_prompt=per_prompt, run_config=run_config)


@register_trainer("gvm")
class GVMTrainer(PPOTrainerSync):  # type: ignore[misc]  # verl is untyped
    """verl's synchronous v1 trainer with each prompt's sample count from the GVM Budget service."""

    def __init__(self, config: DictConfig) -> None:
        self.gvm = GVMSettings.from_config(config)
        # verl branches on the mode's name (replay buffer, dataloader, checkpoints): from here on
        # this is the "sync" mode; "gvm" only picked the class.
        with open_dict(config):
            config.trainer.v1.trainer_mode = "sync"
        super().__init__(config)
        self.timing_raw: dict[str, float] = {}  # fit() replaces it each step
        self.budget = BudgetClient(
            self.gvm.service_url,
            token=os.environ.get("GVM_API_TOKEN") or None,
            spool_path=self.gvm.spool_path,
        )
        self.budget.put_run(self.gvm.run_id, **self.gvm.run_config)
        self._prompts: dict[str, str] = {}  # uid -> prompt id, submitted and not yet reported
        self._counts: list[int] = []  # the last allocation, per row
        self._fallback = False

    def _init_dataloader(self) -> None:
        super()._init_dataloader()
        dataset_prompt_ids(self.train_dataset)  # ids that repeat fail here, not mid-run

    def _submit_batch_to_rollout(self, batch: TensorDict) -> int:
        """Write each row's ``__rollout_n__`` from the service's allocation, then submit."""
        uids = [str(u) for u in tu.get(batch, "uid")]
        sources = tu.get(batch, "data_source", [""] * len(uids))
        ids = [prompt_id(s, i) for s, i in zip(sources, tu.get(batch, "index"), strict=True)]
        distinct = list(dict.fromkeys(ids))
        budget = self.gvm.per_prompt * len(ids)
        with marked_timer("gvm_allocate", self.timing_raw):
            plan = self.budget.allocate(self.gvm.run_id, distinct, budget, step=self.global_steps)
        self._counts = row_counts(ids, plan.counts)
        self._fallback = plan.fallback
        tu.assign_non_tensor_stack(batch, ROLLOUT_N, self._counts)
        self._prompts.update(zip(uids, ids, strict=True))
        logger.info(
            "step %d: %d samples over %d prompts, %d to %d each%s",
            self.global_steps,
            sum(self._counts),
            len(ids),
            min(self._counts),
            max(self._counts),
            " (service unreachable: even split)" if plan.fallback else "",
        )
        return cast(int, super()._submit_batch_to_rollout(batch))

    def step(self, metrics: dict[str, Any], timing_raw: dict[str, float]) -> KVBatchMeta:
        """verl's step, then the report of what it trained on."""
        batch = super().step(metrics, timing_raw)
        with marked_timer("gvm_report", timing_raw):
            self.report_step(batch, metrics)
        return batch

    def report_step(self, batch: KVBatchMeta, metrics: dict[str, Any]) -> None:
        """Per prompt, the samples in ``batch`` and how many scored above the threshold.

        A trajectory's key is ``{uid}_{session}_{output}``: one session is one sample (a
        multi-turn session's outputs share its reward). verl's padding rows are left out.
        """
        keys = [
            k for k, tag in zip(batch.keys, batch.tags, strict=True) if not tag.get("is_padding")
        ]
        scores: dict[str, float] = {}  # session -> score
        if keys:
            data = tq.kv_batch_get(
                keys=keys, partition_id=batch.partition_id, select_fields=["rm_scores"]
            )
            for key, value in zip(keys, data["rm_scores"], strict=True):
                scores[key.rsplit("_", 1)[0]] = float(value.sum())
        samples = [(session.rsplit("_", 1)[0], score) for session, score in scores.items()]
        unknown = {uid for uid, _ in samples if uid not in self._prompts}
        if unknown:
            logger.warning(
                "step %d: %d groups this trainer did not submit are not reported",
                self.global_steps,
                len(unknown),
            )
        samples = [(uid, score) for uid, score in samples if uid not in unknown]
        accepted = [score > self.gvm.accept_threshold for _, score in samples]
        observations = observations_from_rows([self._prompts[uid] for uid, _ in samples], accepted)
        spooled = False
        if observations:
            result = self.budget.report(self.gvm.run_id, self.global_steps, observations)
            spooled = result.spooled
        for uid in {uid for uid, _ in samples}:
            del self._prompts[uid]
        metrics.update(
            {
                "gvm/samples_min": min(self._counts, default=0),
                "gvm/samples_max": max(self._counts, default=0),
                "gvm/accepted_ratio": sum(accepted) / max(len(accepted), 1),
                "gvm/fallback": float(self._fallback),
                "gvm/spooled": float(spooled),
            }
        )
        logger.info(
            "step %d: reported %d prompts, %d of %d samples accepted%s",
            self.global_steps,
            len(observations),
            sum(accepted),
            len(accepted),
            " (spooled)" if spooled else "",
        )

    def close(self) -> None:
        """Close the client's connections and spool (verl never calls this; tests do)."""
        self.budget.close()
