"""The README and docs stay true: links resolve, and the settings tables are the settings model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

from classify.settings import ClassifySettings
from common.config import settings_table
from scripts.bounds import readme_block
from scripts.sizing import tables

DOCS = [
    REPO / "README.md",
    REPO / "SECURITY.md",
    REPO / "bentos" / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "benchmarks").glob("*.md")),
]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
README_MOST_LINES = 200


def github_anchor(heading: str) -> str:
    """The id GitHub gives a markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(document: Path) -> set[str]:
    return {
        github_anchor(line.lstrip("#"))
        for line in document.read_text().splitlines()
        if line.startswith("#")
    }


def relative_links(document: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)  # not in code blocks
    found = [a or b for a, b in LINK.findall(text)]
    return [link for link in found if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("document", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_resolves(document: Path):
    for link in relative_links(document):
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        assert path.exists(), f"{document.name}: {link} points at nothing"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{document.name}: {link}: no such heading"


def between(document: Path, marker: str) -> str:
    text = document.read_text()
    start, end = f"<!-- {marker} -->\n", f"\n<!-- /{marker} -->"
    assert start in text and end in text, f"{document.name} lacks the {marker} markers"
    return text.split(start, 1)[1].split(end, 1)[0]


def test_settings_table_is_the_settings_model():
    """Regenerate with `.venv/bin/python -m classify.settings` if this fails."""
    assert between(REPO / "docs" / "settings.md", "settings-table") == settings_table(
        ClassifySettings
    )


def test_tuning_table_is_the_settings_model():
    """Regenerate with `.venv/bin/python -m classify.settings --tuning` if this fails."""
    assert between(REPO / "docs" / "performance.md", "tuning-table") == settings_table(
        ClassifySettings, True
    )


def test_every_setting_is_described():
    for name, field in ClassifySettings.model_fields.items():
        assert field.description, f"{name} has no description for the docs"


def test_readme_is_a_front_page():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MOST_LINES, f"README is {lines} lines: move depth into docs/"


def test_readme_limits_are_the_measured_bounds():
    """Regenerate with `.venv/bin/python -m scripts.bounds` (the figures of
    benchmarks/request_bounds.json, written by tests/deploy/test_request_bounds.py with
    RECORD_REQUEST_BOUNDS) if this fails."""
    assert between(REPO / "README.md", "request-bounds") == readme_block()


def test_sizing_tables_are_the_measurements():
    """Regenerate with `python3 -m scripts.sizing table` if this fails."""
    assert between(REPO / "README.md", "sizing-table") == tables()
