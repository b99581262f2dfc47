"""The service's malloc settings: freed numpy arrays are reused without page faults."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's mallopt and ru_minflt: Linux only"
)

# Five arrays of about 8 MB alive at once, freed together: the shape of one large allocation
# request. Prints the minor page faults of five such rounds after a first one.
SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    if sys.argv[1] == "tuned":
        from budget_service.memory import retain_freed_memory
        assert retain_freed_memory()
    def request():
        live = [np.ones(1_000_000 + 1000 * i) for i in range(5)]
        return sum(float(a[-1]) for a in live)
    request()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        request()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_freed_arrays_come_back_without_page_faults() -> None:
    plain, tuned = faults("plain"), faults("tuned")
    # glibc's defaults: the pages go back to the kernel each round (about 11,000 faults with
    # 4 KiB pages, fewer where transparent huge pages back them); the settings keep them
    assert plain >= 50
    assert tuned <= plain / 10


def test_the_service_applies_the_settings_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from budget_service import app as app_module
    from budget_service.settings import Settings

    calls: list[str] = []
    monkeypatch.setattr(app_module, "retain_freed_memory", lambda: calls.append("x") or True)
    with TestClient(app_module.create_app(Settings(redis_url="redis://127.0.0.1:1/0"))):
        pass
    assert calls == ["x"]
