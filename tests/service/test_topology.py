"""The compose topology without Docker: Redis, the service and the CPU trainer as processes.

Each process gets what docker-compose.yml (and, for what the image sets, the Dockerfile) gives
its container: the same command line, environment and healthcheck. Only what a container
provides is replaced: compose hostnames by 127.0.0.1 and free ports, container paths (volumes,
working directories) by temporary folders. The trainer runs two steps against the service, and
the HTTP API must then hold exactly the statistics the trainer logged, and the allocation it was
served. Authentication is on, with the token passed the way the compose file passes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from support.compose import (
    SERVICE,
    command_args,
    environment,
    mounts,
    resolved_service,
    stage_env,
    stage_exec,
    stage_workdir,
)

from budget_service.embedded import find_cli_binary, find_server_binary, free_port
from trainer_client.trainer.config import parse_args

# Trains: builds and warms up the tiny model on first use (cached afterwards), then two steps.
pytestmark = pytest.mark.slow

TOKEN = "topology-token"
# What a user would put in .env: two steps, the service locked with a token the trainer has.
VARIABLES = {"GVM_TRAIN_STEPS": "2", "GVM_API_TOKENS": TOKEN, "GVM_API_TOKEN": TOKEN}
TRAINER = "trainer-cpu"
BIN = Path(sys.executable).parent  # console scripts of this environment (the image's /opt/venv)


class Containers:
    """Stand-ins for what Docker provides: ports, volumes and working directories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis_port = free_port()
        self.service_port = free_port()
        # The model cache volume is the user's own cache (XDG_CACHE_HOME or ~/.cache): the tiny
        # model's build and warm-up are deterministic and cached under a content hash, so this
        # test shares them with every other test that trains instead of repeating them.
        self.cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        service = resolved_service(SERVICE)
        self.hosts = {
            "redis:6379": f"127.0.0.1:{self.redis_port}",
            f"{SERVICE}:{environment(service)['GVM_PORT']}": f"127.0.0.1:{self.service_port}",
        }

    def path(self, container_path: str) -> Path:
        """Where a container path lives here: the cache volume, else under the test's tmp dir."""
        if container_path == "/cache" or container_path.startswith("/cache/"):
            return self.cache / container_path.removeprefix("/cache").lstrip("/")
        local = self.root / container_path.lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        return local

    def localize(self, value: str) -> str:
        for host, local in self.hosts.items():
            value = value.replace(f"//{host}", f"//{local}")
        if value.startswith("/") and not value.startswith("//"):
            return str(self.path(value))
        return value

    def env(self, image_env: Mapping[str, str], compose_env: Mapping[str, str]) -> dict[str, str]:
        """This machine's environment, then the image's ENV, then the compose `environment`."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GVM_", "REDIS_", "PROMETHEUS_", "HF_", "XDG_CACHE"))
        }
        # PATH and the build tool's variables belong to the image's layout, not to the app.
        image_env = {
            k: v for k, v in image_env.items() if k != "PATH" and not k.startswith(("UV_", "VIRT"))
        }
        env.update({k: self.localize(v) for k, v in {**image_env, **compose_env}.items()})
        if "GVM_HOST" in compose_env:  # a container listens on all of its interfaces
            env["GVM_HOST"] = "127.0.0.1"
        if "GVM_PORT" in compose_env:
            env["GVM_PORT"] = str(self.service_port)
        return env


@contextlib.contextmanager
def running(argv: list[str], env: Mapping[str, str], cwd: Path, log: Path) -> Iterator[Path]:
    """A long-running process, stopped (SIGTERM, then SIGKILL) when the block ends."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=out, stderr=out)
    try:
        yield log
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(probe: list[str], log: Path, timeout: float = 60.0) -> None:
    """Run a compose healthcheck until it passes, like Docker does before `service_healthy`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(probe, capture_output=True, timeout=10, check=False).returncode == 0:
            return
        time.sleep(0.2)
    pytest.fail(f"healthcheck {probe} never passed; log:\n{log.read_text()[-3000:]}")


def healthcheck(service: Mapping[str, Any], containers: Containers) -> list[str]:
    """The service's compose healthcheck as a command for this machine."""
    kind, *rest = service["healthcheck"]["test"]
    if kind == "CMD-SHELL":
        (script,) = rest
        cli = find_cli_binary(find_server_binary())
        return ["sh", "-c", script.replace("redis-cli", f"{cli} -p {containers.redis_port}")]
    assert kind == "CMD"
    port = containers.service_port
    argv = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in rest]
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


def test_compose_topology_trains_two_steps(tmp_path: Path) -> None:
    containers = Containers(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()

    # redis: the compose command line (AOF on, fsync policy, eviction) on a real server binary
    redis_service = resolved_service("redis", VARIABLES)
    args = command_args(redis_service)
    assert args[0] == "redis-server"
    data = containers.path("/data")  # the official image runs in its /data volume
    redis_argv = [str(find_server_binary()), *args[1:], "--port", str(containers.redis_port)]
    redis_argv += ["--bind", "127.0.0.1"]

    service = resolved_service(SERVICE, VARIABLES)
    service_env = containers.env(stage_env("service"), environment(service))
    service_argv = stage_exec("service", "CMD")
    service_argv[0] = str(BIN / service_argv[0])

    trainer = resolved_service(TRAINER, VARIABLES)
    for target in mounts(trainer):
        containers.path(target)
    trainer_env = containers.env(stage_env(TRAINER), environment(trainer))
    trainer_args = [containers.localize(a) for a in command_args(trainer)]
    config = parse_args(trainer_args)[0]
    base_url = f"http://127.0.0.1:{containers.service_port}"
    assert config.service_url == base_url
    assert config.steps == 2

    with (
        running(redis_argv, containers.env({}, {}), data, logs / "redis.log") as redis_log,
        contextlib.ExitStack() as stack,
    ):
        wait_healthy(healthcheck(redis_service, containers), redis_log)
        with redis.Redis(port=containers.redis_port) as client:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}

        service_log = stack.enter_context(
            running(
                service_argv,
                service_env,
                containers.path(stage_workdir("service")),
                logs / "service.log",
            )
        )
        wait_healthy(healthcheck(service, containers), service_log)

        result = subprocess.run(
            [str(BIN / stage_exec(TRAINER, "ENTRYPOINT")[0]), *trainer_args],
            env=trainer_env,
            cwd=containers.path(stage_workdir(TRAINER)),
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        output = result.stdout[-4000:] + result.stderr[-4000:]
        assert result.returncode == 0, output

        # the trainer's own record of the two steps, in the checkpoints volume
        run_dir = containers.path(f"{stage_workdir(TRAINER)}/runs") / config.run_name
        summary = json.loads((run_dir / "summary.json").read_text())
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [s["step"] for s in steps] == [0, 1], output
        assert summary["steps"] == 2
        assert not any(s["fallback"] for s in steps), "every allocation came from the service"
        assert summary["spooled_pending"] == 0

        # the same numbers, as the service holds them (token from the compose environment)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=10) as api:
            assert httpx.get(f"{base_url}/v1/runs/{config.run_name}").status_code == 401
            stats = api.get(f"/v1/runs/{config.run_name}/summary").raise_for_status().json()
            assert stats["samples"] == sum(s["generated"] for s in steps) > 0
            assert stats["accepted"] == sum(s["accepted"] for s in steps)
            assert stats["last_step"] == 1
            assert stats["reports"] == 2  # one report per step in online mode
            latest = api.get(f"/v1/runs/{config.run_name}/allocations/latest")
            allocation = latest.raise_for_status().json()
            assert allocation["step"] == 1
            assert allocation["total"] == steps[-1]["allocated"] == config.budget
            assert len(allocation["items"]) == config.batch_size

    # acknowledged reports went through the append-only file of the Redis volume
    aof = [p for p in data.rglob("*.aof") if p.stat().st_size > 0]
    assert aof, f"no AOF written under {data}"
