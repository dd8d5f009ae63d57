"""The user-facing docs stand on their own: nothing points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "cluster" / "README.md"]
#: notes that were never part of the repository, and the folder outside it they lived in
OUTSIDE = re.compile(r"DESIGN\.md|RAY_NOTES\.md|\.\./shared|(?<![\w/])shared/")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pointer_to_notes_outside_the_repository(path: Path) -> None:
    hits = [
        f"{path.name}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_file_of_the_repository(path: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:|#", target):
            continue  # a web address or an anchor of the same page
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name} links outside: {target}"
        assert resolved.exists(), f"{path.name} links to a missing file: {target}"


def test_the_api_page_is_a_reference_for_users() -> None:
    text = (ROOT / "docs" / "API.md").read_text()
    title = text.splitlines()[0]
    assert "reference" in title.lower()
    assert not re.search(r"internal (API|contract)|\bcontract\b", text, re.IGNORECASE)
