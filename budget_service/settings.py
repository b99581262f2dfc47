"""Service settings: one typed object read from the environment once.

Every variable is listed, with its default and meaning, in the README's "Service settings"
table. Nothing else in `budget_service` reads `os.environ`; tests override `get_settings`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ApiToken:
    """One entry of `GVM_API_TOKENS`: the token's SHA-256 digest and its run-id scope.

    Only the digest is kept, so a settings dump or traceback never shows a token.
    `run_prefix is None` means an admin token (every run).
    """

    digest: bytes
    run_prefix: str | None

    def __repr__(self) -> str:
        return f"ApiToken(digest=<hidden>, run_prefix={self.run_prefix!r})"


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_api_tokens(raw: str) -> tuple[ApiToken, ...]:
    """Parse `TOKEN` (admin) and `TOKEN:RUN_PREFIX` (scoped) entries, comma separated."""
    entries = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        token, sep, prefix = part.partition(":")
        if not token:
            raise ValueError("GVM_API_TOKENS: an entry has an empty token before ':'")
        if sep and not prefix:
            raise ValueError("GVM_API_TOKENS: an entry ends with ':' but names no run-id prefix")
        entries.append(ApiToken(token_digest(token), prefix or None))
    return tuple(entries)


class Settings(BaseSettings):
    """Everything the service and `gvm-budget serve` can be told from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="GVM_", extra="ignore", frozen=True, populate_by_name=True
    )

    # --- Redis -----------------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "GVM_REDIS_URL"),
        description="Redis to use (redis://, rediss://, unix://). Unset: start an embedded server.",
    )
    redis_cluster: bool = Field(
        default=False,
        validation_alias=AliasChoices("REDIS_CLUSTER", "GVM_REDIS_CLUSTER"),
        description="Treat REDIS_URL as a seed node of a Redis Cluster.",
    )
    redis_timeout_s: float = Field(default=1.0, gt=0, description="Socket timeout per command.")
    redis_connect_timeout_s: float = Field(default=0.5, gt=0)
    redis_retries: int = Field(default=1, ge=0, le=10, description="Retries on connection errors.")
    redis_deadline_s: float = Field(
        default=2.5, gt=0, description="Hard cap on the Redis work of one request; then 503."
    )
    redis_max_connections: int = Field(default=64, ge=1)
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After header on 503 answers.")
    redis_min_replicas_ack: int = Field(
        default=0,
        ge=0,
        description="Replicas that must hold a report (WAIT) before it is answered 200; 0 = off.",
    )
    redis_ack_timeout_s: float = Field(
        default=0.5, gt=0, description="How long a report waits for those replicas; then 503."
    )

    # --- embedded server (only when REDIS_URL is unset) --------------------------------------
    data_dir: Path = Field(default=Path(".gvm-budget"))
    redis_server: Path | None = Field(
        default=None, description="Server binary for embedded mode; default: search (see README)."
    )
    redis_appendfsync: Literal["everysec", "always"] = "everysec"

    # --- HTTP ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    api_tokens: Annotated[tuple[ApiToken, ...], NoDecode] = Field(default=(), repr=False)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR"),
        description="Set by `gvm-budget serve --workers N>1`: /metrics aggregates all workers.",
    )

    # --- limits ----------------------------------------------------------------------------
    max_body_bytes: int = Field(default=16 * MiB, ge=1024)
    max_report_observations: int = Field(default=16_384, ge=1)
    max_allocation_prompts: int = Field(default=65_536, ge=1)
    max_prompt_id_length: int = Field(default=256, ge=1, le=65_536)
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request body must arrive within this time; else 408."
    )
    timeout_keep_alive_s: int = Field(
        default=5, ge=1, description="`gvm-budget serve`: idle keep-alive connections close."
    )
    limit_concurrency: int | None = Field(
        default=None, ge=1, description="`gvm-budget serve`: 503 beyond this many connections."
    )

    # --- retention -------------------------------------------------------------------------
    report_id_ttl_s: int = Field(
        default=7 * 24 * 3600, ge=1, description="Idempotency window of a report_id (seconds)."
    )
    report_id_max: int = Field(
        default=100_000, ge=1, description="At most this many report ids remembered per run."
    )
    run_ttl_s: int = Field(
        default=0, ge=0, description="Idle runs expire after this many seconds; 0 = never."
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _url_or_none(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip() or None  # REDIS_URL= (empty) means unset, as in shells
        if isinstance(value, str) and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object) -> object:
        if value is None:
            return ()
        if isinstance(value, str):
            return parse_api_tokens(value)
        return value

    @model_validator(mode="after")
    def _deadline_covers_one_try(self) -> Settings:
        if self.redis_deadline_s < self.redis_timeout_s:
            raise ValueError(
                "GVM_REDIS_DEADLINE_S must be >= GVM_REDIS_TIMEOUT_S "
                f"({self.redis_deadline_s} < {self.redis_timeout_s})"
            )
        return self

    @model_validator(mode="after")
    def _ack_fits_one_try(self) -> Settings:
        # WAIT blocks the connection: past the socket timeout redis-py would drop it mid-wait.
        if self.redis_min_replicas_ack and self.redis_ack_timeout_s >= self.redis_timeout_s:
            raise ValueError(
                "GVM_REDIS_ACK_TIMEOUT_S must be < GVM_REDIS_TIMEOUT_S "
                f"({self.redis_ack_timeout_s} >= {self.redis_timeout_s})"
            )
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_tokens)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()


def env_name(field: str) -> str:
    """The environment variable that sets `field`: ``GVM_PORT`` for ``port``, ``REDIS_URL``."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"GVM_{field.upper()}"


def describe_errors(exc: ValidationError) -> str:
    """One line per invalid setting, named by its environment variable (what the user set)."""
    lines = []
    for error in exc.errors():
        where = str(error["loc"][0]) if error["loc"] else None
        message = error["msg"].removeprefix("Value error, ")
        if where is None:  # a check across settings: its message names the variables
            lines.append(f"  {message}")
            continue
        name = env_name(where) if where in Settings.model_fields else where
        value = error["input"]
        shown = "<hidden>" if name.endswith("API_TOKENS") else repr(value)
        if name.endswith("REDIS_URL") and isinstance(value, str):
            shown = repr(masked_url(value))
        lines.append(f"  {name}={shown}: {message}")
    return "\n".join(lines)


def masked_url(url: str) -> str:
    """`url` with its password, in the userinfo or a ``password=`` query, shown as ``***``."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if ":" in userinfo:
        url = url.replace(parts.netloc, userinfo.partition(":")[0] + f":***{at}{host}", 1)
    if parts.query:
        query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", parts.query)
        url = url.replace(f"?{parts.query}", f"?{query}", 1)
    return url
