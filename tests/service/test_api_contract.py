"""The v1 contract of DESIGN.md section 3, over real HTTP against a live server and Redis.

Every path of the table, every field name it fixes, and the status codes; answers are also
validated against the service's own response models (which forbid unknown fields). Every test
runs twice: against a single Redis and against a three-node Redis Cluster.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import httpx
import pytest

from budget_service.engine import AllocationParams
from budget_service.schemas import (
    Allocation,
    ErrorResponse,
    PromptStats,
    ReportResult,
    Run,
    RunConfig,
    RunSummary,
)

RUN_CONFIG_FIELDS = {
    "strategy", "alpha", "beta", "min_samples", "max_samples", "align_to", "filter_threshold",
    "filter_insufficient", "prior_strength", "half_life_steps", "explore_samples", "algo",
}  # fmt: skip
ALLOCATION_FIELDS = {
    "run_id", "step", "strategy", "budget", "total", "items", "predicted_variance",
    "uniform_variance",
}  # fmt: skip
ITEM_FIELDS = {"prompt_id", "samples", "p_hat", "g_hat", "weight", "reason"}
PROMPT_FIELDS = {
    "prompt_id", "samples", "accepted", "grad_norm_sum", "grad_norm_count", "last_step",
    "p_hat", "g_hat",
}  # fmt: skip


@pytest.fixture(params=["redis", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    fixture = "service_url" if request.param == "redis" else "cluster_service_url"
    base_url = request.getfixturevalue(fixture)
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = ErrorResponse.model_validate(response.json())
    assert body.error.code == code
    assert body.error.request_id == response.headers["x-request-id"]
    return response.json()["error"]  # type: ignore[no-any-return]


def test_run_lifecycle(client: httpx.Client, run_id: str) -> None:
    path = f"/v1/runs/{run_id}"
    assert_error(client.get(path), 404, "run_not_found")

    created = client.put(path, json={"min_samples": 2, "max_samples": 32})
    assert created.status_code == 201
    run = Run.model_validate(created.json())
    assert run.run_id == run_id
    assert set(created.json()["config"]) >= RUN_CONFIG_FIELDS
    assert (run.config.min_samples, run.config.max_samples) == (2, 32)
    # Fields not given take the engine's defaults (the single source of truth).
    assert run.config.alpha == AllocationParams().alpha
    assert run.config.strategy == AllocationParams().strategy

    replaced = client.put(path, json={"strategy": "uniform"})
    assert replaced.status_code == 200
    assert Run.model_validate(replaced.json()).config.min_samples == AllocationParams().min_samples
    assert replaced.json()["created_at"] == created.json()["created_at"]

    patched = client.patch(path, json={"half_life_steps": 25, "max_samples": None})
    assert patched.status_code == 200
    config = Run.model_validate(patched.json()).config
    assert (config.strategy, config.half_life_steps, config.max_samples) == ("uniform", 25, None)
    assert client.get(path).json() == patched.json()

    assert client.delete(path).status_code == 204
    assert_error(client.get(path), 404, "run_not_found")
    assert_error(client.delete(path), 404, "run_not_found")
    assert_error(client.patch(path, json={"alpha": 0.1}), 404, "run_not_found")


def test_report_allocate_inspect_cycle(client: httpx.Client, run_id: str) -> None:
    base = f"/v1/runs/{run_id}"
    assert client.put(base, json={"min_samples": 1}).status_code == 201
    assert_error(client.get(f"{base}/allocations/latest"), 404, "allocation_not_found")

    report = {
        "report_id": "step-7",
        "step": 7,
        "observations": [
            {"prompt_id": "p1", "samples": 8, "accepted": 3, "grad_norms": [1.0, 2.0, 4.5]},
            {"prompt_id": "p2", "samples": 8, "accepted": 1, "grad_norm_sum": 2.5,
             "grad_norm_count": 1},
            {"prompt_id": "p3", "samples": 8, "accepted": 0},
        ],
    }  # fmt: skip
    answer = client.post(f"{base}/observations", json=report)
    assert answer.status_code == 200
    assert ReportResult.model_validate(answer.json()) == ReportResult(
        report_id="step-7", applied=3, duplicate=False
    )

    prompt = client.get(f"{base}/prompts/p1")
    assert prompt.status_code == 200
    assert set(prompt.json()) >= PROMPT_FIELDS
    stats = PromptStats.model_validate(prompt.json())
    assert (stats.samples, stats.accepted, stats.grad_norm_sum, stats.grad_norm_count) == (
        8, 3, 7.5, 3
    )  # fmt: skip
    assert stats.last_step == 7
    assert 0 < stats.p_hat < 1
    assert stats.g_hat > 0
    assert_error(client.get(f"{base}/prompts/never-seen"), 404, "prompt_not_found")

    request = {"prompt_ids": ["p3", "p1", "new", "p2"], "budget": 40, "step": 8}
    served = client.post(f"{base}/allocations", json=request)
    assert served.status_code == 200, served.text
    body = served.json()
    assert set(body) >= ALLOCATION_FIELDS
    assert all(set(item) >= ITEM_FIELDS for item in body["items"])
    allocation = Allocation.model_validate(body)
    assert allocation.run_id == run_id
    assert allocation.step == 8
    assert allocation.budget == 40
    assert [item.prompt_id for item in allocation.items] == request["prompt_ids"]
    assert allocation.total == sum(item.samples for item in allocation.items) <= 40
    assert all(math.isfinite(v) for v in (allocation.predicted_variance,
                                           allocation.uniform_variance))  # fmt: skip

    latest = client.get(f"{base}/allocations/latest")
    assert latest.status_code == 200
    assert latest.json() == body

    # Replacing the config keeps the statistics.
    assert client.put(base, json={"min_samples": 1, "half_life_steps": 100}).status_code == 200
    assert client.get(f"{base}/prompts/p1").json()["samples"] == 8

    summary = client.get(f"{base}/summary")
    assert summary.status_code == 200
    result = RunSummary.model_validate(summary.json())
    assert (result.prompts, result.reports, result.samples, result.accepted) == (3, 1, 24, 4)
    assert result.pooled_p == pytest.approx(4 / 24)
    assert result.pooled_g == pytest.approx(10.0 / 4)
    assert sum(result.p_hat_histogram.counts) == 3
    assert len(result.p_hat_histogram.edges) == len(result.p_hat_histogram.counts) + 1


def test_rejected_samples_norms_are_stored_and_give_a_prompt_its_own_g(
    client: httpx.Client, run_id: str
) -> None:
    base = f"/v1/runs/{run_id}"
    assert client.put(base, json={}).status_code == 201
    observations = [  # the same prompts twice: without and with the rejected samples' norms
        {"prompt_id": "solved", "samples": 8, "accepted": 4, "grad_norms": [1.0] * 4},
        {"prompt_id": "big", "samples": 8, "accepted": 0},
        {"prompt_id": "small", "samples": 8, "accepted": 0},
    ]
    extra = [
        {"rejected_grad_norms": [0.5] * 4},
        {"rejected_grad_norms": [4.0] * 8},
        {"rejected_grad_norm_sum": 0.8, "rejected_grad_norm_count": 8},
    ]
    plain = {"report_id": "plain", "step": 1, "observations": observations}
    assert client.post(f"{base}/observations", json=plain).status_code == 200
    g_plain = {p: client.get(f"{base}/prompts/{p}").json()["g_hat"] for p in ("big", "small")}
    assert g_plain["big"] == g_plain["small"]  # nothing tells them apart: the pooled norm

    with_rejected = {
        "report_id": "with-rejected",
        "step": 1,
        "observations": [o | e for o, e in zip(observations, extra, strict=True)],
    }
    assert client.post(f"{base}/observations", json=with_rejected).status_code == 200
    big = PromptStats.model_validate(client.get(f"{base}/prompts/big").json())
    small = PromptStats.model_validate(client.get(f"{base}/prompts/small").json())
    assert (big.rejected_grad_norm_sum, big.rejected_grad_norm_count) == (32.0, 8)
    assert (small.rejected_grad_norm_sum, small.rejected_grad_norm_count) == (0.8, 8)
    assert big.g_hat > g_plain["big"] > small.g_hat
    summary = RunSummary.model_validate(client.get(f"{base}/summary").json())
    assert summary.rejected_grad_norm_count == 20

    served = client.post(
        f"{base}/allocations", json={"prompt_ids": ["big", "small"], "budget": 20}
    ).json()
    samples = {item["prompt_id"]: item["samples"] for item in served["items"]}
    assert samples["big"] > samples["small"]


def test_allocation_step_defaults_to_last_reported(client: httpx.Client, run_id: str) -> None:
    base = f"/v1/runs/{run_id}"
    client.put(base, json={})
    obs = [{"prompt_id": "a", "samples": 4, "accepted": 2}]
    client.post(f"{base}/observations", json={"report_id": "r", "step": 12, "observations": obs})
    served = client.post(f"{base}/allocations", json={"prompt_ids": ["a"], "budget": 4})
    assert served.json()["step"] == 12


def test_prompt_ids_with_slashes_and_unicode(client: httpx.Client, run_id: str) -> None:
    base = f"/v1/runs/{run_id}"
    client.put(base, json={})
    prompt_id = "math/algebra/42 — ü"
    obs = [{"prompt_id": prompt_id, "samples": 4, "accepted": 1}]
    client.post(f"{base}/observations", json={"report_id": "r", "step": 0, "observations": obs})
    answer = client.get(f"{base}/prompts/{httpx.URL(prompt_id).raw_path.decode()}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["prompt_id"] == prompt_id


def test_gvm_paper_end_to_end_gives_the_published_integers(
    client: httpx.Client, run_id: str
) -> None:
    """Raw ratios in, the published rule's integers out (hand-checked below).

    p = (0.5, 0.25, 0), G = (1, 1, 1), alpha = 1e-3, beta = 2:
    w = G / sqrt(p + alpha p^(1-beta)) = (1/sqrt(0.502), 1/sqrt(0.254), 0) = (1.4114, 1.9842, 0)
    n = 20 w / sum(w) = (8.31, 11.69, 0) -> rounded (8, 12, 0), which already sums to 20.
    """
    base = f"/v1/runs/{run_id}"
    config = {"strategy": "gvm-paper", "prior_strength": 0, "half_life_steps": None}
    assert client.put(base, json=config).status_code == 201
    report = {
        "report_id": "stage-1",
        "step": 0,
        "observations": [
            {"prompt_id": "half", "samples": 8, "accepted": 4, "grad_norms": [1, 1, 1, 1]},
            {"prompt_id": "quarter", "samples": 8, "accepted": 2, "grad_norms": [1, 1]},
            {"prompt_id": "never", "samples": 8, "accepted": 0},
        ],
    }
    assert client.post(f"{base}/observations", json=report).json()["applied"] == 3
    request = {"prompt_ids": ["half", "quarter", "never"], "budget": 20, "step": 0}
    allocation = Allocation.model_validate(client.post(f"{base}/allocations", json=request).json())
    assert [item.samples for item in allocation.items] == [8, 12, 0]
    assert allocation.total == 20
    assert allocation.strategy == "gvm-paper"
    # prior_strength 0, no decay: the estimates are the raw ratios, exactly.
    assert [item.p_hat for item in allocation.items[:2]] == [0.5, 0.25]
    assert [item.g_hat for item in allocation.items[:2]] == [1.0, 1.0]
    w = [1 / math.sqrt(0.5 + 1e-3 / 0.5), 1 / math.sqrt(0.25 + 1e-3 / 0.25)]
    shares = [w[0] / sum(w), w[1] / sum(w), 0]
    assert [item.weight for item in allocation.items] == pytest.approx(shares)
    assert [item.reason for item in allocation.items] == ["gvm", "gvm", "filtered"]


def test_every_design_path_is_served_and_documented(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    expected = {
        ("/v1/runs/{run_id}", "put"): "put_run",
        ("/v1/runs/{run_id}", "get"): "get_run",
        ("/v1/runs/{run_id}", "patch"): "patch_run",
        ("/v1/runs/{run_id}", "delete"): "delete_run",
        ("/v1/runs/{run_id}/observations", "post"): "post_observations",
        ("/v1/runs/{run_id}/allocations", "post"): "create_allocation",
        ("/v1/runs/{run_id}/allocations/latest", "get"): "get_latest_allocation",
        ("/v1/runs/{run_id}/allocations/history", "get"): "get_allocation_history",
        ("/v1/runs/{run_id}/prompts/{prompt_id}", "get"): "get_prompt",
        ("/v1/runs/{run_id}/summary", "get"): "get_summary",
        ("/healthz", "get"): "healthz",
        ("/readyz", "get"): "readyz",
        ("/metrics", "get"): "get_metrics",
    }
    served = {
        (path, method): operation["operationId"]
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    assert served == expected
    for (path, method), _ in expected.items():
        operation = schema["paths"][path][method]
        assert operation["summary"]
        assert operation["description"]
        if path.startswith("/v1"):
            error_schema = operation["responses"]["422"]["content"]["application/json"]["schema"]
            assert error_schema == {"$ref": "#/components/schemas/ErrorResponse"}
    components = schema["components"]["schemas"]
    for name in ("RunConfig", "ReportRequest", "AllocationRequest", "Allocation", "ErrorResponse"):
        assert components[name].get("examples"), f"{name} has no examples"
    assert "HTTPValidationError" not in components  # every 422 uses the one error shape
    assert client.get("/docs").status_code == 200


def test_run_config_mirrors_the_engine_parameters() -> None:
    params = {f.name: f.default for f in dataclasses.fields(AllocationParams)}
    assert set(RunConfig.model_fields) == set(params)
    assert RunConfig().model_dump() == params


def test_unknown_routes_and_methods_use_the_error_shape(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    error = assert_error(client.delete("/healthz"), 405, "method_not_allowed")
    assert "DELETE" in str(error["message"])


def test_request_id_is_echoed_or_generated(client: httpx.Client) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "trace-123"}).headers["x-request-id"]
        == "trace-123"
    )
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id\twith junk"})
    assert generated.headers["x-request-id"] != "bad id\twith junk"
    assert len(generated.headers["x-request-id"]) == 16


def test_health_readiness_and_metrics(client: httpx.Client, run_id: str) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "redis": "ok"}
    base = f"/v1/runs/{run_id}"
    client.put(base, json={})
    obs = [{"prompt_id": "m", "samples": 2, "accepted": 1}]
    client.post(f"{base}/observations", json={"report_id": "x", "step": 0, "observations": obs})
    client.post(f"{base}/observations", json={"report_id": "x", "step": 0, "observations": obs})
    client.post(f"{base}/allocations", json={"prompt_ids": ["m"], "budget": 4})
    text = client.get("/metrics").text
    for needle in (
        'gvm_http_request_duration_seconds_count{method="POST",'
        'route="/v1/runs/{run_id}/observations",status="200"}',
        "gvm_observations_applied_total",
        'gvm_reports_total{outcome="duplicate"}',
        'gvm_allocations_total{strategy="gvm"}',
        "gvm_allocation_prompts_bucket",
        "gvm_redis_errors_total",
    ):
        assert needle in text, needle
    assert run_id not in text  # route templates, never raw paths
