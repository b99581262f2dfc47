"""The README's API section stays true: its curl walkthrough runs verbatim against a live
server with the answers it shows, and its settings table lists every setting."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from budget_service.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def section(name: str) -> str:
    text = README.read_text()
    start = text.index(f"<!-- section: {name} ")
    end = text.index("<!-- section:", start + 1)
    return text[start:end]


def walkthrough() -> str:
    api = section("api")
    start = api.index("<!-- readme-test: walkthrough -->")
    block = api[api.index("```bash\n", start) + len("```bash\n") :]
    return block[: block.index("\n```")]


def without_request_id(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<id>" if k == "request_id" else without_request_id(v) for k, v in value.items()}
    return value


def test_the_curl_walkthrough_runs_verbatim(service_url: str, run_id: str) -> None:
    script = walkthrough()
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={"BASE": service_url, "RUN": run_id, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
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
        assert variances in section("api")


def test_the_load_table_is_the_committed_measurement() -> None:
    results = json.loads((README.parent / "benchmarks" / "results" / "load.json").read_text())
    text = section("benchmarks")
    text = text[text.index("### Service under load") :]
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
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", section("settings"), flags=re.MULTILINE))
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        names.add(str(choices[0]) if choices else f"GVM_{name.upper()}")
    assert table == names
