"""The API docs stay true: the curl walkthrough of docs/http-api.md runs verbatim against a live
server with the answers it shows, the load table of docs/benchmarks.md is the committed
measurement, and docs/configuration.md lists every setting."""

from __future__ import annotations

import json
import re
from typing import Any

from support.readme import DOCS, RESULTS, marked_block, run_shell, section

from budget_service.settings import Settings


def without_request_id(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<id>" if k == "request_id" else without_request_id(v) for k, v in value.items()}
    return value


def test_the_curl_walkthrough_runs_verbatim(service_url: str, run_id: str) -> None:
    script = marked_block("walkthrough")
    done = run_shell(script, service_url, run_id)
    assert done.returncode == 0, done.stderr + done.stdout
    outputs = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    expected = [
        line.removeprefix("# -> ") for line in script.splitlines() if line.startswith("# -> ")
    ]
    assert len(outputs) == len(expected) == 4

    for got, shown in zip(outputs, expected, strict=True):
        if shown.startswith("{"):
            assert without_request_id(got) == without_request_id(json.loads(shown))
            continue
        # "samples: easy 3, medium 7, ... (total 40)"
        pairs = re.findall(r"(\w+) (\d+)", shown.removeprefix("samples: ").split(" (")[0])
        assert [(item["prompt_id"], item["samples"]) for item in got["items"]] == [
            (name, int(n)) for name, n in pairs
        ]
        assert f"(total {got['total']})" in shown
        variances = f"{got['predicted_variance']:.2f} vs {got['uniform_variance']:.2f}"
        assert variances in section(DOCS / "http-api.md", "The HTTP API")


def test_the_load_table_is_the_committed_measurement() -> None:
    results = json.loads((RESULTS / "load.json").read_text())
    text = section(DOCS / "benchmarks.md", "Service under load")
    for key, clients in (("scenarios", results["clients"]), ("single_client", 1)):
        for name, row in results[key].items():
            line = (
                f"| {name} | {clients} | {row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} "
                f"| {row['throughput_rps']} | {row['errors']} |"
            )
            assert line in text, line
    for ratio in results["ratios"].values():
        assert f"**{ratio}x**" in text


def test_the_settings_table_lists_every_setting() -> None:
    table = set(
        re.findall(
            r"^\| `([A-Z_]+)` \|",
            section(DOCS / "configuration.md", "Service settings"),
            flags=re.MULTILINE,
        )
    )
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        names.add(str(choices[0]) if choices else f"GVM_{name.upper()}")
    assert table == names
