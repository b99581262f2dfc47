"""The verl adapter against verl's real objects; runs INSIDE .venv-verl (verl 0.7.1).

Not collected by the main test run (the name does not start with ``test_``): it needs verl,
which the main environment cannot install. ``tests/integrations/test_verl_adapter.py`` runs it with
``.venv-verl/bin/python -m pytest --noconftest`` and ``GVM_TEST_SERVICE_URL`` pointing at a live
service on a real Redis.

verl's pieces used as verl uses them: its ``ppo_trainer`` config composed by Hydra with the
docs' override lines (docs/integrations.md), ``create_rl_dataset`` (RLHFDataset on a parquet file),
``create_rl_sampler`` (which builds the sampler from ``data.sampler``), ``StatefulDataLoader``
with verl's ``collate_fn``, and ``DataProto`` built, tagged with uids, repeated ``rollout.n``
times and reordered the way ``RayPPOTrainer.fit`` does before calling ``update(batch)``.
"""

from __future__ import annotations

import os
import shlex
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
import verl
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig
from support.readme import marked_block
from support.verl_data import write_dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from verl import DataProto
from verl.experimental.dataset.sampler import AbstractCurriculumSampler
from verl.utils.dataset.rl_dataset import collate_fn

with warnings.catch_warnings():
    # verl 0.7.1 imports ray's state API from its old, deprecated `ray.experimental` path.
    warnings.filterwarnings("ignore", "Ray state API is no longer experimental", DeprecationWarning)
    from verl.trainer.main_ppo import create_rl_dataset, create_rl_sampler

from trainer_client.integrations._batch import copies_from_counts
from trainer_client.integrations.verl import GVMSampler

SERVICE = os.environ.get("GVM_TEST_SERVICE_URL", "")
N_ROLLOUT = 4  # actor_rollout_ref.rollout.n in these tests
BATCH = 4  # data.train_batch_size
# Accepted samples (of 4) in every group of the prompt at each dataset position.
SOLVED = [2, 4, 0, 2, 1, 4, 3, 0]

pytestmark = [
    pytest.mark.skipif(not SERVICE, reason="run by tests/integrations/test_verl_adapter.py"),
    # torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in torch 2.13.
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),
]


def readme_overrides() -> dict[str, str]:
    """The verl command line of the docs' verl recipe, as {key: value}."""
    block = marked_block("verl-config")
    tokens = shlex.split(block.replace("\\\n", " "))
    assert tokens[:3] == ["python3", "-m", "verl.trainer.main_ppo"], tokens[:3]
    return dict(token.split("=", 1) for token in tokens[3:])


def compose_config(run_id: str, data_file: Path, **extra: str) -> DictConfig:
    """verl's ppo_trainer config with the docs' lines; only sizes, URL and run id changed."""
    overrides = readme_overrides()
    test_values = {
        "data.train_batch_size": str(BATCH),
        "actor_rollout_ref.rollout.n": str(N_ROLLOUT),
        "+data.sampler.service_url": SERVICE,
        "+data.sampler.run_id": run_id,
    }
    for key, value in test_values.items():
        assert key in overrides, f"the docs' verl lines lost {key}"
        overrides[key] = value
    overrides |= {"data.train_files": str(data_file), "data.shuffle": "false", **extra}
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(
            config_name="ppo_trainer", overrides=[f"{k}={v}" for k, v in overrides.items()]
        )


@pytest.fixture
def run_id() -> Iterator[str]:
    run = f"verl-{uuid.uuid4().hex[:12]}"
    yield run
    httpx.delete(f"{SERVICE}/v1/runs/{run}", timeout=10)


@pytest.fixture
def build_sampler() -> Iterator[Callable[[DictConfig, Any], GVMSampler]]:
    """verl's create_rl_sampler; every sampler built is closed after the test."""
    built: list[GVMSampler] = []

    def build(config: DictConfig, dataset: Any) -> GVMSampler:
        sampler = create_rl_sampler(config.data, dataset)
        built.append(sampler)
        return sampler  # type: ignore[no-any-return]

    yield build
    for sampler in built:
        sampler.close()


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "train.parquet", len(SOLVED))


def solved_at(position: int) -> int:
    return SOLVED[position]


def batch_positions(sampler: GVMSampler, batch_dict: dict[str, Any]) -> list[int]:
    """Dataset positions of a collated batch's rows, from the two fields verl carries."""
    pairs = zip(batch_dict["data_source"], batch_dict["index"], strict=True)
    return [sampler.prompt_ids.index(f"{source}:{index}") for source, index in pairs]


def first_batch(sampler: GVMSampler, dataset: Any) -> dict[str, Any]:
    loader = StatefulDataLoader(dataset, batch_size=BATCH, sampler=sampler, collate_fn=collate_fn)
    batch_dict: dict[str, Any] = next(iter(loader))
    return batch_dict


def train_step(
    sampler: GVMSampler, batch_dict: dict[str, Any], positions: list[int], with_norms: bool = False
) -> DataProto:
    """What RayPPOTrainer.fit does with a batch before ``update``, rewards included."""
    batch = DataProto.from_single_dict(batch_dict)
    batch.non_tensor_batch["uid"] = np.array(
        [str(uuid.uuid4()) for _ in range(len(batch))], dtype=object
    )
    batch = batch.repeat(repeat_times=N_ROLLOUT, interleave=True)
    # Rule-based reward: 1.0 at the last response token for the first SOLVED[pos] of each group.
    rows = [pos for pos in positions for _ in range(N_ROLLOUT)]
    rank = [r % N_ROLLOUT for r in range(len(rows))]
    scores = torch.zeros(len(rows), 6)
    scores[:, -1] = torch.tensor([float(k < solved_at(p)) for p, k in zip(rows, rank, strict=True)])
    batch.batch["token_level_scores"] = scores
    if with_norms:
        batch.batch["grad_norm"] = torch.tensor([0.5 + p for p in rows], dtype=torch.float32)
    batch.reorder(torch.randperm(len(batch)))  # _balance_batch reorders rows: ids must not care
    sampler.update(batch)
    return batch


def prompt_stats(run_id: str, prompt: str) -> dict[str, Any]:
    answer = httpx.get(f"{SERVICE}/v1/runs/{run_id}/prompts/{prompt}", timeout=10)
    assert answer.status_code == 200, answer.text
    stats: dict[str, Any] = answer.json()
    return stats


def latest_allocation(run_id: str) -> dict[str, Any]:
    allocation: dict[str, Any] = httpx.get(
        f"{SERVICE}/v1/runs/{run_id}/allocations/latest", timeout=10
    ).json()
    return allocation


def test_the_readme_lines_build_the_sampler(
    run_id: str, data_file: Path, build_sampler: Callable[..., GVMSampler]
) -> None:
    config = compose_config(run_id, data_file)
    dataset = create_rl_dataset(config.data.train_files, config.data, None, None)
    sampler = build_sampler(config, dataset)  # verl's create_rl_sampler, from data.sampler
    assert isinstance(sampler, GVMSampler)
    assert isinstance(sampler, AbstractCurriculumSampler)  # what makes verl call update()
    assert sampler.settings.rollout_n == N_ROLLOUT  # the ${actor_rollout_ref.rollout.n} line
    assert sampler.settings.batch_size == BATCH
    assert sampler.settings.run_config == {"algo": "grpo", "max_samples": 32}
    run = httpx.get(f"{SERVICE}/v1/runs/{run_id}", timeout=10).json()
    assert run["config"]["algo"] == "grpo"
    assert run["config"]["max_samples"] == 32
    # Two data sources share extra_info.index values; the ids tell them apart.
    assert sampler.prompt_ids == [
        f"{'openai/gsm8k' if i % 2 == 0 else 'math'}:{i // 2}" for i in range(len(SOLVED))
    ]


def test_two_epochs_of_verl_batches_follow_the_service(
    run_id: str, data_file: Path, build_sampler: Callable[..., GVMSampler]
) -> None:
    # Raw rates (prior_strength 0): four samples per prompt already separate the prompts. With
    # the default prior, four candidates per batch need more evidence before one earns a
    # second copy (rows are whole copies: a prompt needs n_i >= 1.5 rollout.n, say, for two).
    raw = {"+data.sampler.run_config": "{algo: grpo, max_samples: 32, prior_strength: 0}"}
    config = compose_config(run_id, data_file, **raw)
    dataset = create_rl_dataset(config.data.train_files, config.data, None, None)
    sampler = build_sampler(config, dataset)
    ids = sampler.prompt_ids
    # As RayPPOTrainer._create_dataloader builds it.
    loader = StatefulDataLoader(
        dataset=dataset,
        batch_size=config.data.get("gen_batch_size", config.data.train_batch_size),
        num_workers=config.data["dataloader_num_workers"],
        drop_last=True,
        collate_fn=collate_fn,
        sampler=sampler,
    )
    assert len(loader) == len(SOLVED) // BATCH

    step = 0
    second_epoch: Counter[int] = Counter()  # copies per dataset position
    for epoch in range(2):
        for batch_dict in loader:
            # Asked for lazily: this batch's allocation was made after the last step's report.
            allocation = latest_allocation(run_id)
            assert allocation["step"] == step == sampler.step
            positions = batch_positions(sampler, batch_dict)
            assert len(positions) == BATCH  # verl's batch size, whatever the copies
            candidates = [ids.index(item["prompt_id"]) for item in allocation["items"]]
            counts = [item["samples"] for item in allocation["items"]]
            expected = copies_from_counts(counts, BATCH)
            copies = Counter(positions)
            assert {p: k for p, k in zip(candidates, expected, strict=True) if k} == dict(copies)
            # Acceptance only (no norms in this run): every g_hat is 1.
            assert {item["g_hat"] for item in allocation["items"]} == {1.0}
            if epoch == 0:  # nothing known yet: one copy each, stock verl
                assert sorted(copies.values()) == [1] * BATCH
            else:
                second_epoch.update(copies)
                # GRPO's variance term p (1 - p): the closer a prompt's rate to 1/2, the more
                # samples (solved 2 of 4 > 1 or 3 of 4 > 0 or 4 of 4).
                term = [solved_at(p) * (N_ROLLOUT - solved_at(p)) for p in candidates]
                pairs = sorted(zip(term, counts, strict=True))
                assert [k for _, k in pairs] == sorted(counts), pairs
                assert pairs[-1][1] > pairs[0][1], pairs
            train_step(sampler, batch_dict, positions)
            step += 1
    assert sampler.step == 4
    assert max(second_epoch.values()) >= 2  # some prompt came as several copies
    assert len(second_epoch) < len(SOLVED)  # and some prompt was left out

    # Every sample was reported under its prompt: one copy in epoch 0, then its copies.
    for position, pid in enumerate(ids):
        stats = prompt_stats(run_id, pid)
        copies_seen = 1 + second_epoch[position]
        assert stats["samples"] == N_ROLLOUT * copies_seen
        assert stats["accepted"] == solved_at(position) * copies_seen
        assert stats["grad_norm_count"] == 0


def test_per_sample_grad_norms_are_reported_when_the_batch_has_them(
    run_id: str, data_file: Path, build_sampler: Callable[..., GVMSampler]
) -> None:
    config = compose_config(run_id, data_file)
    dataset = create_rl_dataset(config.data.train_files, config.data, None, None)
    sampler = build_sampler(config, dataset)
    batch_dict = first_batch(sampler, dataset)
    positions = batch_positions(sampler, batch_dict)
    train_step(sampler, batch_dict, positions, with_norms=True)
    for position in positions:
        stats = prompt_stats(run_id, sampler.prompt_ids[position])
        assert stats["grad_norm_count"] == solved_at(position)
        assert stats["grad_norm_sum"] == pytest.approx(solved_at(position) * (0.5 + position))


def test_a_restarted_sampler_continues_the_step_count(
    run_id: str, data_file: Path, build_sampler: Callable[..., GVMSampler]
) -> None:
    config = compose_config(run_id, data_file)
    dataset = create_rl_dataset(config.data.train_files, config.data, None, None)
    first = build_sampler(config, dataset)
    batch_dict = first_batch(first, dataset)
    positions = batch_positions(first, batch_dict)
    train_step(first, batch_dict, positions)
    train_step(first, batch_dict, positions)
    assert first.step == 2
    assert build_sampler(config, dataset).step == 2


def test_a_batch_that_does_not_match_rollout_n_is_refused(
    run_id: str, data_file: Path, build_sampler: Callable[..., GVMSampler]
) -> None:
    config = compose_config(run_id, data_file, **{"+data.sampler.rollout_n": "3"})
    dataset = create_rl_dataset(config.data.train_files, config.data, None, None)
    sampler = build_sampler(config, dataset)
    batch_dict = first_batch(sampler, dataset)
    positions = batch_positions(sampler, batch_dict)
    with pytest.raises(
        ValueError, match=r"samples per uid are \[4\], not data.sampler.rollout_n = 3"
    ):
        train_step(sampler, batch_dict, positions)


def test_rows_that_share_an_id_are_refused(run_id: str, tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    rows = [
        {
            "data_source": "gsm8k",
            "prompt": [{"role": "user", "content": "q"}],
            "extra_info": {"index": 7},
        }
    ] * 5
    pd.DataFrame(rows).to_parquet(path)
    config = compose_config(run_id, path)
    dataset = create_rl_dataset(config.data.train_files, config.data, None, None)
    with pytest.raises(ValueError, match=r"rows 0 and 1 share the prompt id 'gsm8k:7'"):
        create_rl_sampler(config.data, dataset)


def test_missing_settings_name_the_config_lines(run_id: str, data_file: Path) -> None:
    overrides = readme_overrides()
    missing = [f"{k}={v}" for k, v in overrides.items() if k != "+data.sampler.run_id"]
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        config = compose(
            config_name="ppo_trainer", overrides=[*missing, f"data.train_files={data_file}"]
        )
        # The `+` is needed: the sampler's own keys are not in verl's config schema.
        with pytest.raises(ConfigCompositionException):
            compose(config_name="ppo_trainer", overrides=["data.sampler.run_id=x"])
    dataset = create_rl_dataset(config.data.train_files, config.data, None, None)
    with pytest.raises(ValueError, match=r"add \+data.sampler.run_id=\.\.\. to verl's config"):
        create_rl_sampler(config.data, dataset)


def test_a_dataset_without_a_dataframe_is_read_row_by_row(
    run_id: str, data_file: Path, build_sampler: Callable[..., GVMSampler]
) -> None:
    # Any Sized dataset of verl-style rows works (a custom dataset class, say).
    rows = [{"data_source": "custom", "index": 10 + i, "prompt": "q"} for i in range(BATCH)]
    sampler = build_sampler(compose_config(run_id, data_file), rows)
    assert sampler.prompt_ids == [f"custom:{10 + i}" for i in range(BATCH)]
    assert sorted(sampler) == list(range(BATCH))  # one epoch: one batch, one copy each
