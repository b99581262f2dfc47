"""An unreachable Redis is reported with its URL, password masked."""

from collections.abc import Callable
from typing import Any

import httpx

from budget_service.embedded import free_port
from budget_service.settings import masked_url


def test_readyz_names_the_unreachable_url_without_its_password(
    start_service: Callable[..., Any],
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    service = start_service(redis=url)
    answer = httpx.get(f"{service.url}/readyz", timeout=10)
    assert answer.status_code == 503
    message = answer.json()["error"]["message"]
    assert f"Redis unavailable at {masked_url(url)}: ConnectionError" == message
    log = service.log_path.read_text()
    assert masked_url(url) in log  # the warning the service logs
    assert "s3cret" not in log


def test_masked_url_hides_passwords_only() -> None:
    assert masked_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert masked_url("rediss://user:p%40ss@[::1]:6380") == "rediss://user:***@[::1]:6380"
    assert (
        masked_url("unix:///run/r.sock?db=1&password=pw") == "unix:///run/r.sock?db=1&password=***"
    )
    assert masked_url("redis://h:6379") == "redis://h:6379"
