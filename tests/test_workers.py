"""Workers sharing the work: heartbeats, reaping a dead worker's leases at once, fencing a stalled worker's
late writes, and what `monitor status` shows (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from deliveryfixtures import World, config_text, make_config
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.cli import main
from monitor.config import FeedConfig
from monitor.delivery import digest, outbox
from monitor.records import FetchResult, ParsedFeed, ParsedItem
from monitor.storage import db, store, workers
from monitor.storage.tables import DeliveryAttempt, Feed, Item, Worker

pytestmark = pytest.mark.databases("sqlite", "postgresql")

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def register(engine: Engine, worker_id: str, at: datetime = NOW, dead_after_s: float = 10.0) -> None:
    with db.write_transaction(engine) as s:
        workers.register(s, worker_id, roles=["worker"], host="h", pid=1, now=at, dead_after_s=dead_after_s)


def claim_feeds(engine: Engine, owner: str, at: datetime = NOW, lease_s: float = 300) -> list[int]:
    with db.write_transaction(engine) as s:
        return [r.feed_id for r in store.due_feeds(s, at, 10, lease_s=lease_s, lease_owner=owner)]


def reap(engine: Engine, at: datetime) -> list[str]:
    with db.write_transaction(engine) as s:
        return workers.reap(s, at)


def fetched(feed_id: int, key: str) -> store.FetchOutcome:
    item = ParsedItem(key=key, outlet="example.com", guid=key, link=f"https://www.example.com/{key}", title=key,
                      summary="", author=None, published_at=NOW, content_hash="h" + key)
    result = FetchResult(feed_id=feed_id, url="https://feeds.example.com/a", status="ok", fetched_at=NOW,
                         http_status=200, body_hash="b-" + key, etag=f'"{key}"')
    return store.FetchOutcome(result, ParsedFeed(title="A feed", link=None, items=(item,)), NOW + timedelta(minutes=5), NOW)


def test_a_dead_workers_feed_leases_are_taken_back_at_once_and_its_late_write_is_refused(engine: Engine) -> None:
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, [FeedConfig(url="https://feeds.example.com/a")], NOW)
    register(engine, "a")
    register(engine, "b")
    [feed_id] = claim_feeds(engine, "a")
    assert claim_feeds(engine, "b") == []  # leased for 300 s
    # b keeps beating, a falls silent: 11 s later a is presumed dead and its lease goes back at once.
    with db.write_transaction(engine) as s:
        assert workers.beat(s, "b", NOW + timedelta(seconds=9))
    assert reap(engine, NOW + timedelta(seconds=11)) == ["a"]
    assert claim_feeds(engine, "b", NOW + timedelta(seconds=11)) == [feed_id]
    # a was only stalled: it comes back with its stale fetch. Refused; b's result stands.
    with db.write_transaction(engine) as s:
        assert store.record_fetches(s, [fetched(feed_id, "stale")], lease_owner="a") == [[]]
    with db.write_transaction(engine) as s:
        [new] = store.record_fetches(s, [fetched(feed_id, "fresh")], lease_owner="b")
    assert [i.title for i in new] == ["fresh"]
    with Session(engine) as s:
        assert list(s.scalars(select(Item.title))) == ["fresh"]
        assert s.get_one(Feed, feed_id).etag == '"fresh"'
        # a's own heartbeat now says it was reaped (the service then registers again).
        assert not workers.beat(s, "a", NOW + timedelta(seconds=12))


def test_a_lease_taken_over_after_it_lapsed_fences_the_first_holder(engine: Engine) -> None:
    """No reaper involved: a's lease simply lapsed while a was slow, b took the feed; a's write is refused."""
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, [FeedConfig(url="https://feeds.example.com/a")], NOW)
    [feed_id] = claim_feeds(engine, "a", lease_s=30)
    assert claim_feeds(engine, "b", NOW + timedelta(seconds=31)) == [feed_id]
    with db.write_transaction(engine) as s:
        assert store.record_fetches(s, [fetched(feed_id, "late")], lease_owner="a") == [[]]
        assert store.record_fetches(s, [fetched(feed_id, "b")], lease_owner="b")[0][0].title == "b"


def test_items_claimed_by_a_dead_worker_go_to_another_and_the_dead_one_marks_nothing(engine: Engine) -> None:
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, [FeedConfig(url="https://feeds.example.com/a")], NOW)
        [feed_id] = [r.feed_id for r in store.due_feeds(s, NOW, 10)]
        store.record_fetches(s, [fetched(feed_id, k) for k in ("x",)])
    register(engine, "a")
    register(engine, "b", at=NOW + timedelta(seconds=15))
    with db.write_transaction(engine) as s:
        a_items = store.claim_unprocessed(s, 10, now=NOW, lease_s=120, owner="a")
    assert len(a_items) == 1
    with db.write_transaction(engine) as s:
        assert store.claim_unprocessed(s, 10, now=NOW + timedelta(seconds=5), lease_s=120, owner="b") == []
    assert reap(engine, NOW + timedelta(seconds=15)) == ["a"]
    with db.write_transaction(engine) as s:  # long before the 120 s claim would have lapsed
        b_items = store.claim_unprocessed(s, 10, now=NOW + timedelta(seconds=15), lease_s=120, owner="b")
    assert [i.id for i in b_items] == [i.id for i in a_items]
    with db.write_transaction(engine) as s:
        assert store.mark_processed(s, [a_items[0].id], NOW, owner="a") == set()
        assert store.mark_processed(s, [a_items[0].id], NOW, owner="b") == {a_items[0].id}


def test_a_delivery_a_dead_worker_was_sending_is_sent_by_another_with_the_same_id(tmp_path: Path, engine: Engine) -> None:
    config = make_config(tmp_path, '[[subscribers]]\nemail = "r@example.org"\ncadence = "immediate"\n', engine=engine)
    World(engine).new_story("s1", "icc", "ICC ruling", at=NOW - timedelta(minutes=1))
    assert digest.build_due_digests(engine, config, NOW, secret_key="k")
    register(engine, "a")
    claim = outbox.claim_one(engine, NOW, "a", lease_s=300)
    assert claim is not None
    assert outbox.claim_one(engine, NOW + timedelta(seconds=20), "b", lease_s=300) is None  # a holds it
    assert reap(engine, NOW + timedelta(seconds=20)) == ["a"]
    again = outbox.claim_one(engine, NOW + timedelta(seconds=20), "b", lease_s=300)
    assert again is not None and again.message.idempotency_key == claim.message.idempotency_key
    with Session(engine) as s:
        outcomes = sorted(a.outcome for a in s.scalars(select(DeliveryAttempt)))
    assert outcomes == ["lost", "sending"]


def test_status_shows_live_and_dead_workers_their_leases_and_the_queues(tmp_path: Path, engine: Engine) -> None:
    now = db.utcnow()  # real time: `monitor status` below reads the real clock
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, [FeedConfig(url=f"https://feeds.example.com/{i}") for i in range(5)], now)
    register(engine, "host1:11", at=now, dead_after_s=600)
    register(engine, "host2:22", at=now - timedelta(seconds=30))  # silent for 30 s: presumed dead
    claim_feeds(engine, "host1:11", at=now)
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, [FeedConfig(url=f"https://feeds.example.com/{i}") for i in range(8)], now)
    with Session(engine) as s:
        st = workers.cluster_status(s, now + timedelta(seconds=1))
    by_id = {w.id: w for w in st.workers}
    assert by_id["host1:11"].alive and not by_id["host2:22"].alive
    assert by_id["host1:11"].leases == workers.Leases(feeds=5)
    assert st.queues.due_feeds == 3 and st.queues.leased_feeds == 5
    assert [w.id for w in st.live_workers] == ["host1:11"]

    cfg = tmp_path / "feeds.toml"
    cfg.write_text(config_text(tmp_path, engine=engine))
    runner = CliRunner()
    out = runner.invoke(main, ["--config", str(cfg), "status", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert {w["id"] for w in data["workers"]} == {"host1:11", "host2:22"}
    assert data["queues"]["due_feeds"] == 3
    table = runner.invoke(main, ["--config", str(cfg), "status"])
    assert table.exit_code == 0, table.output
    assert "host1:11" in table.output and "DEAD" in table.output and "feeds due now" in table.output
    # Once reaped, the dead worker is gone from the table.
    assert reap(engine, db.utcnow()) == ["host2:22"]
    with Session(engine) as s:
        assert list(s.scalars(select(Worker.id))) == ["host1:11"]


async def test_admin_workers_page_shows_heartbeats_leases_and_queues(tmp_path: Path, engine: Engine) -> None:
    from adminfixtures import PASSWORD, admin_app, client, login, write_config

    from monitor.app.admin import auth

    auth.create_user(engine, "alice", PASSWORD)
    now = db.utcnow()
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, [FeedConfig(url=f"https://feeds.example.com/{i}") for i in range(3)], now)
    register(engine, "web-host:7", at=now, dead_after_s=600)
    register(engine, "worker-host:<b>", at=now - timedelta(seconds=60))  # an id is shown escaped
    claim_feeds(engine, "web-host:7", at=now)
    app, _ctx = admin_app(engine, write_config(tmp_path))
    async with client(app) as c:
        assert (await c.get("/admin/workers")).status_code in (302, 303)  # login first
        await login(c)
        page = await c.get("/admin/workers")
    assert page.status_code == 200
    assert "1 live worker" in page.text and "web-host:7" in page.text and "presumed dead" in page.text
    assert "worker-host:&lt;b&gt;" in page.text and "worker-host:<b>" not in page.text
    assert 'href="/admin/workers" aria-current="page"' in page.text


@pytest.mark.databases("postgresql")
def test_processes_starting_together_on_a_fresh_database_migrate_it_once(engine: Engine, postgres_server,  # type: ignore[no-untyped-def]
                                                                        postgres_admin) -> None:
    """`monitor run` migrates at start-up: several processes racing on an empty PostgreSQL database must not
    fail on each other's CREATE TABLE (one migrates, the others wait and find the schema at head)."""
    import threading
    import uuid

    name = f"fresh_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engines = [db.make_engine(postgres_server.set(database=name).render_as_string(hide_password=False))
               for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def start(e: Engine) -> None:
        try:
            barrier.wait()
            db.upgrade(e)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert db.has_schema(engines[0])
    finally:
        for e in engines:
            e.dispose()
        with postgres_admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_run_refuses_an_unknown_role_and_a_shared_database_without_a_shared_secret_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MONITOR_SECRET_KEY", raising=False)
    cfg = tmp_path / "feeds.toml"
    cfg.write_text(config_text(tmp_path, settings='database_url = "postgresql+psycopg://monitor:s3cret@db-host/monitor"')
                   .replace('database_url = "sqlite', '# database_url = "sqlite'))
    runner = CliRunner()
    bad_role = runner.invoke(main, ["--config", str(cfg), "run", "--role", "worker,cook"])
    assert bad_role.exit_code == 2 and "unknown role(s) ['cook']" in bad_role.output
    no_key = runner.invoke(main, ["--config", str(cfg), "run", "--role", "worker"])
    assert no_key.exit_code == 2 and "MONITOR_SECRET_KEY is not set" in no_key.output
    assert "s3cret" not in no_key.output


async def test_heartbeats_go_on_while_the_shared_thread_pool_is_busy(tmp_path: Path, engine: Engine) -> None:
    """A worker whose thread pool is full (encoding, slow sends) is alive: its heartbeats must not wait for
    the pool, or another process reaps it after dead_after_s and its work is redone (review finding)."""
    import asyncio
    import os
    import time

    from monitor.app.service import Service, ServiceOptions
    from monitor.clock import SystemClock

    path = tmp_path / "feeds.toml"
    path.write_text(config_text(tmp_path, engine=engine))
    service = Service(ServiceOptions(config_path=path, roles=frozenset({"web"}), heartbeat_s=0.2, dead_after_s=10),
                      make_config(tmp_path, engine=engine), SystemClock())

    def heartbeat_at() -> datetime:
        with Session(engine) as s:
            return s.scalars(select(Worker.heartbeat_at).where(Worker.id == service.worker_id)).one()

    service._register()
    service._start_scheduler()
    try:
        await asyncio.sleep(0.6)
        loop = asyncio.get_running_loop()
        threads = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default pool
        busy = [loop.run_in_executor(None, time.sleep, 3.0) for _ in range(threads)]  # every pool thread, 3 s
        seen = set()
        for _ in range(10):
            await asyncio.sleep(0.25)
            seen.add(heartbeat_at())
        assert len(seen) >= 4, sorted(seen)  # beats kept coming every 0.2 s, not after the pool freed up
        await asyncio.gather(*busy)
    finally:
        assert service.scheduler is not None
        service.scheduler.shutdown(wait=False)
        service._stop_heartbeat()
        service.engine.dispose()
