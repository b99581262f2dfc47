"""The /docs page renders offline (Swagger UI from local assets) in headless Chromium, with
every request outside loopback blocked, and shows the allocation operation."""

from __future__ import annotations

from pathlib import Path

from support.browser import loopback_page


def test_docs_render_offline_and_show_the_allocation_operation(
    service_url: str, tmp_path: Path
) -> None:
    with loopback_page() as browsing:
        page = browsing.page
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
    assert browsing.blocked == []  # nothing tried to leave loopback (no CDN)
    assert browsing.errors == []
