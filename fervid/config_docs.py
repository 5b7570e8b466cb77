"""`fervid config-docs`: write docs/configuration.md from the Settings class, so the page lists exactly the settings
the code reads, with their defaults and descriptions (tests/unit/test_docs.py fails when the two differ)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic.fields import FieldInfo

from fervid.errors import InvalidRequest
from fervid.settings import Settings

PAGE = Path("docs") / "configuration.md"
REGENERATE = "fervid config-docs"

PREAMBLE = f"""# Configuration

Every setting of the service: the environment variables the API, the workers and `fervid analyze` read. Written
by `{REGENERATE}` from the `Settings` class (`fervid/settings.py`, each field's description): edit the class,
not this page.

Each `FERVID_<NAME>` variable is read once, at start (the API's app factory, a worker's start-up, a command), and the
API and the workers read the same names: give every process the same values unless a row says otherwise. A value
that does not parse or breaks a limit (a negative deadline, a malformed `FERVID_FILE_URI_ROOTS`) stops the process at
start with a validation error naming the setting. "User data dir" and "user cache dir" are `platformdirs`' folders
for `fervid` (`~/.local/share/fervid` and `~/.cache/fervid` on Linux); the images set `FERVID_STORAGE_URL`,
`FERVID_MODEL_CACHE_DIR` and `FERVID_ENGINE_CACHE_DIR` to `file:///data/media`, `/cache/models` and `/cache/engines`.

## Settings

| variable | default | meaning |
| --- | --- | --- |
"""

# Variables read beside the settings, not by them: (variable, read by, meaning).
OTHER_VARIABLES = (
    ("`FERVID_API_KEY`", "`fervid submit`, `fervid.client`",
     "the key a client sends ([client.md](client.md)); never a flag, so it stays out of shell history"),
    ("`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...", "S3 storage and `s3://` sources",
     "the usual AWS variables, for any S3-compatible store"),
    ("`FORWARDED_ALLOW_IPS`", "`fervid api` (uvicorn)",
     "the reverse proxies whose `X-Forwarded-For` names the client, as `--forwarded-allow-ips` (default 127.0.0.1)"),
)


def shown_default(field: FieldInfo) -> str:
    """The default as the page shows it: the field's `shown_default` where the value depends on the machine."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(shown := extra.get("shown_default"), str):
        return shown
    value = field.default
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(settings: type[Settings] = Settings) -> str:
    """The whole page for `settings`; a field without a description raises, so none goes out unexplained."""
    rows = []
    for name, field in settings.model_fields.items():
        if not field.description:
            raise ValueError(f"Settings.{name} has no description: give it Field(description=...) in "
                             "fervid/settings.py")
        variable = f"{settings.model_config.get('env_prefix', '')}{name}".upper()
        rows.append(f"| `{variable}` | {_cell(shown_default(field))} | {_cell(field.description)} |\n")
    others = "".join(f"| {variable} | {reader} | {meaning} |\n" for variable, reader, meaning in OTHER_VARIABLES)
    return (PREAMBLE + "".join(rows) + "\n## Other variables\n\nNot settings of the service, but read beside them:\n\n"
            "| variable | read by | meaning |\n| --- | --- | --- |\n" + others)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=PAGE, help=f"where to write the page (default: {PAGE})")


def run(args: argparse.Namespace) -> int:
    if not args.out.parent.is_dir():
        raise InvalidRequest(f"{args.out.parent} is not a folder: run this in the repository's root, or pass --out")
    args.out.write_text(render())
    print(f"wrote {args.out}")
    return 0
