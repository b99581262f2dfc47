"""The Grafana dashboard and the Prometheus config of the compose `monitoring` profile: the
dashboard's queries name only metrics a live service exports (and cover all of them), its
datasource is the provisioned one, and Prometheus scrapes the compose service where it listens."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import REPO

GRAFANA = REPO / "configs" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gvm-budget.json"
COMPOSE = REPO / "docker-compose.yml"

# The sample names each metric type puts on /metrics (prometheus_client's text format).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "summary": ("_count", "_sum", "_created"),
}
# What a PromQL expression holds besides metric names.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORDS = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_FUNCTIONS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile",
    "clamp_min", "clamp_max", "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _metric_names(expr: str) -> set[str]:
    bare = _GROUPING.sub(" ", _MATCHERS.sub(" ", _STRINGS.sub(" ", expr)))
    return {w for w in _WORDS.findall(bare) if w not in _FUNCTIONS} - {"e"}  # 1e-9


def _exported(service_url: str, run_id: str) -> dict[str, set[str]]:
    """Family -> sample names on /metrics after a run has been created, reported, allocated."""
    with httpx.Client(base_url=service_url, timeout=30) as client:
        client.put(f"/v1/runs/{run_id}", json={}).raise_for_status()
        report = {"report_id": "r1", "step": 1,
                  "observations": [{"prompt_id": "a", "samples": 4, "accepted": 1}]}  # fmt: skip
        client.post(f"/v1/runs/{run_id}/observations", json=report).raise_for_status()
        client.post(f"/v1/runs/{run_id}/observations", json=report).raise_for_status()  # repeat
        request = {"prompt_ids": ["a", "b"], "budget": 8}
        client.post(f"/v1/runs/{run_id}/allocations", json=request).raise_for_status()
        text = client.get("/metrics").text
    return {
        family.name: {family.name + suffix for suffix in _SUFFIXES[family.type]}
        for family in text_string_to_metric_families(text)
        # the parser reads each metric's `_created` samples as a gauge family of their own
        if family.name.startswith("gvm_") and not family.name.endswith("_created")
    }


def _panels() -> list[dict[str, Any]]:
    return _dashboard()["panels"]


def test_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["title"] == "GVM Budget"
    assert isinstance(dashboard["schemaVersion"], int)
    panels = _panels()
    assert len({p["id"] for p in panels}) == len(panels) >= 8
    for panel in panels:
        assert panel["type"] == "timeseries", panel
        assert panel["title"], panel
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids) >= 1, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_every_query_names_only_exported_metrics_and_every_metric_is_shown(
    service_url: str, run_id: str
) -> None:
    exported = _exported(service_url, run_id)
    assert len(exported) >= 7, sorted(exported)  # every metric of budget_service/metrics.py
    samples = set().union(*exported.values())
    used: set[str] = set()
    for panel in _panels():
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names, target["expr"]
            assert names <= samples, f"{panel['title']}: not exported: {sorted(names - samples)}"
            used |= names
    unshown = sorted(f for f, names in exported.items() if not names & used)
    assert not unshown, f"metrics without a panel: {unshown}"


def test_metric_name_extraction_sees_through_promql_syntax() -> None:
    expr = ('sum by (le, route) (rate(gvm_a_bucket{status=~"5..", route="x y"}[5m])) '
            "/ clamp_min(sum(rate(gvm_b_count[$__rate_interval])), 1e-9)")  # fmt: skip
    assert _metric_names(expr) == {"gvm_a_bucket", "gvm_b_count"}


def test_panels_use_the_provisioned_datasource() -> None:
    provisioning = _yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = provisioning["datasources"]
    assert datasource["type"] == "prometheus"
    for panel in _panels():
        refs = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        assert all(r == {"type": "prometheus", "uid": datasource["uid"]} for r in refs), panel
    compose = _yaml(COMPOSE)["services"]
    assert datasource["url"] == f"http://prometheus:{_container_port(compose['prometheus'])}"


def _container_port(service: dict[str, Any]) -> int:
    (port,) = service["ports"]
    return int(port.rsplit(":", 1)[1])


def _mount_target(service: dict[str, Any], source: str) -> str:
    (target,) = [v.split(":")[1] for v in service["volumes"] if v.split(":")[0] == source]
    return target


def test_compose_mounts_what_the_provisioning_and_prometheus_expect() -> None:
    compose = _yaml(COMPOSE)["services"]
    grafana, prometheus = compose["grafana"], compose["prometheus"]
    (provider,) = _yaml(GRAFANA / "provisioning" / "dashboards" / "gvm-budget.yml")["providers"]
    dashboards = _mount_target(grafana, "./configs/grafana/dashboards")
    assert provider["options"]["path"] == dashboards
    assert _mount_target(grafana, "./configs/grafana/provisioning") == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards}/{DASHBOARD.name}"

    config_file = _mount_target(prometheus, "./configs/prometheus/prometheus.yml")
    assert f"--config.file={config_file}" in prometheus["command"]
    (job,) = _yaml(REPO / "configs" / "prometheus" / "prometheus.yml")["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    service = compose["budget-service"]
    assert sd["names"] == ["budget-service"]
    assert "budget-service" in compose
    assert sd["port"] == int(service["environment"]["GVM_PORT"])
    assert job["metrics_path"] == "/metrics"


@pytest.mark.parametrize("path", [*sorted(GRAFANA.rglob("*.yml")), DASHBOARD])
def test_config_files_parse(path: Path) -> None:
    assert (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text())
