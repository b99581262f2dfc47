"""The README's "Integrate your trainer" snippets run as written and print what they show.

The curl, Python and Node blocks make the same three calls; each runs against the live service
(only the URL and run id are swapped in) and must print the allocation on its `-> ` line. The
verl block is checked by tests/integrations/verl_adapter_checks.py (inside .venv-verl).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from support import REPO
from support.readme import marked_block, run_shell

URL, RUN = "http://127.0.0.1:8000", "my-run"  # what the snippets say; swapped for the test's


def snippet(name: str) -> tuple[str, str]:
    """The code block after `<!-- readme-test: NAME -->` and the answer its `-> ` line shows."""
    code = marked_block(name)
    shown = re.findall(r"^(?:#|//) -> (.*)$", code, flags=re.MULTILINE)
    assert len(shown) == 1, f"{name}: one `-> ` line expected"
    return code, shown[0]


def allocation_line(answer: dict[str, object]) -> str:
    items = answer["items"]
    assert isinstance(items, list)
    return ", ".join(f"{item['prompt_id']} {item['samples']}" for item in items)


def test_the_three_snippets_show_the_same_answer() -> None:
    names = ("integrate-curl", "integrate-python", "integrate-node")
    answers = {snippet(name)[1] for name in names}
    assert len(answers) == 1, answers


def test_the_curl_snippet(service_url: str, run_id: str) -> None:
    code, shown = snippet("integrate-curl")
    done = run_shell(code, service_url, run_id)
    assert done.returncode == 0, done.stderr + done.stdout
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert answers[0] == {"report_id": "my-run-step-0", "applied": 3, "duplicate": False}
    assert allocation_line(answers[-1]) == shown


def test_the_python_snippet(service_url: str, run_id: str) -> None:
    code, shown = snippet("integrate-python")
    assert URL in code
    assert f'"{RUN}"' in code
    code = code.replace(URL, service_url).replace(f'"{RUN}"', f'"{run_id}"')
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.strip() == shown


def test_the_node_snippet(service_url: str, run_id: str) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (Node.js 20+) is not on PATH")
    code, shown = snippet("integrate-node")
    assert URL in code
    assert f'"{RUN}"' in code
    code = code.replace(URL, service_url).replace(f'"{RUN}"', f'"{run_id}"')
    done = subprocess.run(
        [node, "--input-type=module", "-e", code],
        cwd=REPO,  # the snippet imports ./clients/node/client.js
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.strip() == shown
