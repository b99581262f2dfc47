"""The verl 0.8+ adapter against verl 0.9.1's real objects; runs INSIDE .venv-verl09.

Not collected by the main test run (the name does not start with ``test_``): it needs verl 0.9.1,
which the main environment does not install. ``tests/integrations/test_verl_v1_adapter.py`` runs
it with ``.venv-verl09/bin/python -m pytest --noconftest``, ``GVM_TEST_SERVICE_URL`` pointing at
a live service on a real Redis and ``tests/`` on ``PYTHONPATH``.

Real verl: the ``ppo_trainer`` config composed by Hydra with the docs' lines, ``GVMTrainer``
built by verl's ``PPOTrainer.__init__`` (its ``ReplayBuffer`` included), verl's
``_init_dataloader`` and ``_next_train_batch``, the base ``_submit_batch_to_rollout``, the agent
loop's ``generate_sequences`` and ``_run_prompt`` (which read ``__rollout_n__``), the replay
buffer's ``sample`` and the mini-batch padding. Not real: TransferQueue's storage (``KVStore``,
in-process: TransferQueue's controller and storage units are Ray actors) and the LLM (each
session writes one trajectory with a scripted reward instead of generating).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import transfer_queue
import verl
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict
from support.faultproxy import FaultProxy, parse_address
from support.readme import marked_block
from support.verl_data import write_dataset
from transfer_queue import KVBatchMeta

with warnings.catch_warnings():
    # verl 0.9.1 imports ray's state API from its old `ray.experimental` path, and says which of
    # its training engines (Megatron, torchtitan, ...) it could not import.
    warnings.filterwarnings("ignore", "Ray state API is no longer experimental", DeprecationWarning)
    warnings.filterwarnings("ignore", ".* engine is not available", UserWarning)
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
    from verl.trainer.ppo.v1 import AgentLoopWorkerTQ, PPOTrainerSync, get_trainer_cls
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    from trainer_client.integrations.verl_v1 import ROLLOUT_N, GVMTrainer

SERVICE = os.environ.get("GVM_TEST_SERVICE_URL", "")
N_ROLLOUT = 4  # actor_rollout_ref.rollout.n in these tests
BATCH = 4  # data.train_batch_size
PROMPTS = 8  # dataset rows: two steps per epoch
SOLVED = [2, 4, 0, 2, 1, 4, 3, 0]  # per dataset row: how many sessions score 1 (of N_ROLLOUT)

pytestmark = [
    pytest.mark.skipif(not SERVICE, reason="run by tests/integrations/test_verl_v1_adapter.py"),
    # torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in torch 2.13.
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),
    # verl's PPOTrainer.__init__ says so for every GRPO run (no critic.enable set).
    pytest.mark.filterwarnings("ignore:Disabled critic:UserWarning"),
]


# --- the docs' lines -----------------------------------------------------------------------


def docs_command() -> tuple[dict[str, str], dict[str, str]]:
    """The docs' verl command: ({env var: value}, {override: value})."""
    tokens = shlex.split(marked_block("verl-v1-config").replace("\\\n", " "))
    start = tokens.index("python3")
    assert tokens[start : start + 3] == ["python3", "-m", "verl.trainer.main_ppo"], tokens
    env = dict(token.split("=", 1) for token in tokens[:start])
    return env, dict(token.split("=", 1) for token in tokens[start + 3 :])


def compose_config(service: str, run_id: str, data_file: Path) -> DictConfig:
    """verl's ppo_trainer config with the docs' lines; only sizes, URL and run id changed."""
    _, overrides = docs_command()
    test_values = {
        "data.train_batch_size": str(BATCH),
        "actor_rollout_ref.rollout.n": str(N_ROLLOUT),
        "+trainer.v1.gvm.service_url": service,
        "+trainer.v1.gvm.run_id": run_id,
        "+trainer.v1.gvm.per_prompt": str(N_ROLLOUT),
    }
    for key, value in test_values.items():
        assert key in overrides, f"the docs' verl lines lost {key}"
        overrides[key] = value
    overrides |= {
        "data.train_files": str(data_file),
        "data.val_files": str(data_file),
        "actor_rollout_ref.actor.ppo_mini_batch_size": "2",
        "data.dataloader_num_workers": "0",  # a 2-core machine
        "data.shuffle": "false",  # batches in dataset order: rows 0-3, then 4-7
    }
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(
            config_name="ppo_trainer", overrides=[f"{k}={v}" for k, v in overrides.items()]
        )


def solved(prompt: str) -> int:
    source, index = prompt.split(":")
    return SOLVED[2 * int(index) + (source == "math")]


# --- TransferQueue's storage and the LLM, stood in for --------------------------------------


class KVStore:
    """TransferQueue's key-value calls that verl makes, on one in-process dict."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, dict[str, Any]]] = {}
        self.fields: dict[str, dict[str, Any]] = {}

    def kv_batch_put(
        self,
        keys: list[str],
        partition_id: str,
        fields: Any = None,
        tags: list[dict[str, Any]] | None = None,
    ) -> None:
        for i, key in enumerate(keys):
            tag = self.tags.setdefault(partition_id, {}).setdefault(key, {})
            tag.update(tags[i] if tags else {})  # a later tag updates the earlier one
            if fields is not None:
                self.fields[key] = {name: fields[name][i] for name in fields.keys()}  # noqa: SIM118

    async def async_kv_put(self, key: str, partition_id: str, tag: dict[str, Any]) -> None:
        self.kv_batch_put([key], partition_id, tags=[tag])

    async def async_kv_batch_put(
        self, keys: list[str], partition_id: str, fields: Any, tags: list[dict[str, Any]]
    ) -> None:
        self.kv_batch_put(keys, partition_id, fields, tags)

    def kv_batch_get(
        self, keys: list[str], partition_id: str, select_fields: list[str] | None = None
    ) -> Any:
        wanted = select_fields
        rows = [
            {k: v for k, v in self.fields[key].items() if wanted is None or k in wanted}
            for key in keys
        ]
        return list_of_dict_to_tensordict(rows)

    def kv_list(self, partition_id: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
        if partition_id is None:
            return {p: dict(tags) for p, tags in self.tags.items()}
        return {partition_id: dict(self.tags.get(partition_id, {}))}

    def kv_clear(self, keys: list[str], partition_id: str) -> None:
        for key in keys:
            self.tags.get(partition_id, {}).pop(key, None)
            self.fields.pop(key, None)


class AgentLoop:
    """verl's ``AgentLoopWorkerTQ`` (its real ``generate_sequences`` and ``_run_prompt``) with a
    scripted ``_run_agent_loop``: session k of a prompt scores 1 when k < SOLVED[prompt]."""

    def __init__(self, config: DictConfig) -> None:
        worker_cls = AgentLoopWorkerTQ.__ray_actor_class__  # the class under @ray.remote
        self.worker = object.__new__(worker_cls)
        self.worker.config = config
        self.worker.background_tasks = set()
        self.worker._run_agent_loop = self._run_agent_loop
        self.sessions: Counter[str] = Counter()  # prompt id -> sessions started

    def generate_sequences(self, batch: Any) -> None:
        async def run() -> None:
            await self.worker.generate_sequences(batch)
            while self.worker.background_tasks:
                await asyncio.gather(*list(self.worker.background_tasks))

        asyncio.run(run())

    async def _run_agent_loop(
        self, sampling_params: dict[str, Any], trajectory: dict[str, Any], trace: bool,
        session_id: int, **prompt: Any,
    ) -> None:  # fmt: skip
        assert ROLLOUT_N not in prompt  # _run_prompt popped it
        uid, pid = prompt["uid"], f"{prompt['data_source']}:{prompt['index']}"
        self.sessions[pid] += 1
        length = 3 + session_id % 2
        scores = torch.zeros(length)
        scores[-1] = float(session_id < solved(pid))
        fields = {"rm_scores": scores, "response_mask": torch.ones(length, dtype=torch.int64)}
        tag = {"status": "success", "global_steps": prompt["global_steps"], "seq_len": 8 + length}
        await transfer_queue.async_kv_batch_put(
            keys=[f"{uid}_{session_id}_0"],
            partition_id="train",
            fields=list_of_dict_to_tensordict([fields]),
            tags=[tag],
        )


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> KVStore:
    kv = KVStore()
    for name in ("kv_batch_put", "async_kv_put", "async_kv_batch_put", "kv_batch_get",
                 "kv_list", "kv_clear"):  # fmt: skip
        monkeypatch.setattr(transfer_queue, name, getattr(kv, name))
    return kv


@pytest.fixture
def run_id() -> Iterator[str]:
    run = f"verl09-{uuid.uuid4().hex[:12]}"
    yield run
    httpx.delete(f"{SERVICE}/v1/runs/{run}", timeout=10)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "train.parquet", PROMPTS)


@pytest.fixture
def build(store: KVStore, run_id: str, data_file: Path) -> Iterator[Any]:
    """A GVMTrainer as verl's task runner builds it, its dataloader initialised, its agent loop
    the real worker code on the stand-in storage."""
    built: list[GVMTrainer] = []

    def make(service: str = SERVICE) -> GVMTrainer:
        config = compose_config(service, run_id, data_file)
        trainer = get_trainer_cls(config.trainer.v1.trainer_mode)(config=config)
        built.append(trainer)
        trainer.tokenizer = trainer.processor = None  # no model to load: prompts stay text
        trainer._init_dataloader()
        trainer.agent_loop_manager = AgentLoop(trainer.config)
        trainer.global_steps = 1
        return trainer

    yield make
    for trainer in built:
        trainer.close()


def run_step(trainer: GVMTrainer) -> tuple[KVBatchMeta, dict[str, Any]]:
    """What verl's ``step`` does around generation, minus the model: submit a batch, sample the
    replay buffer, pad to the mini-batch multiple; then the adapter's report."""
    trainer.timing_raw = {}
    trainer.prepare_step()  # _add_batch_to_generate -> _submit_batch_to_rollout
    batch, _ = trainer.replay_buffer.sample(
        global_steps=trainer.global_steps, partition_id="train", batch_size=BATCH
    )
    multiple = trainer.config.actor_rollout_ref.actor.ppo_mini_batch_size * N_ROLLOUT
    batch = upsample_batch_to_divisible_size(batch, multiple, eos_token_id=0)
    metrics: dict[str, Any] = {}
    started = time.perf_counter()
    trainer.report_step(batch, metrics)
    trainer.timing_raw["gvm_report"] = time.perf_counter() - started
    transfer_queue.kv_clear(keys=batch.keys, partition_id=batch.partition_id)
    trainer.global_steps += 1
    return batch, metrics


def allocation(run_id: str, step: int) -> dict[str, int]:
    answer = httpx.get(f"{SERVICE}/v1/runs/{run_id}/allocations/latest", timeout=10).json()
    assert answer["step"] == step, answer
    return {item["prompt_id"]: item["samples"] for item in answer["items"]}


def prompt_stats(run_id: str, prompt: str) -> dict[str, Any]:
    answer = httpx.get(f"{SERVICE}/v1/runs/{run_id}/prompts/{prompt}", timeout=10)
    assert answer.status_code == 200, answer.text
    stats: dict[str, Any] = answer.json()
    return stats


# --- the checks ------------------------------------------------------------------------------


def test_verl_imports_the_adapter_and_finds_the_trainer_by_the_docs_name() -> None:
    """A fresh ``import verl`` with the docs' environment, as in verl's Ray task runner."""
    env_lines, overrides = docs_command()
    mode = overrides["trainer.v1.trainer_mode"]
    code = (
        "import verl\n"  # imports VERL_USE_EXTERNAL_MODULES
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        f"cls = get_trainer_cls({mode!r})\n"
        "print(cls.__module__, cls.__name__, [c.__name__ for c in cls.__mro__[1:3]])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"} | env_lines
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last == "trainer_client.integrations.verl_v1 GVMTrainer ['PPOTrainerSync', 'PPOTrainer']"


def test_the_docs_lines_build_verls_sync_trainer(build: Any, run_id: str) -> None:
    trainer = build()
    assert isinstance(trainer, GVMTrainer)
    assert isinstance(trainer, PPOTrainerSync)
    # verl branches on the mode's name: everything past the lookup sees "sync".
    assert trainer.trainer_mode == "sync" == trainer.config.trainer.v1.trainer_mode
    assert type(trainer.replay_buffer).__name__ == "ReplayBuffer"  # not ReplayBufferAsync
    assert trainer.config.data.get("gen_batch_size") is None  # batches are not cut to 1 prompt
    assert trainer.gvm.per_prompt == N_ROLLOUT
    assert dict(trainer.gvm.run_config) == {"algo": "grpo", "max_samples": 32}
    run = httpx.get(f"{SERVICE}/v1/runs/{run_id}", timeout=10).json()
    assert run["config"]["algo"] == "grpo"
    assert run["config"]["max_samples"] == 32


def test_each_prompt_gets_its_allocation_and_the_service_stores_what_was_drawn(
    build: Any, run_id: str
) -> None:
    trainer = build()
    agent = trainer.agent_loop_manager
    seen: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    spreads = []
    for step in (1, 2, 3, 4):  # two epochs of two batches
        agent.sessions.clear()
        batch, metrics = run_step(trainer)
        plan = allocation(run_id, step)
        assert sum(plan.values()) == BATCH * N_ROLLOUT
        assert min(plan.values()) >= 2  # GRPO's floor: no group of one
        assert dict(agent.sessions) == plan  # verl's agent loop started n_i sessions per prompt
        assert len(batch) == sum(plan.values())  # the replay buffer took every trajectory
        assert metrics["gvm/fallback"] == 0.0
        assert metrics["gvm/spooled"] == 0.0
        assert metrics["gvm/samples_min"] == min(plan.values())
        assert metrics["gvm/samples_max"] == max(plan.values())
        for pid, n in plan.items():
            seen[pid] += n
            accepted[pid] += min(n, solved(pid))
        spreads.append(max(plan.values()) - min(plan.values()))
        print(
            f"step {step}: {plan}; allocate {trainer.timing_raw['gvm_allocate'] * 1e3:.1f} ms, "
            f"report {trainer.timing_raw['gvm_report'] * 1e3:.1f} ms"
        )
    assert spreads[:2] == [0, 0]  # no statistics yet: the even split
    assert max(spreads[2:]) > 0  # the second epoch follows the first epoch's acceptance
    for pid in seen:
        stats = prompt_stats(run_id, pid)
        assert (stats["samples"], stats["accepted"]) == (seen[pid], accepted[pid]), pid


def test_padding_rows_are_not_reported(build: Any, run_id: str) -> None:
    trainer = build()
    trainer.prepare_step()
    batch, _ = trainer.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=BATCH)
    padded = upsample_batch_to_divisible_size(batch, 12, eos_token_id=0)  # 16 -> 24 rows
    assert sum(bool(tag.get("is_padding")) for tag in padded.tags) == 24 - len(batch)
    trainer.report_step(padded, {})
    for pid, n in allocation(run_id, 1).items():
        assert prompt_stats(run_id, pid)["samples"] == n


def test_a_service_outage_falls_back_to_the_even_split_and_spools_the_report(
    build: Any, run_id: str
) -> None:
    with FaultProxy(parse_address(SERVICE)) as proxy:
        trainer = build(proxy.http_url)
        run_step(trainer)  # steps 1 and 2 through the proxy: statistics exist
        run_step(trainer)
        proxy.mode = "reset"
        trainer.agent_loop_manager.sessions.clear()
        _, metrics = run_step(trainer)  # step 3: the service unreachable
        assert set(trainer.agent_loop_manager.sessions.values()) == {N_ROLLOUT}  # even split
        assert metrics["gvm/fallback"] == 1.0
        assert metrics["gvm/spooled"] == 1.0
        proxy.mode = "pass"
        assert trainer.budget.flush() == 0  # the spooled report lands
    summary = httpx.get(f"{SERVICE}/v1/runs/{run_id}/summary", timeout=10).json()
    assert summary["last_step"] == 3


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("trainer.v1.gvm.run_id", None, r"\+trainer\.v1\.gvm\.run_id="),
        ("trainer.v1.gvm.per_prompt", 1, "must be >= 2"),
        ("trainer.v1.gvm.run_config", {"algo": "raft"}, "must be grpo"),
        ("trainer.v1.gvm.grad_norm_key", "x", "unknown trainer.v1.gvm keys"),
        ("algorithm.filter_groups.enable", True, "one by one"),
        ("trainer.v1.sampler.sync_refill_failed_groups", True, "one by one"),
    ],
)
def test_settings_it_cannot_honour_are_refused_at_start(
    key: str, value: Any, message: str, run_id: str, data_file: Path
) -> None:
    config = compose_config(SERVICE, run_id, data_file)
    with open_dict(config):
        OmegaConf.update(config, key, value, force_add=True)
    with pytest.raises(ValueError, match=message):
        GVMTrainer(config)
