"""Alembic migrations up and down on both databases, and the schema they build matches the tables in code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from fervid.db import make_engine
from fervid.migrate import downgrade, upgrade
from fervid.tables import Base

pytestmark = pytest.mark.integration
TABLES = {"jobs", "segments", "frames", "faces", "tracks", "workers", "audit_events", "result_caches",
          "webhook_events", "annotated_videos"}


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


def test_the_result_caches_and_the_frame_time_index_upgrade_and_downgrade_over_rows(empty_url: str) -> None:
    # given a database at the revision before them, holding a job's frames
    upgrade(empty_url, "8b2d4e6f1a93")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO jobs (id, tenant, status, source_uri, sample_fps, queue, warnings, "
                                    "created_at, prepare_attempts) VALUES ('j1', 't', 'succeeded', 'file:///c.mp4', "
                                    "5, 'cpu', '[]', CURRENT_TIMESTAMP, 0)"))
            connection.execute(text("INSERT INTO frames (job_id, frame_index, timestamp_ms, segment_index) "
                                    "VALUES ('j1', 0, 0, 0), ('j1', 5, 200, 0)"))
        # when it is upgraded to head
        upgrade(empty_url)
        # then frames are indexed by time within their job, and finished jobs' results have their table
        indexes = {index["name"]: index["column_names"] for index in inspect(engine).get_indexes("frames")}
        assert indexes["ix_frames_job_timestamp"] == ["job_id", "timestamp_ms"]
        assert "result_caches" in table_names(empty_url)
        # and a downgrade removes both and keeps the frames
        downgrade(empty_url, "8b2d4e6f1a93")
        engine.dispose()
        assert "ix_frames_job_timestamp" not in {index["name"] for index in inspect(engine).get_indexes("frames")}
        assert "result_caches" not in table_names(empty_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM frames")).scalar_one() == 2
    finally:
        engine.dispose()
