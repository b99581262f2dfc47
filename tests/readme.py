"""Reading the README from tests: its sections and the code blocks marked for testing.

The README keeps `<!-- section: NAME (owner: ...) -->` comments before each part and
`<!-- readme-test: NAME -->` before every code block a test runs verbatim.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section(name: str) -> str:
    """The text from `<!-- section: NAME` to the next section marker."""
    text = README.read_text()
    start = text.index(f"<!-- section: {name} ")
    end = text.find("<!-- section:", start + 1)
    return text[start:] if end < 0 else text[start:end]


def marked_block(name: str) -> str:
    """The body of the first fenced code block after `<!-- readme-test: NAME -->`."""
    text = README.read_text()
    start = text.index(f"<!-- readme-test: {name} -->")
    fence = text.index("```", start)
    body = text[text.index("\n", fence) + 1 :]
    return body[: body.index("\n```")]


def run_shell(script: str, base_url: str, run_id: str) -> subprocess.CompletedProcess[str]:
    """A README shell block run as a user would, with `$BASE` and `$RUN` set and a bare PATH
    (curl and the shell only), failing on the first error."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={"BASE": base_url, "RUN": run_id, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
