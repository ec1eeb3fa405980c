"""The README is a map and the docs link only inside the repository, to files and headings that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.unit

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "PROTOCOL.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    heads = re.findall(r"^#{1,6} (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_readme_is_a_map_of_at_most_150_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_every_link_stays_in_the_repository_and_resolves():
    bad = []
    for page in PAGES:
        for m in LINK.finditer(page.read_text()):
            target = m.group(1) or m.group(2)
            if re.match(r"^[a-z]+:", target):
                bad.append(f"{page.name}: {target} leaves the repository")
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if ROOT.resolve() not in dest.parents and dest != ROOT.resolve():
                bad.append(f"{page.name}: {target} points outside the repository")
            elif not dest.exists():
                bad.append(f"{page.name}: {target} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{page.name}: {target}: no such heading")
    assert not bad, "\n".join(bad)


def test_every_docs_page_is_on_the_map():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if f"(docs/{p.name})" not in readme]
    assert not missing, f"docs pages the README does not list: {missing}"
