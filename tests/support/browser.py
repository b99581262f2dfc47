"""Headless Chromium for the page tests: Debian's chromium driven by Playwright, with every
request outside loopback blocked (the pages must work offline: no CDN)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, sync_playwright

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Playwright adds --headless and a throwaway profile dir itself.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


@dataclass
class Browsing:
    page: Page
    blocked: list[str] = field(default_factory=list)  # requests that tried to leave loopback
    errors: list[str] = field(default_factory=list)  # uncaught script errors


@contextmanager
def loopback_page(width: int = 1280, height: int = 900) -> Iterator[Browsing]:
    """A fresh page; skipped without chromium locally, failed without it on CI."""
    if CHROMIUM is None:
        message = "needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            browsing = Browsing(page)

            def loopback_only(route: Route) -> None:
                if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
                    route.continue_()
                else:
                    browsing.blocked.append(route.request.url)
                    route.abort()

            page.route("**/*", loopback_only)
            page.on("pageerror", lambda exc: browsing.errors.append(str(exc)))
            yield browsing
        finally:
            browser.close()
