"""Reading the documentation from tests: a page's sections and the code blocks marked for testing.

The pages are README.md, CONTRIBUTING.md and docs/*.md. Every code block a test runs verbatim
follows a `<!-- readme-test: NAME -->` comment; `marked_block` finds it in whichever page holds
it, so a block keeps its test when it moves between pages.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from support import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
RESULTS = REPO / "benchmarks" / "results"


def pages() -> list[Path]:
    """Every page of the documentation."""
    return [README, REPO / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]


def section(page: Path, title: str) -> str:
    """The text of `page` from the heading `title` (any level) to the next heading of the same
    or a higher level, subsections included; `#` lines inside code blocks are no headings."""
    lines = page.read_text().splitlines(keepends=True)
    start, level, fenced = None, 0, False
    for index, line in enumerate(lines):
        fenced ^= line.startswith("```")
        heading = None if fenced else re.match(r"(#+) (.*)$", line)
        if heading and start is None and heading[2] == title:
            start, level = index, len(heading[1])
        elif heading and start is not None and len(heading[1]) <= level:
            return "".join(lines[start:index])
    assert start is not None, f"{page.name} has no heading {title!r}"
    return "".join(lines[start:])


def marked_block(name: str) -> str:
    """The body of the first fenced code block after `<!-- readme-test: NAME -->`, in the one
    page that has that marker."""
    marker = f"<!-- readme-test: {name} -->"
    holders = [page for page in pages() if marker in page.read_text()]
    assert len(holders) == 1, f"{marker} in {[page.name for page in holders]}, expected one page"
    text = holders[0].read_text()
    start = text.index(marker)
    fence = text.index("```", start)
    body = text[text.index("\n", fence) + 1 :]
    return body[: body.index("\n```")]


def run_shell(script: str, base_url: str, run_id: str) -> subprocess.CompletedProcess[str]:
    """A shell block of the docs run as a user would, with `$BASE` and `$RUN` set and a bare
    PATH (curl and the shell only), failing on the first error."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={"BASE": base_url, "RUN": run_id, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
