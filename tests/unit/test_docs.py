"""The documentation names what the code does: every setting in docs/configuration.md, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

from fervid.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def documented_settings() -> set[str]:
    """The FERVID_* names in the first column of docs/configuration.md's table (a cell may name several)."""
    names: set[str] = set()
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if line.startswith("| `FERVID_"):
            names.update(re.findall(r"`(FERVID_[A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_every_setting_is_documented_and_every_documented_setting_exists() -> None:
    read = {f"FERVID_{name.upper()}" for name in Settings.model_fields}
    documented = documented_settings()
    assert sorted(read - documented) == [], "settings the code reads that docs/configuration.md does not list"
    assert sorted(documented - read) == [], "settings docs/configuration.md lists that the code no longer reads"


def test_the_readme_links_every_reference_page() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
