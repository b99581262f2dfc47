"""The run page in headless Chromium against a live service and a run trained over a few steps:
what it draws is what the JSON endpoints say, it follows a training run, it works offline, and
behind bearer tokens it shows nothing until the user gives a token that covers the run."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page
from support.browser import loopback_page
from support.services import ServiceProcess

PROMPTS = 12
BUDGET = 96


def train_step(client: httpx.Client, run_id: str, step: int, rng: np.random.Generator) -> Any:
    """One step of a simulated trainer: allocate the batch, then report what the samples gave.
    Prompt i succeeds with probability (i + 1) / (PROMPTS + 2), gradient norms near 1 + i / 4."""
    prompt_ids = [f"prompt-{i:02d}" for i in range(PROMPTS)]
    request = {"prompt_ids": prompt_ids, "budget": BUDGET, "step": step}
    allocation = client.post(f"/v1/runs/{run_id}/allocations", json=request).raise_for_status()
    observations = []
    for i, item in enumerate(allocation.json()["items"]):
        n = item["samples"]
        if n == 0:
            continue
        accepted = int(rng.binomial(n, (i + 1) / (PROMPTS + 2)))
        norm = (1 + i / 4) * accepted * rng.uniform(0.8, 1.2)
        observations.append({"prompt_id": item["prompt_id"], "samples": n, "accepted": accepted,
                             "grad_norm_sum": norm, "grad_norm_count": accepted})  # fmt: skip
    report = {"report_id": f"step-{step}", "step": step, "observations": observations}
    client.post(f"/v1/runs/{run_id}/observations", json=report).raise_for_status()
    return allocation.json()


def train(client: httpx.Client, run_id: str, steps: int, seed: int = 0) -> list[Any]:
    client.put(f"/v1/runs/{run_id}", json={"min_samples": 1, "max_samples": 24}).raise_for_status()
    rng = np.random.default_rng(seed)
    return [train_step(client, run_id, step, rng) for step in range(1, steps + 1)]


def _attrs(page: Page, selector: str, *names: str) -> list[tuple[str, ...]]:
    found: list[list[str]] = page.eval_on_selector_all(
        selector, "(els, names) => els.map(e => names.map(n => e.getAttribute(n)))", list(names)
    )
    return [tuple(row) for row in found]


def _wait_for_count(page: Page, selector: str, count: int) -> None:
    page.wait_for_function(
        "([s, n]) => document.querySelectorAll(s).length === n", arg=[selector, count],
        timeout=15_000,
    )  # fmt: skip


def assert_shows(page: Page, allocations: list[Any], run: Any) -> None:
    """The page's charts, facts and config hold the run's latest allocation and history."""
    latest = allocations[-1]
    _wait_for_count(page, "#ratio circle", len(allocations))
    # One bar per prompt, most samples first, with the served counts.
    ordered = sorted(latest["items"], key=lambda it: -it["samples"])
    bars = _attrs(page, "#allocation rect", "data-prompt-id", "data-samples", "data-reason")
    assert bars == [(it["prompt_id"], str(it["samples"]), it["reason"]) for it in ordered]
    # Histograms: ten bins that count every prompt of the batch, p_hat binned on [0, 1].
    p_bins = [int(c) for (c,) in _attrs(page, "#p-hat rect", "data-count")]
    expected = np.bincount([min(9, math.floor(it["p_hat"] * 10)) for it in latest["items"]],
                           minlength=10)  # fmt: skip
    assert p_bins == expected.tolist()
    g_bins = [int(c) for (c,) in _attrs(page, "#g-hat rect", "data-count")]
    assert len(g_bins) == 10
    assert sum(g_bins) == PROMPTS
    # History: one point per allocation, predicted/uniform and total samples.
    ratio = _attrs(page, "#ratio circle", "data-step", "data-value")
    assert [int(s) for s, _ in ratio] == [a["step"] for a in allocations]
    assert [float(v) for _, v in ratio] == pytest.approx(
        [a["predicted_variance"] / a["uniform_variance"] for a in allocations]
    )
    totals = _attrs(page, "#totals circle", "data-value")
    assert [int(v) for (v,) in totals] == [a["total"] for a in allocations]
    # Facts and config.
    assert page.inner_text("[data-fact=step]") == str(latest["step"])
    assert page.inner_text("[data-fact='total samples']") == str(latest["total"])
    shown: dict[str, str] = dict(page.eval_on_selector_all(
        "#config tr", "rows => rows.map(r => [r.dataset.key, r.querySelector('td').textContent])"
    ))  # fmt: skip
    assert set(shown) == set(run["config"])
    for key, value in run["config"].items():
        if value is None:
            assert shown[key] == "–", key
        elif isinstance(value, bool | str):
            assert shown[key] == (json.dumps(value) if isinstance(value, bool) else value), key
        else:
            assert float(shown[key]) == value, key


def test_run_page_draws_the_run_and_follows_it(
    service_url: str, run_id: str, tmp_path: Path
) -> None:
    with httpx.Client(base_url=service_url, timeout=30) as client, loopback_page() as browsing:
        allocations = train(client, run_id, steps=4)
        page = browsing.page
        page.clock.install()  # the page polls on a timer: the test moves its clock, not waits
        # The front page's form leads to the run page.
        page.goto(f"{service_url}/")
        page.fill("input[name=run_id]", run_id)
        page.click("button[type=submit]")
        page.wait_for_url(f"{service_url}/ui/runs/{run_id}")
        assert_shows(page, allocations, client.get(f"/v1/runs/{run_id}").json())
        page.screenshot(path=str(tmp_path / "run-page.png"), full_page=True)

        # Training goes on: the open page picks up the next step by itself.
        allocations.append(train_step(client, run_id, 5, np.random.default_rng(5)))
        page.clock.fast_forward(60_000)  # a minute on: longer than any poll interval
        assert_shows(page, allocations, client.get(f"/v1/runs/{run_id}").json())
    assert browsing.blocked == []  # no CDN: everything came from the service
    assert browsing.errors == []


def test_run_page_names_a_missing_run(service_url: str, run_id: str) -> None:
    with loopback_page() as browsing:
        browsing.page.goto(f"{service_url}/ui/runs/{run_id}")
        browsing.page.wait_for_selector("#error:not([hidden])", timeout=15_000)
        assert browsing.page.inner_text("#error") == f"No run {run_id} on this service."
    assert browsing.errors == []


def test_run_page_behind_tokens_shows_nothing_without_one(
    start_service: Callable[..., ServiceProcess], run_id: str
) -> None:
    service = start_service(GVM_API_TOKENS="admin-secret,scoped-secret:someone-else-")
    admin = {"Authorization": "Bearer admin-secret"}
    with httpx.Client(base_url=service.url, headers=admin, timeout=30) as client:
        allocations = train(client, run_id, steps=3)
        run = client.get(f"/v1/runs/{run_id}").json()
    # The HTML shell is public and holds no data; the data endpoints are not.
    shell = httpx.get(f"{service.url}/ui/runs/{run_id}")
    assert shell.status_code == 200
    assert "prompt-00" not in shell.text
    assert "script-src 'self'" in shell.headers["content-security-policy"]
    history = httpx.get(f"{service.url}/v1/runs/{run_id}/allocations/history")
    assert history.status_code == 401

    with loopback_page() as browsing:
        page = browsing.page
        page.goto(f"{service.url}/ui/runs/{run_id}")
        page.wait_for_selector("#token-form:not([hidden])", timeout=15_000)
        assert "missing bearer token" in page.inner_text("#token-reason")
        assert page.locator("#content").is_hidden()
        assert "prompt-00" not in page.content()

        page.fill("#token", "scoped-secret")  # a token for other runs: still nothing
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#token-reason:has-text('scoped to runs')", timeout=15_000)
        assert "prompt-00" not in page.content()

        page.fill("#token", "admin-secret")
        page.click("#token-form button[type=submit]")
        assert_shows(page, allocations, run)
        assert page.evaluate("sessionStorage.getItem('gvm-budget-token')") == "admin-secret"

        page.click("#forget-token")  # back to the prompt, the data gone
        page.wait_for_selector("#token-form:not([hidden])", timeout=15_000)
        assert page.locator("#allocation rect").count() == 0
    assert browsing.errors == []


def test_history_endpoint_answers_the_served_allocations(service_url: str, run_id: str) -> None:
    with httpx.Client(base_url=service_url, timeout=30) as client:
        allocations = train(client, run_id, steps=3)
        history = client.get(f"/v1/runs/{run_id}/allocations/history").json()
        assert history == {
            "run_id": run_id,
            "points": [
                {key: a[key] for key in ("step", "total", "predicted_variance", "uniform_variance")}
                for a in allocations
            ],
        }
        client.delete(f"/v1/runs/{run_id}").raise_for_status()
        gone = client.get(f"/v1/runs/{run_id}/allocations/history")
        assert (gone.status_code, gone.json()["error"]["code"]) == (404, "run_not_found")
        bad = httpx.get(f"{service_url}/ui/runs", params={"run_id": "no spaces"})
        assert bad.status_code == 422
