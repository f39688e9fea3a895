"""poll_once end to end: real HTTP server, real SQLite."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from feedserver import FeedServer, rss
from sqlalchemy import Engine, func, select

from monitor.config import FeedConfig, Settings
from monitor.ingest import fastfeed
from monitor.ingest.poll import poll_once
from monitor.storage import db, store
from monitor.storage.tables import Feed, Item

pytestmark = pytest.mark.databases("sqlite", "postgresql")

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
S = Settings(allow_private_networks=True, fetch_timeout_s=3.0)


def sync(engine: Engine, urls: list[str]) -> None:
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, [FeedConfig(url=u) for u in urls], NOW)


def health_of(engine: Engine) -> list[store.FeedHealth]:
    with db.session_factory(engine)() as s:
        return store.feed_health(s)


def feed(items: list[str]) -> bytes:
    return rss([{"title": f"Story {i}", "guid": f"g{i}", "link": f"https://www.example.com/{i}",
                 "pubDate": "Wed, 01 May 2024 10:00:00 GMT"} for i in items])


async def test_poll_stores_new_items_then_304_then_only_new(engine: Engine, feed_server: FeedServer) -> None:
    feed_server.route("/a.xml", body=feed(["1", "2"]), headers={"ETag": '"a1"'}, conditional=True)
    sync(engine, [feed_server.url("/a.xml")])
    r1 = await poll_once(engine, S, now=NOW, rng=random.Random(0))
    assert r1.totals == {"polled": 1, "new_items": 2, "not_modified": 0, "errors": 0}
    assert [i.title for i in r1.new_items] == ["Story 1", "Story 2"]
    # not due yet: nothing polled
    assert (await poll_once(engine, S, now=NOW + timedelta(seconds=30))).totals["polled"] == 0
    later = NOW + timedelta(hours=3)
    r2 = await poll_once(engine, S, now=later)
    assert r2.totals == {"polled": 1, "new_items": 0, "not_modified": 1, "errors": 0}
    assert feed_server.requests_for("/a.xml")[-1].headers["if-none-match"] == '"a1"'
    # the feed changes: item 1 drops out, 3 appears
    feed_server.route("/a.xml", body=feed(["2", "3"]), headers={"ETag": '"a2"'}, conditional=True)
    r3 = await poll_once(engine, S, now=later + timedelta(hours=3))
    assert [i.title for i in r3.new_items] == ["Story 3"]
    # item 1 comes back: not re-stored
    feed_server.route("/a.xml", body=feed(["1", "2", "3"]), headers={"ETag": '"a3"'}, conditional=True)
    r4 = await poll_once(engine, S, now=later + timedelta(hours=6))
    assert r4.totals["new_items"] == 0 and r4.rows[0].status == "ok"
    with db.session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Item)) == 3


async def test_one_failing_feed_does_not_stop_the_others(engine: Engine, feed_server: FeedServer) -> None:
    feed_server.route("/good.xml", body=feed(["1"]))
    feed_server.route("/bad.xml", status=500)
    feed_server.route("/html.xml", body=b"<html><body>not a feed</body></html>")
    feed_server.route("/lol.xml", body=b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
                                       b'<rss version="2.0"><channel><item><title>&b;</title></item></channel></rss>')
    urls = [feed_server.url(p) for p in ("/good.xml", "/bad.xml", "/html.xml", "/lol.xml")]
    sync(engine, urls)
    r = await poll_once(engine, S, now=NOW)
    status = {row.url.rsplit("/", 1)[1]: row.status for row in r.rows}
    assert status == {"good.xml": "ok", "bad.xml": "error", "html.xml": "error", "lol.xml": "error"}
    assert r.totals == {"polled": 4, "new_items": 1, "not_modified": 0, "errors": 3}
    health = {h.url.rsplit("/", 1)[1]: h for h in health_of(engine)}
    assert "not an RSS or Atom feed" in (health["html.xml"].last_error or "")
    assert "entities" in (health["lol.xml"].last_error or "")
    assert health["bad.xml"].last_status == "error:http" and health["bad.xml"].error_count == 1
    # the failing feed is retried later (backoff), never dropped
    nxt = health["bad.xml"].next_check_at
    assert nxt is not None and nxt > NOW


async def test_overlong_validators_and_redirects_from_a_server_do_not_stop_the_batch(
        engine: Engine, feed_server: FeedServer) -> None:
    """Headers are the server's to choose: an ETag or Last-Modified longer than its column, or a permanent
    redirect to a URL longer than a stored feed URL, must not fail the write of the whole poll batch
    (PostgreSQL enforces VARCHAR lengths; SQLite does not). Such a validator is dropped (the next fetch is
    unconditional) and such a move is not recorded."""
    huge_path = "/" + "x" * 3000 + ".xml"
    feed_server.route("/etag.xml", body=feed(["1"]), conditional=True,
                      headers={"ETag": '"' + "e" * 2000 + '"', "Last-Modified": "Wed, 01 May 2024 10:00:00 GMT; " + "x" * 200})
    feed_server.route(huge_path, body=feed(["2"]))
    feed_server.redirect("/moved.xml", huge_path, 301)
    feed_server.route("/good.xml", body=feed(["3"]))
    sync(engine, [feed_server.url(p) for p in ("/etag.xml", "/moved.xml", "/good.xml")])
    r = await poll_once(engine, S, now=NOW)
    assert r.totals["new_items"] == 3 and {row.status for row in r.rows} == {"ok"}
    health = {h.url.rsplit("/", 1)[1]: h for h in health_of(engine)}
    assert set(health) == {"etag.xml", "moved.xml", "good.xml"} and all(h.last_status == "ok" for h in health.values())
    with db.session_factory(engine)() as s:
        assert s.scalars(select(Feed.etag).where(Feed.url == feed_server.url("/etag.xml"))).one() is None
    r2 = await poll_once(engine, S, now=NOW, all_feeds=True)
    assert {row.status for row in r2.rows} == {"unchanged"}
    assert "if-none-match" not in feed_server.requests_for("/etag.xml")[-1].headers


async def test_nul_characters_in_guids_and_links_do_not_stop_a_feed(engine: Engine, feed_server: FeedServer) -> None:
    """A malformed feed read leniently can carry NUL characters (`&#0;`) into guids and links; PostgreSQL
    text cannot hold NUL, so the feed's items would never be stored there. They are dropped at parse."""
    body = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>'
            b'<item><title>A</title><guid>g&#0;1</guid></item>'
            b'<item><title>B</title><link>https://www.example.com/b&#0;</link></item></channel></rss>')
    feed_server.route("/nul.xml", body=body)
    sync(engine, [feed_server.url("/nul.xml")])
    r = await poll_once(engine, S, now=NOW)
    assert r.rows[0].status == "ok" and r.totals["new_items"] == 2
    with db.session_factory(engine)() as s:
        stored = {i.title: (i.guid, i.link) for i in s.scalars(select(Item))}
    assert stored["A"][0] == "g1" and stored["B"][1] == "https://www.example.com/b"
    assert all("\x00" not in (v or "") for pair in stored.values() for v in pair)


async def test_unchanged_body_is_not_reparsed(engine: Engine, feed_server: FeedServer) -> None:
    feed_server.route("/u.xml", body=feed(["1"]))
    sync(engine, [feed_server.url("/u.xml")])
    await poll_once(engine, S, now=NOW)
    r = await poll_once(engine, S, now=NOW, all_feeds=True)
    assert r.rows[0].status == "unchanged" and r.totals["new_items"] == 0


async def test_permanent_redirect_updates_stored_url(engine: Engine, feed_server: FeedServer) -> None:
    feed_server.route("/new.xml", body=feed(["1"]))
    feed_server.redirect("/old.xml", "/new.xml", 301)
    feed_server.redirect("/tmp.xml", "/new2.xml", 302)
    feed_server.route("/new2.xml", body=feed(["9"]))
    sync(engine, [feed_server.url("/old.xml"), feed_server.url("/tmp.xml")])
    await poll_once(engine, S, now=NOW)
    with db.session_factory(engine)() as s:
        urls = set(s.scalars(select(Feed.url)))
    assert urls == {feed_server.url("/new.xml"), feed_server.url("/tmp.xml")}
    await poll_once(engine, S, now=NOW, all_feeds=True)
    assert len(feed_server.requests_for("/old.xml")) == 1  # the next poll went straight to the new URL


async def test_feed_filter_polls_only_that_feed(engine: Engine, feed_server: FeedServer) -> None:
    feed_server.route("/a.xml", body=feed(["1"]))
    feed_server.route("/b.xml", body=feed(["2"]))
    sync(engine, [feed_server.url("/a.xml"), feed_server.url("/b.xml")])
    r = await poll_once(engine, S, now=NOW, feeds_filter=[feed_server.url("/b.xml")])
    assert [row.url for row in r.rows] == [feed_server.url("/b.xml")]
    assert feed_server.requests_for("/a.xml") == []


async def test_schedule_adapts_to_publishing_rate(engine: Engine, feed_server: FeedServer) -> None:
    def dated(n: int, gap_min: int) -> bytes:
        return rss([{"title": f"S{i}", "guid": f"{gap_min}-{i}",
                     "pubDate": (NOW - timedelta(minutes=gap_min * i)).strftime("%a, %d %b %Y %H:%M:%S GMT")}
                    for i in range(n)])

    feed_server.route("/busy.xml", body=dated(10, 10))
    feed_server.route("/slow.xml", body=dated(10, 24 * 60))
    sync(engine, [feed_server.url("/busy.xml"), feed_server.url("/slow.xml")])
    await poll_once(engine, S, now=NOW, rng=random.Random(0))
    health = {h.url.rsplit("/", 1)[1]: h for h in health_of(engine)}
    busy, slow = health["busy.xml"].next_check_at, health["slow.xml"].next_check_at
    assert busy is not None and slow is not None
    assert (busy - NOW).total_seconds() < 400  # ~ half of a 10-minute publishing gap
    assert (slow - NOW).total_seconds() >= S.max_interval_s  # daily feed: the longest interval


async def test_retry_after_defers_the_next_check_on_a_simulated_clock(engine: Engine, feed_server: FeedServer) -> None:
    from monitor.ingest.fetch import Fetcher

    feed_server.route("/busy.xml", status=429, headers={"Retry-After": "3600"})
    sync(engine, [feed_server.url("/busy.xml")])
    async with Fetcher(S) as fetcher:  # real clock, as the service and the demo run it
        r = await poll_once(engine, S, now=NOW, fetcher=fetcher)
    assert r.rows[0].status == "deferred" and r.totals["errors"] == 0
    (h,) = health_of(engine)
    assert h.last_status == "deferred" and h.next_check_at is not None
    assert timedelta(hours=1) <= h.next_check_at - NOW <= timedelta(hours=1.2)
    assert (await poll_once(engine, S, now=NOW + timedelta(minutes=30))).totals["polled"] == 0


async def test_items_without_guids_are_stored_once_across_polls(engine: Engine, feed_server: FeedServer) -> None:
    body = rss([
        {"title": "Linked", "link": "https://www.example.com/a?utm_source=rss"},
        {"title": "Bare", "description": "no guid, no link"},
        {"title": "Bare", "description": "no guid, no link"},  # a duplicate within the document
    ])
    feed_server.route("/nog.xml", body=body)
    sync(engine, [feed_server.url("/nog.xml")])
    first = await poll_once(engine, S, now=NOW)
    assert sorted(i.title for i in first.new_items) == ["Bare", "Linked"]
    assert first.rows[0].warnings and "duplicate" in first.rows[0].warnings[0]
    # same items, tracking parameter changed and a whitespace-only change: same identity
    feed_server.route("/nog.xml", body=rss([
        {"title": "Linked", "link": "https://www.example.com/a?utm_source=twitter#x"},
        {"title": "Bare ", "description": "no guid,  no link"},
    ]))
    again = await poll_once(engine, S, now=NOW + timedelta(hours=3))
    assert again.rows[0].status == "ok" and again.totals["new_items"] == 0


FIXTURES = Path(__file__).parent / "fixtures"


async def test_bbc_republishing_with_a_new_guid_suffix_stores_one_item_per_article(engine: Engine,
                                                                                  feed_server: FeedServer) -> None:
    # Two real BBC News snapshots (tests/fixtures): between them one article arrived, one dropped out, and
    # four were republished with their guid's `#0` turned into `#1` or `#2`: 13 articles in all.
    snap1, snap2 = ((FIXTURES / f"bbc_news_snapshot_{n}.xml").read_bytes() for n in (1, 2))
    feed_server.route("/news/rss.xml", body=snap1, headers={"Content-Type": "application/xml"})
    sync(engine, [feed_server.url("/news/rss.xml")])
    now = datetime(2023, 11, 24, 22, 0, tzinfo=UTC)
    first = await poll_once(engine, S, now=now, all_feeds=True)
    assert first.totals["new_items"] == 12, first.rows
    feed_server.route("/news/rss.xml", body=snap2, headers={"Content-Type": "application/xml"})
    second = await poll_once(engine, S, now=now + timedelta(hours=2), all_feeds=True)
    assert [i.title for i in second.new_items] == ["Rotherham United 1-1 Leeds United: Millers hold Daniel Farke's side "
                                                  "to Championship draw"]
    with db.session_factory(engine)() as s:
        links = list(s.scalars(select(Item.link)))
    assert len(links) == len(set(links)) == 13


def _loopback_fetcher(settings: Settings):  # type: ignore[no-untyped-def]
    """A Fetcher whose every host name resolves to 127.0.0.1, so feeds can have real outlet names."""
    import socket

    import aiohttp
    from aiohttp.abc import AbstractResolver
    from httpx_aiohttp import AiohttpTransport

    from monitor.ingest.fetch import Fetcher

    class Loopback(AbstractResolver):
        async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):  # type: ignore[no-untyped-def, override]
            return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                     "flags": socket.AI_NUMERICHOST}]

        async def close(self) -> None:
            pass

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=Loopback()), auto_decompress=False)
    return Fetcher(settings, transport=AiohttpTransport(client=session)), session


async def test_a_feed_cannot_publish_as_another_outlet(engine: Engine, feed_server: FeedServer) -> None:
    article = {"title": "Qatar says truce extended by two days", "guid": "https://www.reuters.com/world/truce-1",
               "link": "https://www.reuters.com/world/truce-1", "pubDate": "Wed, 01 May 2024 10:00:00 GMT"}
    spoof = {**article, "title": "Truce collapses, officials say"}  # the genuine URL, a made-up story
    feed_server.route("/spoof.xml", body=rss([spoof], link="https://www.reuters.com/"))
    feed_server.route("/world.xml", body=rss([article], link="https://www.reuters.com/"))
    feed_server.route("/gnews.xml", body=rss([{k: v for k, v in article.items() if k != "guid"},
                                              {"title": "AP: talks resume", "link": "https://apnews.com/article/x"}]))
    port = feed_server.port
    spoofer, genuine = f"http://cheap-news.example.net:{port}/spoof.xml", f"http://feeds.reuters.com:{port}/world.xml"
    google = f"http://news.google.com:{port}/gnews.xml"
    with db.write_transaction(engine) as s:
        store.sync_feeds(s, [FeedConfig(url=spoofer), FeedConfig(url=genuine),
                             FeedConfig(url=google, aggregator=True)], NOW)
    fetcher, session = _loopback_fetcher(S)
    try:
        async with fetcher:
            got_in_first = await poll_once(engine, S, now=NOW, fetcher=fetcher, feeds_filter=[spoofer])
            then = await poll_once(engine, S, now=NOW, fetcher=fetcher, feeds_filter=[genuine])
            agg = await poll_once(engine, S, now=NOW, fetcher=fetcher, feeds_filter=[google])
    finally:
        await session.close()
    assert [(i.outlet, i.title) for i in got_in_first.new_items] == [("example.net", "Truce collapses, officials say")]
    # The genuine article is not taken for a duplicate of the spoof.
    assert [(i.outlet, i.title) for i in then.new_items] == [("reuters.com", article["title"])]
    # An aggregator's items count for the outlet of their own links (the Reuters one is already stored).
    assert [(i.outlet, i.title) for i in agg.new_items] == [("apnews.com", "AP: talks resume")]


async def test_parsing_in_a_process_pool(engine: Engine, feed_server: FeedServer) -> None:
    from monitor.ingest.poll import parse_pool

    feed_server.route("/p.xml", body=feed(["1", "2", "3"]))
    feed_server.route("/bad.xml", body=b"<html>nope</html>")
    sync(engine, [feed_server.url("/p.xml"), feed_server.url("/bad.xml")])
    pool = parse_pool(1)
    try:
        r = await poll_once(engine, S, now=NOW, parse_executor=pool)
    finally:
        pool.shutdown()
    assert r.totals == {"polled": 2, "new_items": 3, "not_modified": 0, "errors": 1}


ATOM = (b'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>Atom News</title>'
        b'<link href="https://atom.example.org/"/><id>urn:x</id><updated>2024-05-01T09:00:00Z</updated>'
        b'<entry><title type="html">Talks &lt;b&gt;resume&lt;/b&gt; in Doha</title><id>urn:1</id>'
        b'<link rel="alternate" href="https://atom.example.org/1?utm_source=x"/><published>2024-05-01T08:00:00Z'
        b'</published><author><name>A. Writer</name><email>a@atom.example.org</email></author>'
        b'<summary>Mediators met on Tuesday.</summary><content type="html">&lt;p&gt;Long text&lt;/p&gt;</content>'
        b'</entry><entry><title>No link here</title><id>https://atom.example.org/2</id>'
        b'<updated>2024-05-01T07:00:00+02:00</updated><content type="text">Only content</content></entry></feed>')


async def test_fast_reader_and_feedparser_store_the_same_items(tmp_path, feed_server: FeedServer, monkeypatch) -> None:
    """fast_feed_reader = false (every feed through feedparser) is a supported setting; both readers must
    store identical items from the same responses."""
    feed_server.route("/r.xml", body=feed(["1", "2", "3"]), headers={"Content-Type": "application/rss+xml"})
    feed_server.route("/a.xml", body=ATOM, headers={"Content-Type": "application/atom+xml"})
    urls = [feed_server.url("/r.xml"), feed_server.url("/a.xml")]
    assert fastfeed.read(ATOM, {"content-type": "application/atom+xml"}) is not None  # both shapes take the
    assert fastfeed.read(feed(["1"]), {"content-type": "application/rss+xml"}) is not None  # fast path
    stored = []
    read = fastfeed.read
    for fast in (True, False):

        def only_if_fast(body, headers, fast=fast):  # type: ignore[no-untyped-def]
            assert fast, "fast_feed_reader = false must not use the fast reader"
            return read(body, headers)

        monkeypatch.setattr(fastfeed, "read", only_if_fast)
        eng = db.make_engine(f"sqlite:///{tmp_path / f'fast-{fast}.db'}")
        db.upgrade(eng)
        sync(eng, urls)
        report = await poll_once(eng, S.model_copy(update={"fast_feed_reader": fast}), now=NOW)
        assert report.totals["errors"] == 0 and report.totals["new_items"] == 5
        with db.session_factory(eng)() as s:
            stored.append(sorted((i.key, i.outlet, i.title, i.summary, i.link, i.author, i.published_at)
                                 for i in s.scalars(select(Item))))
        eng.dispose()
    assert stored[0] == stored[1]
    by_title = {row[2]: row for row in stored[0]}
    assert by_title["Talks resume in Doha"][5] == "A. Writer (a@atom.example.org)"
    assert by_title["No link here"][4] == "https://atom.example.org/2"  # an Atom id that is a URL is the link


async def test_a_redirect_to_a_malformed_url_is_that_feeds_error_not_the_pass(engine: Engine,
                                                                               feed_server: FeedServer) -> None:
    feed_server.route("/good.xml", body=feed(["1", "2"]))
    feed_server.route("/octal.xml", status=302, headers={"Location": "http://0177.0.0.1/x"})
    feed_server.route("/ports.xml", status=301, headers={"Location": "http://example.com:80:80/feed"})
    sync(engine, [feed_server.url(p) for p in ("/good.xml", "/octal.xml", "/ports.xml")])
    for hours in (0, 3):  # and the pass after it too
        report = await poll_once(engine, S, all_feeds=True, now=NOW + timedelta(hours=hours))
        by_url = {r.url.rsplit("/", 1)[1]: r for r in report.rows}
        assert by_url["good.xml"].status in ("ok", "unchanged") and len(report.rows) == 3
        for bad in ("octal.xml", "ports.xml"):
            assert by_url[bad].status == "error" and "invalid URL" in (by_url[bad].error or "")


def test_poll_once_finishes_every_feed_of_a_large_configuration(tmp_path, engine: Engine,  # type: ignore[no-untyped-def]
                                                                 feed_server: FeedServer) -> None:
    """`monitor poll --once` over 2,500 feeds polls 2,500 (a pass used to stop at max_concurrency x 32)."""
    import json

    from click.testing import CliRunner

    from monitor.cli import main

    n = 2500
    for i in range(n):
        feed_server.route(f"/f{i}.xml", body=feed([str(i)]))
    url = engine.url.render_as_string(hide_password=False)
    cfg = tmp_path / "feeds.toml"
    cfg.write_text(f'[settings]\ndatabase_url = "{url}"\nallow_private_networks = true\nper_host_concurrency = 64\n'
                   + "".join(f'[[feeds]]\nurl = "{feed_server.url(f"/f{i}.xml")}"\n' for i in range(n)))
    r = CliRunner().invoke(main, ["--config", str(cfg), "poll", "--once", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output[-2000:]
    lines = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert lines[-1]["polled"] == n and lines[-1]["errors"] == 0
    assert sorted(row["url"] for row in lines[:-1]) == sorted(feed_server.url(f"/f{i}.xml") for i in range(n))
    assert {q.path for q in feed_server.requests} == {f"/f{i}.xml" for i in range(n)}
    assert len(feed_server.requests) == n  # each feed once
    with db.session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Feed).where(Feed.last_checked_at.is_(None))) == 0
        assert s.scalar(select(func.count()).select_from(Feed).where(Feed.lease_until.is_not(None))) == 0


@pytest.mark.parametrize("mode", ["due", "all_feeds", "feeds_filter"])
async def test_a_pass_claims_round_after_round_and_polls_each_feed_once(engine: Engine, feed_server: FeedServer,
                                                                        mode: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from monitor.ingest import poll

    monkeypatch.setattr(poll, "_CLAIM_ROUND_PER_SLOT", 4)  # rounds of 8 x 4 = 32 feeds: 80 feeds take three
    settings = Settings(allow_private_networks=True, fetch_timeout_s=3.0, max_concurrency=8, per_host_concurrency=8)
    urls = []
    for i in range(80):
        feed_server.route(f"/r{i}.xml", body=feed([str(i)]))
        urls.append(feed_server.url(f"/r{i}.xml"))
    sync(engine, urls)
    kwargs = {"due": {}, "all_feeds": {"all_feeds": True}, "feeds_filter": {"feeds_filter": urls[:50]}}[mode]
    r = await poll_once(engine, settings, now=NOW, **kwargs)  # type: ignore[arg-type]
    expected = 50 if mode == "feeds_filter" else 80
    assert sorted(row.url for row in r.rows) == sorted(urls[:expected])
    assert len(feed_server.requests) == expected
    capped = await poll_once(engine, settings, now=NOW + timedelta(days=1), limit=10)
    assert capped.totals["polled"] == 10


def test_feeds_list_state_agrees_with_the_last_status(tmp_path, engine: Engine, feed_server: FeedServer) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from monitor.cli import main

    feed_server.route("/good.xml", body=feed(["1"]))
    feed_server.route("/bad.xml", status=500)
    url = engine.url.render_as_string(hide_password=False)
    cfg = tmp_path / "feeds.toml"
    cfg.write_text(f'[settings]\ndatabase_url = "{url}"\nallow_private_networks = true\nfetch_timeout_s = 3\n'
                   f'[[feeds]]\nurl = "{feed_server.url("/good.xml")}"\nname = "Good"\n'
                   f'[[feeds]]\nurl = "{feed_server.url("/bad.xml")}"\nname = "Bad"\n'
                   f'[[feeds]]\nurl = "{feed_server.url("/new.xml")}"\nname = "New"\nenabled = false\n')
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(cfg), "poll", "--once"]).exit_code == 0
    out = runner.invoke(main, ["--config", str(cfg), "feeds", "list"]).output
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:] if line[:1].isalpha()}
    assert rows["Good"] == ["ok", "ok"]
    assert rows["Bad"] == ["failing", "error:http"]  # one failure: not "ok" beside an error
    assert rows["New"][0] == "disabled"
    states = {d["name"]: d["state"] for d in map(json.loads, runner.invoke(
        main, ["--config", str(cfg), "feeds", "list", "--json"]).stdout.splitlines())}
    assert states == {"Good": "ok", "Bad": "failing", "New": "disabled"}
