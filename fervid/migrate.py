"""`fervid db upgrade|downgrade`: Alembic on FERVID_DATABASE_URL, with the migrations shipped in the package."""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from fervid.settings import get_settings


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("upgrade", help="upgrade to a revision (default: head)").add_argument("revision", nargs="?",
                                                                                             default="head")
    actions.add_parser("downgrade", help="downgrade to a revision (default: base)").add_argument("revision", nargs="?",
                                                                                                 default="base")


def run(args: argparse.Namespace) -> int:
    database_url = get_settings().database_url
    if args.action == "upgrade":
        upgrade(database_url, args.revision)
    else:
        downgrade(database_url, args.revision)
    print(f"database at {args.revision}")
    return 0
