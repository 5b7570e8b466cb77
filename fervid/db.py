"""Engines and sessions for the configured database (PostgreSQL in service, SQLite embedded)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from fervid.settings import get_settings


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record):  # type: ignore[no-untyped-def]
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores ON DELETE CASCADE without it
            cursor.execute("PRAGMA journal_mode=WAL")  # readers (the API) never block the writer
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # pool_pre_ping: a connection the server dropped is replaced instead of failing the next query.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


@lru_cache(maxsize=4)
def engine_for(url: str) -> Engine:
    return make_engine(url)


# The process's database, like its Celery app, is a process-wide singleton: the one place below the edges that
# reads the settings, so every layer shares one pool without passing it along.
def get_engine() -> Engine:
    return engine_for(get_settings().database_url)


# Keyed by the engine itself, so sessions always use the engine (and pool) get_engine() returns, even after the
# engine cache dropped and rebuilt one (a process that used more than four URLs, as tests do).
@lru_cache(maxsize=4)
def _session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error."""
    session = _session_factory(get_engine())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def lock_for_transaction(session: Session, name: str) -> None:
    """Holds `name` until the session's transaction ends, so transactions that take the same name (from any
    process or host) run one after another: a check and the write it allows cannot interleave with another's.
    Take it before the check.

    PostgreSQL: a transaction-level advisory lock on the name's hash (a collision only serialises two names).
    SQLite: the database's write lock, which it has one of; taken now because pysqlite begins a transaction only at
    the first write, which would leave a check that reads first outside it.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))
        return
    sqlite = connection.connection.driver_connection
    if connection.dialect.name == "sqlite" and sqlite is not None and not sqlite.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
