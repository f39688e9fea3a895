"""The migrations and the table definitions must agree, and the database must be migratable from empty."""

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
