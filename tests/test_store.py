"""store against a real migrated database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from concurrently import while_holding
from sqlalchemy import Engine, func, select

from monitor.config import FeedConfig
from monitor.records import FetchResult, ParsedFeed, ParsedItem
from monitor.storage import db, store
from monitor.storage.tables import Feed, Item, ItemVector

pytestmark = pytest.mark.databases("sqlite", "postgresql")

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def item(key: str, outlet: str = "example.com", title: str | None = None, at: datetime = NOW) -> ParsedItem:
    return ParsedItem(key=key, outlet=outlet, guid=key, link=f"https://www.{outlet}/{key}", title=title or key,
                      summary="", author=None, published_at=at, content_hash="h" + key)


def ok(feed_id: int, **kw: object) -> FetchResult:
    base: dict[str, object] = {"feed_id": feed_id, "url": "https://feeds.example.com/a", "status": "ok",
                               "fetched_at": NOW, "http_status": 200, "body_hash": "b1", "etag": '"e1"'}
    base.update(kw)
    return FetchResult(**base)  # type: ignore[arg-type]


def setup_feeds(engine: Engine, urls: list[str]) -> list[int]:
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, [FeedConfig(url=u) for u in urls], NOW)
    with db.session_factory(engine)() as s:
        return list(s.scalars(select(Feed.id).order_by(Feed.id)))


def test_sync_feeds_adds_updates_and_disables(engine: Engine) -> None:
    with db.write_transaction(engine) as s:
        r = store.sync_feeds(s, [FeedConfig(url="https://a.example.com/f"), FeedConfig(url="https://b.example.com/f")], NOW)
    assert (r.added, r.updated, r.disabled) == (2, 0, 0)
    with db.write_transaction(engine) as s:
        r = store.sync_feeds(s, [FeedConfig(url="https://a.example.com/f", name="A", interval=900)], NOW)
    assert (r.added, r.updated, r.disabled) == (0, 1, 1)
    with db.session_factory(engine)() as s:
        feeds = {f.url: f for f in s.scalars(select(Feed))}
    assert feeds["https://a.example.com/f"].name == "A" and feeds["https://a.example.com/f"].interval_s == 900
    assert feeds["https://b.example.com/f"].enabled is False  # kept, with its history, but not polled
    with db.write_transaction(engine) as s:
        assert store.due_feeds(s, NOW, 10) and all(
            r.url == "https://a.example.com/f" for r in store.due_feeds(s, NOW + timedelta(hours=1), 10))


def test_two_processes_adding_the_same_feeds_at_once(engine: Engine) -> None:
    """Workers started together (or hot-reloading the same feeds.toml edit) sync the same new feeds: the
    second waits for the first and finds them, instead of failing on the unique URL."""
    feeds = [FeedConfig(url=f"https://feeds.example.com/{i}") for i in range(5)]
    second = while_holding(engine, lambda s: store.sync_feeds(s, feeds, NOW), lambda s: store.sync_feeds(s, feeds, NOW))
    assert second == store.SyncReport(added=0, updated=0, disabled=0)
    with db.session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Feed)) == 5


def test_insert_returns_only_new_items(engine: Engine) -> None:
    (fid,) = setup_feeds(engine, ["https://feeds.example.com/a"])
    with db.write_transaction(engine) as s:
        first = store.record_fetch(s, ok(fid), ParsedFeed("t", None, (item("1"), item("2"))), NOW, NOW)
    assert [i.title for i in first] == ["1", "2"] and all(i.feed_id == fid for i in first)
    with db.write_transaction(engine) as s:
        second = store.record_fetch(s, ok(fid), ParsedFeed("t", None, (item("2"), item("3"))), NOW, NOW)
    assert [i.title for i in second] == ["3"]
    with db.session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Item)) == 3


def test_item_that_drops_out_and_reappears_is_not_restored(engine: Engine) -> None:
    (fid,) = setup_feeds(engine, ["https://feeds.example.com/a"])
    with db.write_transaction(engine) as s:
        store.record_fetch(s, ok(fid), ParsedFeed("t", None, (item("1"), item("2"))), NOW, NOW)
        store.record_fetch(s, ok(fid), ParsedFeed("t", None, (item("2"), item("3"))), NOW, NOW)  # 1 dropped out
        back = store.record_fetch(s, ok(fid), ParsedFeed("t", None, (item("1"), item("4"))), NOW, NOW)
    assert [i.title for i in back] == ["4"]


def test_same_article_via_two_feeds_of_one_outlet_stored_once(engine: Engine) -> None:
    a, b = setup_feeds(engine, ["https://feeds.example.com/world", "https://feeds.example.com/mideast"])
    with db.write_transaction(engine) as s:
        via_a = store.record_fetch(s, ok(a), ParsedFeed("w", None, (item("x"),)), NOW, NOW)
        via_b = store.record_fetch(s, ok(b), ParsedFeed("m", None, (item("x"), item("y"))), NOW, NOW)
        other_outlet = store.record_fetch(s, ok(b), ParsedFeed("m", None, (item("x", outlet="other.org"),)), NOW, NOW)
    assert len(via_a) == 1 and [i.title for i in via_b] == ["y"] and len(other_outlet) == 1


def test_fetch_state_saved(engine: Engine) -> None:
    (fid,) = setup_feeds(engine, ["https://feeds.example.com/a"])
    nxt = NOW + timedelta(minutes=10)
    with db.write_transaction(engine) as s:
        store.record_fetch(s, ok(fid, permanent_url="https://feeds.example.com/b"),
                           ParsedFeed("Title", None, ()), nxt, NOW)
    with db.session_factory(engine)() as s:
        f = s.get(Feed, fid)
        assert f is not None
        assert (f.url, f.config_url) == ("https://feeds.example.com/b", "https://feeds.example.com/a")
        assert (f.etag, f.body_hash, f.title, f.last_status) == ('"e1"', "b1", "Title", "ok")
        assert db.aware_utc(f.next_check_at) == nxt and f.lease_until is None
    err = ok(fid, status="error", error="boom", error_kind="network", http_status=None)
    with db.write_transaction(engine) as s:
        store.record_fetch(s, err, None, nxt, NOW)
        store.record_fetch(s, err, None, nxt, NOW)
    (h,) = store.feed_health(db.session_factory(engine)())
    assert h.error_count == 2 and h.last_error == "boom" and h.last_status == "error:network" and h.healthy
    with db.write_transaction(engine) as s:
        store.record_fetch(s, err, None, nxt, NOW)
    (h,) = store.feed_health(db.session_factory(engine)())
    assert not h.healthy and db.aware_utc(h.last_success_at) == NOW


def test_not_modified_keeps_validators(engine: Engine) -> None:
    (fid,) = setup_feeds(engine, ["https://feeds.example.com/a"])
    with db.write_transaction(engine) as s:
        store.record_fetch(s, ok(fid, last_modified="lm"), ParsedFeed("T", None, ()), NOW, NOW)
        store.record_fetch(s, ok(fid, status="not_modified", http_status=304, etag=None, last_modified=None), None, NOW, NOW)
    with db.session_factory(engine)() as s:
        f = s.get(Feed, fid)
        assert f is not None and (f.etag, f.last_modified, f.body_hash, f.last_status) == ('"e1"', "lm", "b1", "not_modified")


def test_claims_are_exclusive_and_leased(engine: Engine) -> None:
    ids = setup_feeds(engine, [f"https://feeds.example.com/{i}" for i in range(20)])
    got: list[list[int]] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        with db.write_transaction(engine) as s:
            got.append([r.feed_id for r in store.due_feeds(s, NOW, 8)])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for g in got for i in g]
    assert sorted(claimed) == sorted(set(claimed)) and sorted(claimed) == ids  # each feed once, all 20 taken
    with db.write_transaction(engine) as s:
        assert store.due_feeds(s, NOW + timedelta(seconds=10), 100) == []  # still leased
        assert len(store.due_feeds(s, NOW + timedelta(hours=1), 100)) == 20  # leases expired


def test_a_claim_in_progress_is_skipped_on_postgresql_and_waited_for_on_sqlite(engine: Engine) -> None:
    """Two pollers claim at the same moment. PostgreSQL: the second skips the rows the first has locked
    (FOR UPDATE SKIP LOCKED) and takes the others at once, while the first is still open. SQLite: the second
    waits for the first (BEGIN IMMEDIATE). Either way the claims are disjoint and cover every due feed."""
    ids = setup_feeds(engine, [f"https://feeds.example.com/{i}" for i in range(20)])
    second: list[int] = []

    def other_poller() -> None:
        with db.write_transaction(engine) as s:
            second.extend(r.feed_id for r in store.due_feeds(s, NOW, 100))

    with db.write_transaction(engine) as s:
        first = [r.feed_id for r in store.due_feeds(s, NOW, 8)]
        t = threading.Thread(target=other_poller)
        t.start()
        t.join(5 if engine.dialect.name == "postgresql" else 0.5)
        done_while_first_open = not t.is_alive()
    t.join(30)
    assert len(first) == 8 and set(first).isdisjoint(second) and sorted(first + second) == ids
    assert done_while_first_open == (engine.dialect.name == "postgresql")


def test_record_fetch_returns_due_time_from_callable(engine: Engine) -> None:
    (fid,) = setup_feeds(engine, ["https://feeds.example.com/a"])
    seen = []

    def when(state: store.FeedSchedule) -> datetime:
        seen.append(state)
        return NOW + timedelta(seconds=60)

    parsed = ParsedFeed("t", None, (item("1", at=NOW - timedelta(hours=2)), item("2", at=NOW - timedelta(hours=1)),
                                    item("3", at=NOW)))
    with db.write_transaction(engine) as s:
        store.record_fetch(s, ok(fid), parsed, when, NOW)
    assert seen[0].publish_interval_s == 3600 and seen[0].last_new_item_at == NOW


def test_unprocessed_mark_processed_and_prune(engine: Engine) -> None:
    (fid,) = setup_feeds(engine, ["https://feeds.example.com/a"])
    old = NOW - timedelta(days=100)
    with db.write_transaction(engine) as s:
        new = store.record_fetch(s, ok(fid), ParsedFeed("t", None, (item("old", at=old), item("new"))), NOW, NOW)
        s.add(ItemVector(item_id=new[0].id, model_id="m", dim=1, vector=b"\0\0\0\0"))
    with db.write_transaction(engine) as s:
        todo = store.unprocessed_items(s, 10)
        assert [i.title for i in todo] == ["old", "new"]
        store.mark_processed(s, [todo[0].id], NOW)
    with db.write_transaction(engine) as s:
        assert [i.title for i in store.unprocessed_items(s, 10)] == ["new"]
        assert store.prune_items(s, NOW - timedelta(days=90)) == 1
    with db.session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(ItemVector)) == 0
        assert s.scalars(select(Item.title)).all() == ["new"]
    # a pruned item still in the feed does not come back as new
    with db.write_transaction(engine) as s:
        again = store.record_fetch(s, ok(fid), ParsedFeed("t", None, (item("old", at=old),)), NOW, NOW,
                                   not_before=NOW - timedelta(days=90))
    assert again == []
