"""Settings: read from the environment once, typed, validated, tokens never shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from budget_service.settings import (
    Settings,
    describe_errors,
    get_settings,
    parse_api_tokens,
    token_digest,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "REDIS_CLUSTER", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("GVM_")]:
        monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert settings.redis_url is None  # -> embedded server
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.data_dir == Path(".gvm-budget")
    assert settings.api_tokens == ()
    assert not settings.auth_enabled
    assert settings.max_body_bytes == 16 * 1024 * 1024
    assert settings.report_id_ttl_s == 7 * 24 * 3600


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://db:6379/0")
    monkeypatch.setenv("REDIS_CLUSTER", "1")
    monkeypatch.setenv("GVM_PORT", "9001")
    monkeypatch.setenv("GVM_LOG_FORMAT", "json")
    monkeypatch.setenv("GVM_MAX_REPORT_OBSERVATIONS", "10")
    settings = Settings()
    assert settings.redis_url == "redis://db:6379/0"
    assert settings.redis_cluster is True
    assert settings.port == 9001
    assert settings.log_format == "json"
    assert settings.max_report_observations == 10


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GVM_PORT", "70000"),
        ("GVM_WORKERS", "0"),
        ("GVM_LOG_FORMAT", "xml"),
        ("GVM_REDIS_APPENDFSYNC", "no"),
        ("GVM_MAX_BODY_BYTES", "10"),
        ("GVM_REDIS_DEADLINE_S", "0.1"),  # shorter than one command's timeout
        ("GVM_API_TOKENS", "tok:"),
        ("REDIS_URL", "localhost:6379"),
    ],
)
def test_bad_values_are_rejected_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert name.removeprefix("GVM_").lower() in str(excinfo.value).lower()


def test_tokens_are_parsed_with_scopes_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVM_API_TOKENS", "s3cret-admin, team-tok:team-a- ,")
    settings = Settings()
    assert [t.run_prefix for t in settings.api_tokens] == [None, "team-a-"]
    assert settings.api_tokens[0].digest == token_digest("s3cret-admin")
    assert settings.auth_enabled
    shown = repr(settings) + str(settings.api_tokens) + str(settings.model_dump())
    assert "s3cret-admin" not in shown
    assert "team-tok" not in shown


def test_empty_redis_url_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "")
    assert Settings().redis_url is None


def test_token_entries() -> None:
    assert parse_api_tokens("") == ()
    with pytest.raises(ValueError, match="empty token"):
        parse_api_tokens(":prefix")


def test_get_settings_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    try:
        monkeypatch.setenv("GVM_PORT", "8100")
        first = get_settings()
        monkeypatch.setenv("GVM_PORT", "8200")
        assert get_settings() is first
        assert first.port == 8100
    finally:
        get_settings.cache_clear()


def test_errors_name_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVM_PORT", "abc")
    monkeypatch.setenv("REDIS_URL", "localhost:6379?password=s3cret")
    monkeypatch.setenv("GVM_API_TOKENS", "s3cret-token:")
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    described = describe_errors(excinfo.value)
    assert "  GVM_PORT='abc': Input should be a valid integer" in described
    assert "  REDIS_URL='localhost:6379?password=***': REDIS_URL must start with" in described
    assert "  GVM_API_TOKENS=<hidden>: GVM_API_TOKENS: an entry ends with ':'" in described
    assert "s3cret" not in described
