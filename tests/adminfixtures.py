"""Helpers for the admin UI/API tests: a feeds.toml with comments, an app with the admin routes on a real
database, and a logged-in client."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
from starlette.applications import Starlette

from monitor.app.admin import AdminContext, auth, make_context, routes
from monitor.app.admin.backtest import Backtester
from monitor.config import TopicConfig, load_config
from monitor.records import ItemRecord
from monitor.signal import embed
from monitor.storage import db
from monitor.storage.tables import Feed, Item

TOKEN = "test-admin-token-0123456789"
PASSWORD = "correct horse battery staple"

CONFIG = """\
# Test configuration. This comment must survive every save.
[settings]
timezone = "UTC"   # an inline comment that must survive too

[[feeds]]
name = "Wire"
url = "https://wire.example.org/rss.xml"

# Topics follow. A comment between sections.
[[topics]]
id = "hostage-talks"
name = "Hostage talks"
description = "Negotiations mediated by Qatar over a truce and the release of hostages held in Gaza"
examples = [
  "Qatar says talks on a hostage deal have made progress",  # the first example
  "Negotiators meet in Doha on a Gaza truce",
]
counterexamples = [
  "Qatar signs long-term gas supply deal",
]
threshold = 0.45

[[topics]]
id = "weather"
name = "Weather"
description = "Storms, floods and heat waves"
examples = ["Storm floods coastal towns"]

[[subscribers]]
email = "analyst@example.org"
topics = ["hostage-talks"]
cadence = "daily"
"""


def hostage_talks(**fields: object) -> TopicConfig:
    """The editor tests' topic: hostage talks mediated by Qatar and Egypt, three examples, one unrelated near miss
    (`fields` override or add, e.g. keywords)."""
    return TopicConfig(**{  # type: ignore[arg-type]
        "id": "hostage-talks", "name": "Hostage talks",
        "description": "Negotiations between Israel and Hamas, mediated by Qatar and Egypt, over a truce and hostages",
        "examples": ["Qatar says talks between Israel and Hamas on a hostage deal have made progress",
                     "Israeli negotiators travel to Doha for talks on a Gaza truce",
                     "Mediators say a deal to free hostages and pause the fighting is close"],
        "counterexamples": ["Storm floods coastal towns"], **fields})


def write_config(tmp: Path, text: str = CONFIG) -> Path:
    path = tmp / "feeds.toml"
    path.write_text(text, encoding="utf-8")
    return path


def admin_app(engine, config_path: Path, backtester: Callable[[], Backtester | None] = lambda: None,  # type: ignore[no-untyped-def]
              clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> tuple[Starlette, AdminContext]:
    config = load_config(config_path)
    ctx = make_context(engine, config_path, lambda: config, "test-secret-key-" + "x" * 20, backtester, clock)
    ctx.env = {auth.ADMIN_TOKEN_ENV: TOKEN}
    return Starlette(routes=routes(ctx)), ctx


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


async def login(c: httpx.AsyncClient, user: str = "alice", password: str = PASSWORD) -> httpx.Response:
    page = await c.get("/admin/login")
    return await c.post("/admin/login", data={"username": user, "password": password, "csrf_token": csrf_of(page.text),
                                               "next": "/admin/topics"})


NEAR_MISS = "Qatar signs gas deal with Germany as talks on supply continue"


def reader_said_not_relevant(engine, now: datetime) -> None:  # type: ignore[no-untyped-def]
    """A reader marks an alert of hostage-talks (`NEAR_MISS`) "not relevant": one suggestion for the topic
    (add it as a counterexample)."""
    from sqlalchemy.orm import Session

    from monitor.app.subscriber import feedback
    from monitor.storage.db import naive_utc
    from monitor.storage.tables import Alert, Story, Subscription

    with Session(engine) as s, s.begin():
        sub = Subscription(kind="email", target="analyst@example.org", cursor_alert_id=0, created_at=naive_utc(now))
        st = Story(topic_id="hostage-talks", title=NEAR_MISS, first_seen=naive_utc(now), last_seen=naive_utc(now),
                   sources=["dw.com"], state={})
        s.add_all([sub, st])
        s.flush()
        a = Alert(item_id=None, topic_id="hostage-talks", story_id=st.id, decision="new_story", reason="first report",
                  title=NEAR_MISS, outlet="dw.com", published_at=naive_utc(now), created_at=naive_utc(now))
        s.add(a)
        s.flush()
        feedback.record(s, sub.id, a.id, "not_relevant", now)


def store_items(engine, embedder, placed: list[tuple[str, datetime]], *,  # type: ignore[no-untyped-def]
                first_id: int = 1, vectors: np.ndarray | None = None) -> list[ItemRecord]:
    """(headline, published) -> stored items with their stored vectors, as the pipeline leaves them (one feed,
    created on first use), for the backtest's tests; `vectors` (the headlines' `embed.encode_items`, aligned with
    `placed`) saves encoding them again."""
    records = []
    with db.write_transaction(engine) as s:
        if s.get(Feed, 1) is None:
            first = min(published for _t, published in placed)
            s.add(Feed(id=1, url="https://wire.example/rss", config_url="https://wire.example/rss", name="Wire",
                       enabled=True, error_count=0, created_at=db.naive_utc(first - timedelta(days=30))))
            s.flush()
        for i, (title, published) in enumerate(placed, start=first_id):
            s.add(Item(id=i, feed_id=1, outlet="wire.example", key=f"k{i}", title=title, summary="",
                       published_at=db.naive_utc(published), fetched_at=db.naive_utc(published),
                       content_hash=f"h{i}", processed_at=db.naive_utc(published)))
            records.append(ItemRecord(id=i, feed_id=1, outlet="wire.example", title=title, summary="", link=None,
                                      published_at=published, content_hash=f"h{i}"))
        s.flush()
        titles = [title for title, _ in placed]
        if vectors is None:
            vectors = embed.encode_items(embedder, titles, titles)
        embed.store_vectors(s, embedder, [r.id for r in records], vectors)
    return records
