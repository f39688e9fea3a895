"""Database engine and sessions. Only the composition root calls `make_engine`; stages get a Session or
plain records. SQLite runs in WAL mode with a busy timeout so the scheduler, the workers and the web pages
can share one file; PostgreSQL is the scale-out target."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from monitor.errors import ConfigError

log = logging.getLogger(__name__)

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"


def utcnow() -> datetime:
    return datetime.now(UTC)


def naive_utc(dt: datetime) -> datetime:
    """The form stored in the database: UTC without tzinfo."""
    if dt.tzinfo is None:
        return dt
    return dt.astimezone(UTC).replace(tzinfo=None)


def aware_utc(dt: datetime | None) -> datetime | None:
    """The form used in code: tz-aware UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def storable_text(text: str | None) -> str | None:
    """`text` without NUL characters, which PostgreSQL text columns refuse (the whole statement fails; SQLite
    stores them). For text that comes from outside: error replies of receivers, feed warnings."""
    return text.replace("\x00", "") if text else text


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except Exception as e:  # sqlalchemy raises ArgumentError with a terse message
        raise ConfigError(f"database_url is not a valid SQLAlchemy URL ({e}); "
                          "use e.g. sqlite:///var/monitor.db or postgresql+psycopg://user@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves so BEGIN IMMEDIATE works.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
    mode = conn.info.pop("sqlite_begin", "BEGIN")
    conn.exec_driver_sql(mode)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Session]:
    """A session whose transaction takes the write lock up front on SQLite (BEGIN IMMEDIATE), so
    claim-then-update sequences cannot interleave between processes; on PostgreSQL use
    SELECT ... FOR UPDATE SKIP LOCKED inside it. Commits when the block ends, rolls back on error."""
    with engine.connect() as conn:
        if is_sqlite(engine):
            conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
        with conn.begin():
            session = Session(bind=conn, expire_on_commit=False)
            try:
                yield session
                session.flush()
            finally:
                session.close()


def try_write(engine: Engine, write: Callable[[Session], object], failure: str) -> None:
    """Best-effort write transaction for clean-up on an error path (giving leases or claims back): a
    failure is logged with `failure`, never raised over the error being handled."""
    try:
        with write_transaction(engine) as session:
            write(session)
    except Exception:
        log.exception(failure)


def serialize(session: Session, name: str) -> None:
    """Inside a write transaction: wait until no other transaction holds the lock `name`, and hold it until
    this one ends. For read-then-insert steps that must not interleave between processes (syncing feeds.toml
    and subscriptions, a topic's novelty decisions in stories.assign). PostgreSQL: a transaction-scoped advisory lock; SQLite: nothing to do, since
    BEGIN IMMEDIATE already lets one writer in at a time."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_lock_key(name))))


def _lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key for `name`."""
    return int.from_bytes(hashlib.sha256(f"monitor:{name}".encode()).digest()[:8], "big", signed=True)


def probe_writable(engine: Engine, wait_s: float) -> str | None:
    """None when the database would take a write now, else why not (for /readyz). SQLite: take the write
    lock (BEGIN IMMEDIATE), waiting at most `wait_s`, and give it back; PostgreSQL: the server answers and
    is not read-only (a standby, or default_transaction_read_only). Nothing is written."""
    try:
        with engine.connect() as conn:
            if is_sqlite(engine):
                raw = conn.connection.dbapi_connection
                assert raw is not None
                raw.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
                try:
                    raw.execute("BEGIN IMMEDIATE")
                    raw.execute("ROLLBACK")
                finally:
                    raw.execute("PRAGMA busy_timeout=30000")
            else:
                with conn.begin():
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(wait_s * 1000)}")
                    read_only = conn.exec_driver_sql(
                        "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'").scalar()
                    if read_only:
                        return "the PostgreSQL server accepts no writes (a standby, or read-only transactions)"
    except Exception as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (`monitor db upgrade`)."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several processes starting at once on a fresh database: one migrates, the others wait for it and
            # then find the schema at head (PostgreSQL's DDL is transactional). SQLite needs none: one writer.
            conn.execute(select(func.pg_advisory_xact_lock(_lock_key("upgrade"))))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def has_schema(engine: Engine) -> bool:
    return inspect(engine).has_table("alembic_version")
