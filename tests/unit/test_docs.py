"""The documentation names what the code does: every setting in docs/configuration.md, and nothing that is gone."""

from __future__ import annotations

from pathlib import Path

from fervid.config_docs import PAGE, REGENERATE, render
from fervid.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_page_is_what_the_settings_class_writes() -> None:
    # given the page as committed
    committed = (ROOT / PAGE).read_text()

    # when the generator writes it from Settings
    written = render()

    # then they are the same: a setting added, removed or redescribed shows here
    assert committed == written, f"{PAGE} is out of date with fervid/settings.py: run `{REGENERATE}` and commit it"


def test_every_setting_has_a_description() -> None:
    undescribed = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert undescribed == [], "give these Settings fields Field(description=...) in fervid/settings.py"


def test_the_readme_links_every_reference_page() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
