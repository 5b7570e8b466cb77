"""Alembic migrations up and down on both databases, and the schema they build matches the tables in code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from fervid.db import make_engine
from fervid.migrate import downgrade, upgrade
from fervid.tables import Base

pytestmark = pytest.mark.integration
TABLES = {"jobs", "segments", "frames", "faces", "tracks", "workers", "audit_events"}


def schema_difference(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrations.db'}"
    return str(request.getfixturevalue("empty_pg_url"))


def test_upgrade_builds_the_tables_in_code_and_downgrade_removes_them(empty_url: str) -> None:
    # when the database is upgraded to head
    upgrade(empty_url)
    # then every table exists exactly as fervid/tables.py declares it
    assert table_names(empty_url) == TABLES
    assert schema_difference(empty_url) == []
    # and a downgrade to base removes them, and an upgrade again restores them
    downgrade(empty_url)
    assert table_names(empty_url) == set()
    upgrade(empty_url)
    assert schema_difference(empty_url) == []


def test_the_cli_upgrades_the_configured_database(empty_pg_url: str) -> None:
    result = subprocess.run([sys.executable, "-m", "fervid.cli", "db", "upgrade"], capture_output=True, text=True,
                            env={**os.environ, "FERVID_DATABASE_URL": empty_pg_url}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert table_names(empty_pg_url) == TABLES
