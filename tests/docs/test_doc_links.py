"""Every relative link in the documentation reaches a file, and a heading where it names one;
the README indexes every page of docs/ and CONTRIBUTING.md."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from support.readme import DOCS, README, REPO, pages

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(page: Path) -> str:
    """The page without its fenced code blocks (a `# comment` there is no heading)."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to -."""
    titles = re.findall(r"^#+ (.+)$", prose(page), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page)) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / unquote(path)).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(REPO)}")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, broken


def test_the_readme_indexes_every_page() -> None:
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    expected = {page.resolve() for page in pages() if page != README}
    assert expected <= linked, sorted(str(p.relative_to(REPO)) for p in expected - linked)
    assert DOCS.is_dir()


def test_no_internal_markers_are_left() -> None:
    for page in pages():
        text = page.read_text()
        assert "<!-- section:" not in text, page.name
        assert "(owner:" not in text, page.name


def test_the_anchor_rule_matches_github(tmp_path: Path) -> None:
    """The rule behind `anchors`, on headings of these pages that have punctuation in them."""
    page = tmp_path / "probe.md"
    page.write_text(
        "# Regenerating openapi.json\n## External Redis, Redis Cluster, several replicas\n"
        "### The paper's GPU run\n```bash\n# not a heading\n```\n"
    )
    assert anchors(page) == {
        "regenerating-openapijson",
        "external-redis-redis-cluster-several-replicas",
        "the-papers-gpu-run",
    }


def test_every_test_file_the_pages_name_exists() -> None:
    """Pages point readers at tests (`pytest tests/service/test_fuzz.py`): those files exist."""
    missing = [
        f"{page.relative_to(REPO)}: {name}"
        for page in pages()
        for name in re.findall(r"(?<![\w/.])(tests/[\w/]+\.py)", page.read_text())
        if not (REPO / name).is_file()
    ]
    assert not missing, missing
