"""GVM allocation inside verl: a curriculum sampler that reports each step and shapes the next.

verl (0.5.0 to 0.7.1; the hook was removed in 0.8.0) builds the training sampler from
``data.sampler.class_path`` / ``class_name``, calls ``update(batch)`` after every training step,
and repeats every row the sampler yields ``actor_rollout_ref.rollout.n`` times. ``GVMSampler``:

- ``update(batch)``: per prompt, counts the batch's samples and those whose score (the summed
  ``token_level_scores``) is above ``accept_threshold``, adds the accepted samples' gradient norms
  if the batch carries per-sample norms (``grad_norm_key``), and reports them to the service;
- ``__iter__``: takes the next ``train_batch_size`` prompts of the epoch's order, asks the
  service how to spread ``train_batch_size * rollout.n`` samples over them, and yields each
  prompt's dataset index about n_i / rollout.n times (largest remainders; every batch has
  exactly ``train_batch_size`` rows, as verl expects).

A prompt's id in the service is ``"{data_source}:{extra_info.index}"``, the two fields verl
carries from a dataset row into every sample of the batch, so they must identify a row uniquely.
Settings (under ``data.sampler``): ``service_url``, ``run_id`` and ``rollout_n`` are required;
``accept_threshold`` (0.5), ``score_key`` ("token_level_scores"), ``grad_norm_key``
("grad_norm"), ``run_config`` (RunConfig fields, sent with ``PUT`` at start; default
``{"algo": "grpo"}``), ``spool_path``. The bearer token comes from ``GVM_API_TOKEN``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from omegaconf import DictConfig, OmegaConf
from verl import DataProto
from verl.experimental.dataset.sampler import AbstractCurriculumSampler

from trainer_client.client import BudgetClient
from trainer_client.integrations._batch import (
    copies_from_counts,
    dataset_prompt_ids,
    observations_from_rows,
    prompt_id,
)

__all__ = ["GVMSampler", "GVMSamplerSettings", "prompt_id"]

logger = logging.getLogger("trainer_client.integrations.verl")


@dataclass(frozen=True, slots=True)
class GVMSamplerSettings:
    """``data.sampler`` keys of the sampler (besides verl's ``class_path`` and ``class_name``)."""

    service_url: str
    run_id: str
    rollout_n: int  # must equal actor_rollout_ref.rollout.n
    batch_size: int  # rows per batch: data.gen_batch_size or data.train_batch_size
    accept_threshold: float = 0.5  # a sample is accepted when its score is above this
    score_key: str = "token_level_scores"
    grad_norm_key: str = "grad_norm"
    run_config: Mapping[str, Any] = field(default_factory=lambda: {"algo": "grpo"})
    spool_path: str | None = None
    shuffle: bool = True
    seed: int | None = None

    @classmethod
    def from_data_config(cls, data_config: DictConfig) -> GVMSamplerSettings:
        raw = data_config.get("sampler")
        section = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else {}
        options: dict[str, Any] = {
            str(k): v
            for k, v in cast(dict[str, Any], section).items()
            if k not in ("class_path", "class_name")
        }
        missing = [k for k in ("service_url", "run_id", "rollout_n") if options.get(k) is None]
        if missing:
            keys = " ".join(f"+data.sampler.{k}=..." for k in missing)
            raise ValueError(f"GVMSampler needs {', '.join(missing)}: add {keys} to verl's config")
        known = set(cls.__dataclass_fields__) - {"batch_size", "shuffle", "seed"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown data.sampler keys {unknown}; known: {sorted(known)}")
        run_config = {"algo": "grpo", **(options.pop("run_config", None) or {})}
        batch_size = data_config.get("gen_batch_size") or data_config.get("train_batch_size")
        settings = cls(
            **options,
            run_config=run_config,
            batch_size=int(batch_size),
            shuffle=bool(data_config.get("shuffle", True)),
            seed=data_config.get("seed"),
        )
        if settings.rollout_n < 1 or settings.batch_size < 1:
            raise ValueError("data.sampler.rollout_n and the batch size must be >= 1")
        return settings


class GVMSampler(AbstractCurriculumSampler):  # type: ignore[misc]  # verl is untyped
    """A verl curriculum sampler that lets the GVM Budget service size each prompt's share."""

    def __init__(self, data_source: Sized, data_config: DictConfig) -> None:
        self.settings = GVMSamplerSettings.from_data_config(data_config)
        self.prompt_ids = dataset_prompt_ids(data_source)
        if len(self.prompt_ids) < self.settings.batch_size:
            raise ValueError(
                f"the dataset has {len(self.prompt_ids)} prompts, fewer than one batch "
                f"({self.settings.batch_size})"
            )
        self.client = BudgetClient(
            self.settings.service_url,
            token=os.environ.get("GVM_API_TOKEN") or None,
            spool_path=self.settings.spool_path,
        )
        self.client.put_run(self.settings.run_id, **self.settings.run_config)
        # The step of the next batch; after a restart, the step after the last one reported.
        summary = self.client.summary(self.settings.run_id)
        self.step = summary.last_step + 1 if summary.prompts else 0
        self._rng = np.random.default_rng(self.settings.seed)

    def close(self) -> None:
        """Close the client's connections and spool (verl never calls this; tests and scripts
        that build samplers do)."""
        self.client.close()

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __iter__(self) -> Iterator[int]:
        """One epoch: each prompt is a candidate once; every batch has ``batch_size`` rows.

        Lazy on purpose: batch t's allocation is asked for when verl draws its first index,
        after ``update`` has reported step t - 1 (hence verl's ``dataloader_num_workers=0``).
        """
        size = self.settings.batch_size
        order = self._rng.permutation(len(self)) if self.settings.shuffle else np.arange(len(self))
        for start in range(0, len(order) - size + 1, size):
            yield from self._batch([int(i) for i in order[start : start + size]])

    def _batch(self, candidates: list[int]) -> list[int]:
        """Dataset indices of one batch: each candidate repeated by its allocated copies."""
        n = self.settings.rollout_n
        ids = [self.prompt_ids[i] for i in candidates]
        plan = self.client.allocate(self.settings.run_id, ids, len(ids) * n, step=self.step)
        copies = copies_from_counts(plan.counts, len(candidates))
        logger.info(
            "step %d: %d of %d prompts drawn, copies %s%s",
            self.step,
            sum(c > 0 for c in copies),
            len(copies),
            dict(sorted(Counter(copies).items())),
            " (service unreachable: even split)" if plan.fallback else "",
        )
        return [index for index, k in zip(candidates, copies, strict=True) for _ in range(k)]

    def update(self, batch: DataProto) -> None:
        """Report the step verl just trained on (called once per step, after the update)."""
        columns = batch.non_tensor_batch
        if "index" not in columns:
            raise ValueError(
                "the batch has no 'index' column: GVMSampler needs verl's RLHFDataset rows "
                "(extra_info.index)"
            )
        self._check_groups(columns.get("uid"))
        sources = columns.get("data_source", [""] * len(columns["index"]))
        ids = [prompt_id(s, i) for s, i in zip(sources, columns["index"], strict=True)]
        scores = batch.batch[self.settings.score_key]
        scores = scores.sum(dim=-1) if scores.dim() > 1 else scores
        accepted = (scores.float().cpu().numpy() > self.settings.accept_threshold).tolist()
        observations = observations_from_rows(ids, accepted, self._grad_norms(batch))
        result = self.client.report(self.settings.run_id, self.step, observations)
        logger.info(
            "step %d: reported %d prompts, %d of %d samples accepted%s",
            self.step,
            len(observations),
            sum(accepted),
            len(accepted),
            " (spooled)" if result.spooled else "",
        )
        self.step += 1

    def _grad_norms(self, batch: DataProto) -> list[float] | None:
        """Per-sample gradient norms if the batch carries them (stock verl does not)."""
        key = self.settings.grad_norm_key
        # TensorDict refuses `key in td`; its keys() view answers.
        if batch.batch is not None and key in batch.batch.keys():  # noqa: SIM118
            values = batch.batch[key].float().cpu().numpy()
        elif key in batch.non_tensor_batch:
            values = np.asarray(batch.non_tensor_batch[key], dtype=np.float64)
        else:
            return None
        if values.shape != (len(batch),):
            raise ValueError(f"batch[{key!r}] has shape {values.shape}; need one norm per sample")
        norms: list[float] = values.tolist()
        return norms

    def _check_groups(self, uids: Any) -> None:
        """Every row verl yielded became ``rollout_n`` samples sharing one uid."""
        if uids is None:
            return
        sizes = set(Counter(uids.tolist()).values())
        if sizes != {self.settings.rollout_n}:
            raise ValueError(
                f"samples per uid are {sorted(sizes)}, not data.sampler.rollout_n = "
                f"{self.settings.rollout_n}: set it to actor_rollout_ref.rollout.n"
            )
