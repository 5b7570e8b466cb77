"""The documentation names what the code does: every setting, every route, every page linked, no dead link."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from fervid.config_docs import PAGE, REGENERATE, render
from fervid.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# The pages the README must link, and with it those whose relative links must lead somewhere.
REFERENCE_PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
                   ROOT / "models" / "MODEL_CARD.md"]
PAGES = [ROOT / "README.md", *REFERENCE_PAGES]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
PATH_PARAMETER = re.compile(r"\{[^}/]*\}")


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
    for page in REFERENCE_PAGES:
        name = page.relative_to(ROOT).as_posix()
        assert f"]({name})" in readme, f"README.md does not link {name}"


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """The app's own routes, those outside the OpenAPI description (the viewer's page) included. FastAPI wraps an
    included router in a route of its own (`original_router`); its routes carry their router's prefix."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(router.routes)


def test_every_route_the_api_serves_is_in_the_api_page(fervid_env: pytest.MonkeyPatch) -> None:
    # given the app as `fervid api` builds it (no service is reached while building it)
    from api.app import create_app

    app = create_app()
    documented = PATH_PARAMETER.sub("{}", (ROOT / "docs" / "api.md").read_text())

    # when each route's method and path are looked for, parameter names aside (`{job_id}` or `{id}`)
    served = {f"{method} {route.path}" for route in _api_routes(app.routes) for method in route.methods - {"HEAD"}}
    described = {f"{method.upper()} {path}" for path, operations in app.openapi()["paths"].items()
                 for method in operations}
    missing = sorted(route for route in served if f"`{PATH_PARAMETER.sub('{}', route)}`" not in documented)

    # then the walk saw every route the OpenAPI description has (so it cannot pass by seeing none), and none is missing
    assert described <= served, "routes in the OpenAPI description the walk over app.routes did not see"
    assert missing == [], "routes the API serves that docs/api.md does not name (as `METHOD /path`)"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCED.sub("", page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page: Path) -> None:
    dead = []
    for target in LINK.findall(FENCED.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not this repository's
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            dead.append(target)
    assert dead == [], f"links in {page.relative_to(ROOT)} to files or headings that do not exist"
