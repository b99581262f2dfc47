"""docker-compose.yml and the Dockerfile: the invariants a later edit must not silently break.

No Docker engine runs here, so the files are checked by construction: the compose file is read
with PyYAML and its `${VAR:-default}` values are resolved with their defaults (the same rule
Compose applies), then held against the service's `Settings`, the trainer's `TrainConfig` and
the Dockerfile's stages. `.ci/check-docker` (the real Compose binary and hadolint) is run here
too, on the real files and on broken copies, to prove that CI fails on a broken file.

The helpers that read the files live in tests/support/compose.py.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support import REPO
from support.compose import (
    CHECK_DOCKER,
    COMPOSE_FILE,
    DOCKERFILE,
    MONITORING,
    SERVICE,
    TRAINERS,
    command_args,
    compose_binary,
    dockerfile_stages,
    environment,
    load_compose,
    mounts,
    resolved_service,
    settings_env_names,
    stage_env,
    stage_exec,
    stage_workdir,
    variables,
)
from support.readme import DOCS, section

from budget_service.settings import Settings
from trainer_client.trainer.config import TrainConfig, build_parser, parse_args


def test_redis_is_the_official_image_pinned_to_a_release() -> None:
    image = load_compose()["services"]["redis"]["image"]
    name, _, tag = image.partition(":")
    assert name in ("redis", "valkey/valkey"), image
    assert re.match(r"^\d+\.\d+", tag), f"pin a release, not {tag or 'latest'!r}"


def test_redis_runs_with_aof_and_never_evicts() -> None:
    args = command_args(resolved_service("redis"))
    assert args[0] == "redis-server"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in ("everysec", "always")
    assert options["--maxmemory-policy"] == "noeviction"
    # The fsync policy may be tightened from the environment, but only to a durable one.
    stricter = command_args(resolved_service("redis", {"GVM_REDIS_APPENDFSYNC": "always"}))
    assert "always" in stricter


def test_redis_data_lives_in_a_named_volume_and_is_not_published() -> None:
    redis = resolved_service("redis")
    assert mounts(redis)["/data"] in load_compose()["volumes"], "AOF must be in a named volume"
    assert "ports" not in redis, "only the service talks to Redis"


def test_redis_healthcheck_pings_and_wants_pong() -> None:
    test = load_compose()["services"]["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert "redis-cli ping" in test[1]
    assert "PONG" in test[1], "an error reply (LOADING) must not count as healthy"


# -- the service ----------------------------------------------------------------------------------


def test_service_is_built_from_the_service_target() -> None:
    service = load_compose()["services"][SERVICE]
    assert service["build"] == {"context": ".", "target": "service"}
    assert "service" in dockerfile_stages()
    assert stage_exec("service", "CMD")[:2] == ["gvm-budget", "serve"]
    assert "USER 10001:10001" in {f"{i} {a}" for i, a in dockerfile_stages()["service"]}


def test_service_container_is_locked_down() -> None:
    service = load_compose()["services"][SERVICE]
    assert service["read_only"] is True
    assert service["tmpfs"] == ["/tmp"]  # PROMETHEUS_MULTIPROC_DIR of several workers
    assert service["cap_drop"] == ["ALL"]


def test_service_waits_for_a_healthy_redis() -> None:
    depends = load_compose()["services"][SERVICE]["depends_on"]
    assert depends == {"redis": {"condition": "service_healthy"}}


def test_service_environment_names_are_settings() -> None:
    env = environment(load_compose()["services"][SERVICE])
    unknown = set(env) - settings_env_names()
    assert not unknown, f"not read by budget_service.settings.Settings: {sorted(unknown)}"
    resolved = environment(resolved_service(SERVICE))
    assert resolved["REDIS_URL"] == "redis://redis:6379/0"
    assert resolved["GVM_HOST"] == "0.0.0.0"
    # Tokens are optional: passed through from the host, empty (auth off) when unset.
    assert env["GVM_API_TOKENS"] == "${GVM_API_TOKENS:-}"


def test_service_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper() in settings_env_names() or name.startswith("GVM_"):
            monkeypatch.delenv(name)
    tokens = {"GVM_API_TOKENS": "admin-token,trainer-token:compose-"}
    for name, value in environment(resolved_service(SERVICE, tokens)).items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.host == "0.0.0.0"
    assert len(settings.api_tokens) == 2
    monkeypatch.setenv("GVM_API_TOKENS", environment(resolved_service(SERVICE))["GVM_API_TOKENS"])
    assert Settings().api_tokens == (), "the default must leave authentication off"


def test_service_port_agrees_everywhere() -> None:
    service = resolved_service(SERVICE)
    port = int(environment(service)["GVM_PORT"])
    (published,) = service["ports"]
    assert published.rsplit(":", 1)[1] == str(port)
    assert published.startswith("127.0.0.1:"), "publish on the host's loopback by default"
    assert f"EXPOSE {port}" in {f"{i} {a}" for i, a in dockerfile_stages()["service"]}
    probe = service["healthcheck"]["test"]
    assert f"http://127.0.0.1:{port}/healthz" in probe[-1]
    for trainer in TRAINERS:
        url = parse_args(command_args(resolved_service(trainer)))[0].service_url
        assert (urlsplit(url).hostname, urlsplit(url).port) == (SERVICE, port)


def test_service_healthcheck_uses_only_the_standard_library() -> None:
    """The slim image has no curl or wget: the probe is `python -c` with urllib."""
    for probe in (
        load_compose()["services"][SERVICE]["healthcheck"]["test"],
        json.loads(
            next(a for i, a in dockerfile_stages()["service"] if i == "HEALTHCHECK").split(
                "CMD ", 1
            )[1]
        ),
    ):
        assert probe[-3:-1] == ["python", "-c"], probe
        assert "urllib.request" in probe[-1]
        assert "/healthz" in probe[-1]
        compile(probe[-1], "healthcheck", "exec")  # it is valid Python


# -- the trainers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "profile"), TRAINERS.items())
def test_trainer_is_in_its_profile_and_waits_for_a_healthy_service(name: str, profile: str) -> None:
    trainer = load_compose()["services"][name]
    assert trainer["profiles"] == [profile]
    assert trainer["depends_on"] == {SERVICE: {"condition": "service_healthy"}}
    assert trainer["build"] == {"context": ".", "target": name}
    assert stage_exec(name, "ENTRYPOINT") == ["gvm-train"]


def test_gpu_trainer_reserves_an_nvidia_gpu() -> None:
    trainer = resolved_service("trainer")
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d["driver"] == "nvidia" and "gpu" in d["capabilities"] and d.get("count", 0) in (1, "all")
        for d in devices
    ), devices
    config = parse_args(command_args(trainer))[0]
    assert (config.backend, config.device) == ("vllm", "cuda")


def test_cpu_trainer_needs_no_gpu_and_runs_the_tiny_model() -> None:
    trainer = resolved_service("trainer-cpu")
    assert "deploy" not in trainer
    config = parse_args(command_args(trainer))[0]
    assert (config.backend, config.device) == ("hf", "cpu")
    assert (config.model, config.task) == ("", "arithmetic"), "tiny model, synthetic task"


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_command_is_a_valid_config(name: str) -> None:
    """Every flag is one of `gvm-train`'s and the defaults make a valid `TrainConfig`."""
    args = command_args(resolved_service(name))
    known = set(build_parser()._option_string_actions)  # every --flag and --no-flag
    flags = {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}
    assert flags <= known, f"not gvm-train flags: {sorted(flags - known)}"
    config, _ = parse_args(args)
    assert isinstance(config, TrainConfig)
    assert config.run_id, "a fixed run id, so that a restart finds its run and output again"
    assert not config.progress, "no progress bars in container logs"


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_settings_variables_follow_the_flag_names(name: str) -> None:
    """`--some-key=${GVM_TRAIN_SOME_KEY:-...}`: one documented rule for every run setting."""
    command = load_compose()["services"][name]["command"]
    assert isinstance(command, str), "a string command, so GVM_TRAIN_ARGS can add flags"
    pairs = re.findall(r"--([a-z0-9-]+)=\$\{(GVM_TRAIN_[A-Z0-9_]+)", command)
    assert len(pairs) >= 8
    for flag, variable in pairs:
        assert variable == "GVM_TRAIN_" + flag.replace("-", "_").upper()
        assert flag.replace("-", "_") in TrainConfig.__dataclass_fields__
    assert command.rstrip().endswith("${GVM_TRAIN_ARGS:-}"), "extra flags come last, and win"
    extra = {"GVM_TRAIN_STEPS": "7", "GVM_TRAIN_ARGS": "--steps 3 --kl-coef 0.01"}
    config = parse_args(command_args(resolved_service(name, extra)))[0]
    assert (config.steps, config.kl_coef) == (3, 0.01)


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_token_and_volumes_match_the_image(name: str) -> None:
    env = environment(load_compose()["services"][name])
    assert env["GVM_API_TOKEN"] == "${GVM_API_TOKEN:-}"
    (api_token,) = [a for a in build_parser()._actions if a.dest == "api_token"]
    assert "GVM_API_TOKEN" in (api_token.help or ""), "the trainer documents reading it"
    volumes = mounts(resolved_service(name))
    image_env, workdir = stage_env(name), stage_workdir(name)
    # Models and caches go where the image points XDG_CACHE_HOME and HF_HOME, into a volume.
    assert image_env["XDG_CACHE_HOME"] == "/cache"
    assert image_env["HF_HOME"].startswith("/cache/")
    assert volumes["/cache"] in load_compose()["volumes"]
    # The default out_dir is runs/<run_id> under the working directory: a volume keeps it.
    assert TrainConfig().output_dir.parts[0] == "runs"
    assert volumes[f"{workdir}/runs"] in load_compose()["volumes"]


def test_gpu_trainer_mounts_datasets_read_only() -> None:
    volumes = resolved_service("trainer")["volumes"]
    (data,) = [v for v in volumes if v.split(":")[1] == "/data"]
    assert data.endswith(":ro")


# -- monitoring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MONITORING)
def test_monitoring_is_its_own_profile_on_loopback_with_the_repository_configs(name: str) -> None:
    """Opt-in, pinned, reachable from this host only, and fed from configs/ (read-only)."""
    service = resolved_service(name)
    assert service["profiles"] == ["monitoring"]
    assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), service["image"]
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    binds = [v for v in service["volumes"] if v.startswith("./")]
    assert binds
    for volume in binds:
        source, _, mode = volume.split(":")
        assert mode == "ro", volume
        assert source.startswith("./configs/"), volume
        assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


# -- the files as a whole --------------------------------------------------------------------------


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching line decides; a pattern matching a folder covers its
    contents; `**/x` matches x at any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in patterns:
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.rsplit("/", 1)[-1], pattern[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_everything_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources: set[str] = set()
    for stage in dockerfile_stages().values():
        for instruction, args in stage:
            if instruction == "COPY" and "--from=" not in args:
                sources.update(args.split()[:-1])
            if instruction == "RUN":
                sources.update(re.findall(r"--mount=type=bind,source=([^,\s]+)", args))
    assert {"pyproject.toml", "budget_service", "trainer_client"} <= sources
    for source in sorted(sources):
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not _dockerignored(source, patterns), f".dockerignore leaves {source} out"
    for private in (".venv", ".git", "runs", "budget_service/__pycache__", ".gvm-budget"):
        assert _dockerignored(private, patterns), f"{private} would be sent to the daemon"


def test_every_variable_is_documented() -> None:
    text = section(DOCS / "deployment.md", "Run with Docker Compose")
    missing = sorted(v for v in variables(load_compose()) if v not in text)
    assert not missing, f"docs/deployment.md 'Run with Docker Compose' does not mention {missing}"


def test_compose_binary_resolves_the_same_commands() -> None:
    """Our reading of the file agrees with Compose's own (interpolation, splitting, merges)."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
    out = subprocess.run(
        [compose_binary(), "-f", COMPOSE_FILE, "--env-file", os.devnull, "--profile", "*",
         "config", "--format", "json"],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    ).stdout  # fmt: skip
    services = json.loads(out)["services"]
    assert set(services) == {"redis", SERVICE, *TRAINERS, *MONITORING}
    for name in services:
        mine = resolved_service(name)
        assert services[name].get("command") in (None, command_args(mine)), name
        assert services[name].get("environment", {}) == environment(mine), name


def _check_docker(*args: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(CHECK_DOCKER), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_check_docker_passes_on_the_repository_files() -> None:
    result = _check_docker()
    assert result.returncode == 0, result.stdout + result.stderr
    for profile in ("(default)", "cpu", "gpu", "monitoring", "*"):
        assert f"compose config ok, profile {profile}:" in result.stdout
    assert "hadolint ok" in result.stdout


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("condition: service_healthy", "condition: service_happy"),  # invalid value
        ("    image: redis:7.4-alpine\n", "    image: redis:7.4-alpine\n    imagee: typo\n"),
        ("${GVM_WORKERS:-1}", "${GVM_WORKERS}"),  # unset variable: only a warning in Compose
    ],
)
def test_check_docker_fails_on_a_broken_compose_file(tmp_path: Path, old: str, new: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    result = _check_docker(broken)
    assert result.returncode != 0, result.stdout
    assert "compose config FAILED" in result.stderr


def test_check_docker_fails_on_a_dockerfile_lint_error(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    broken = tmp_path / "Dockerfile"
    # an unpinned base image from an untrusted registry, and `cd` instead of WORKDIR
    broken.write_text(
        text.replace("FROM python:3.12-slim-trixie AS", "FROM quay.io/python AS", 1)
        + "\nRUN cd /tmp && echo done\n"
    )
    result = _check_docker(COMPOSE_FILE, broken)
    assert result.returncode != 0
    assert "DL3026" in result.stdout  # untrusted registry
    assert "DL3003" in result.stdout  # cd instead of WORKDIR
