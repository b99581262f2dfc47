"""The /docs page renders offline (Swagger UI from local assets) in headless Chromium, with
every request outside loopback blocked, and shows the allocation operation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Route, sync_playwright

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Playwright adds --headless and a throwaway profile dir itself.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


def test_docs_render_offline_and_show_the_allocation_operation(
    service_url: str, tmp_path: Path
) -> None:
    if CHROMIUM is None:
        message = "needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    blocked: list[str] = []

    def loopback_only(route: Route) -> None:
        host = urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.route("**/*", loopback_only)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{service_url}/docs", wait_until="networkidle")
            page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
            assert "GVM Budget" in page.inner_text(".swagger-ui .info .title")

            operation = page.locator("#operations-allocations-create_allocation")
            operation.wait_for(timeout=15_000)
            assert "/v1/runs/{run_id}/allocations" in operation.inner_text()
            operation.locator(".opblock-summary").click()  # expand: the example body renders
            page.wait_for_selector("#operations-allocations-create_allocation .body-param__example",
                                   timeout=15_000)  # fmt: skip
            assert "prompt_ids" in operation.inner_text()
            page.screenshot(path=str(tmp_path / "docs.png"))
        finally:
            browser.close()
    assert blocked == []  # nothing tried to leave loopback (no CDN)
    assert errors == []
