"""The migrations and the table definitions must agree, and the database must be migratable from empty."""

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from monitor.storage.tables import Base

pytestmark = pytest.mark.databases("sqlite", "postgresql")


def test_migrations_match_table_definitions(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"tables and migrations differ; run `make migration`: {diff}"


@pytest.mark.databases("sqlite")  # WAL is SQLite's; PostgreSQL has its own concurrency
def test_sqlite_runs_in_wal_mode(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert "items" in inspect(engine).get_table_names()


def test_probe_writable_says_why_a_database_cannot_take_a_write(engine: Engine) -> None:
    from monitor.storage import db

    assert db.probe_writable(engine, wait_s=1.0) is None
    if engine.dialect.name != "sqlite":
        return
    # Another process holds the write lock: the probe gives up after its short wait and says so.
    locker = sqlite3.connect(engine.url.database, timeout=5, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        assert "locked" in (db.probe_writable(engine, wait_s=0.2) or "")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert db.probe_writable(engine, wait_s=1.0) is None
    # The probe leaves the pooled connection's long busy timeout as it found it.
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
