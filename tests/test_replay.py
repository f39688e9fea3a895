"""The replay server: real RSS over HTTP on a simulated clock, read back by our own fetch + parse + poll."""

from __future__ import annotations

import json
import lzma
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from monitor.config import FeedConfig, Settings
from monitor.ingest.parse import parse_feed
from monitor.ingest.poll import poll_once
from monitor.lab.replay import ATTRIBUTION, ReplayServer, load_items
from monitor.storage import db, store

pytestmark = pytest.mark.databases("sqlite", "postgresql")

T0 = datetime(2023, 11, 20, 0, 0, tzinfo=UTC)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "stream" / "items_2023_worldnews.jsonl.xz"


def write_jsonl(path: Path, n_per_feed: int = 5, compress: bool = False) -> Path:
    rows = []
    for feed in ("https://www.aljazeera.com/xml/rss/all.xml", "https://feeds.bbci.co.uk/news/world/rss.xml"):
        for i in range(n_per_feed):
            rows.append({"capture_day": "2023-11-20", "feed": feed, "title": f"{feed[12:20]} headline {i} & more",
                         "description": f"<p>teaser {i}</p>", "link": f"https://{feed[8:30]}/story/{i}",
                         "date_published": (T0 + timedelta(hours=i)).isoformat(), "language": "en"})
    rows.append({"broken": True})
    text = "\n".join(json.dumps(r) for r in rows) + "\nnot json\n"
    if compress:
        path = path.with_suffix(".jsonl.xz")
        path.write_bytes(lzma.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_load_items_plain_and_xz(tmp_path: Path, compress: bool) -> None:
    items = load_items(write_jsonl(tmp_path / "items.jsonl", compress=compress))
    assert len(items) == 10 and all(i.published.tzinfo is not None for i in items)
    assert len(load_items(write_jsonl(tmp_path / "i.jsonl"), since=T0 + timedelta(hours=3))) == 4


def test_items_appear_on_the_clock_with_validators(tmp_path: Path) -> None:
    now = [T0 + timedelta(minutes=30)]
    server = ReplayServer(load_items(write_jsonl(tmp_path / "items.jsonl")), clock=lambda: now[0], window=3)
    with server.run_in_thread():
        urls = server.feed_urls()
        assert len(urls) == 2
        with httpx.Client() as c:
            r = c.get(urls[0])
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/rss+xml")
            feed = parse_feed(r.content, r.headers, feed_url=urls[0], now=now[0])
            assert [i.title.split(" headline ")[1] for i in feed.items] == ["0 & more"]
            assert c.get(urls[0], headers={"If-None-Match": r.headers["etag"]}).status_code == 304
            assert c.get(urls[0], headers={"If-Modified-Since": r.headers["last-modified"]}).status_code == 304
            now[0] = T0 + timedelta(hours=10)
            r2 = c.get(urls[0], headers={"If-None-Match": r.headers["etag"]})
            assert r2.status_code == 200
            items = parse_feed(r2.content, r2.headers, feed_url=urls[0], now=now[0]).items
            assert len(items) == 3 and items[0].title.endswith("headline 4 & more")  # newest first, window 3
            assert ATTRIBUTION.split(";")[0] in r2.text
            opml = c.get(server.base_url + "/feeds.opml")
            assert opml.status_code == 200 and all(u in opml.text for u in urls)
            assert c.get(server.base_url + "/feeds/nope.xml").status_code == 404


async def test_poll_against_the_replay_server(tmp_path: Path, engine: Engine) -> None:
    now = [T0 + timedelta(hours=1, minutes=30)]
    server = ReplayServer(load_items(write_jsonl(tmp_path / "items.jsonl")), clock=lambda: now[0])
    with server.run_in_thread():
        with db.write_transaction(engine) as s:
            # the replay server stands in for many outlets: each item counts for its own link's outlet
            store.sync_feeds(s, [FeedConfig(url=u, aggregator=True) for u in server.feed_urls()], now[0])
        settings = Settings(allow_private_networks=True)
        r1 = await poll_once(engine, settings, now=now[0])
        assert r1.totals["new_items"] == 4  # two items per feed have been published by 01:30
        r2 = await poll_once(engine, settings, now=now[0], all_feeds=True)
        assert r2.totals["not_modified"] == 2
        now[0] = T0 + timedelta(hours=3, minutes=30)
        r3 = await poll_once(engine, settings, now=now[0], all_feeds=True)
        assert r3.totals["new_items"] == 4
        assert {i.outlet for i in r3.new_items} == {"aljazeera.com", "bbci.co.uk"}  # from the item links


@pytest.mark.skipif(not SHARED.exists(), reason="shared data not present")
def test_real_stream_excerpt_loads(tmp_path: Path) -> None:
    # The first megabyte of the real file is enough to check its shape is what the loader expects.
    with lzma.open(SHARED, "rt", encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(500)]
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join(lines))
    items = load_items(sample)
    assert len(items) == 500 and all(i.title and i.feed.startswith("http") for i in items)
