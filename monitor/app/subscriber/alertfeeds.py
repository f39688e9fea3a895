"""Per-topic feeds of alerts for people who live in a feed reader: Atom (RFC 4287) and JSON Feed 1.1.
Each entry is one alert (a new story or an update): its headline, what is new, the outlets that carried the
story, a link to the story page and the article. Pure rendering over `FeedEntry` records."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from xml.etree import ElementTree as ET

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.records import ALERT_DECISIONS
from monitor.storage.db import aware_utc
from monitor.storage.tables import Alert, Story

ATOM_NS = "http://www.w3.org/2005/Atom"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
FEED_SIZE = 50


@dataclass(frozen=True, slots=True)
class FeedEntry:
    alert_id: int
    story_id: int
    decision: str
    title: str
    what_is_new: str | None
    article_link: str | None
    outlet: str
    outlets: tuple[str, ...]
    published_at: datetime
    created_at: datetime


def entries(session: Session, topic_id: str, limit: int = FEED_SIZE) -> list[FeedEntry]:
    """The topic's latest alerts, newest first."""
    rows = session.execute(
        select(Alert, Story).join(Story, Story.id == Alert.story_id)
        .where(Alert.topic_id == topic_id, Alert.decision.in_(ALERT_DECISIONS))
        .order_by(Alert.id.desc()).limit(limit)).all()
    return [FeedEntry(a.id, st.id, a.decision, a.title, a.what_is_new, a.link, a.outlet, tuple(st.sources or ()),
                      aware_utc(a.published_at), aware_utc(a.created_at))  # type: ignore[arg-type]
            for a, st in rows]


def _summary(e: FeedEntry) -> str:
    lead = f"What's new: {e.what_is_new}" if e.decision == "update" and e.what_is_new else "New story"
    outlets = ", ".join(e.outlets) or e.outlet
    return f"{lead}. Reported by {outlets}."


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _safe(url: str | None) -> str | None:
    return url if url and url.split(":", 1)[0].lower() in ("http", "https") else None


def atom(topic_id: str, topic_name: str, feed_url: str, home_url: str, items: Sequence[FeedEntry],
         story_url: Callable[[int], str], now: datetime) -> bytes:
    ET.register_namespace("", ATOM_NS)

    def el(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        e = ET.SubElement(parent, f"{{{ATOM_NS}}}{tag}", attrs)
        if text is not None:
            e.text = text
        return e

    root = ET.Element(f"{{{ATOM_NS}}}feed")
    el(root, "id", f"{home_url.rstrip('/')}/feeds/{topic_id}")
    el(root, "title", f"{topic_name}: alerts")
    el(root, "subtitle", "New stories and material updates, one entry per development.")
    el(root, "updated", _iso(items[0].created_at if items else now))
    el(root, "link", rel="self", type="application/atom+xml", href=feed_url)
    el(root, "link", rel="alternate", type="text/html", href=home_url)
    author = el(root, "author")
    el(author, "name", "monitor")
    el(root, "generator", "monitor")
    for e in items:
        entry = el(root, "entry")
        el(entry, "id", f"{home_url.rstrip('/')}/alerts/{e.alert_id}")
        el(entry, "title", ("Update: " if e.decision == "update" else "") + e.title)
        el(entry, "updated", _iso(e.created_at))
        el(entry, "published", _iso(e.published_at))
        el(entry, "link", rel="alternate", type="text/html", href=story_url(e.story_id))
        article = _safe(e.article_link)
        if article:
            el(entry, "link", rel="related", type="text/html", href=article)
        el(entry, "summary", _summary(e), type="text")
        for outlet in e.outlets or (e.outlet,):
            el(entry, "category", term=outlet, label=outlet)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")


def json_feed(topic_id: str, topic_name: str, feed_url: str, home_url: str, items: Sequence[FeedEntry],
              story_url: Callable[[int], str]) -> bytes:
    feed = {
        "version": JSON_FEED_VERSION,
        "title": f"{topic_name}: alerts",
        "home_page_url": home_url,
        "feed_url": feed_url,
        "description": "New stories and material updates, one item per development.",
        "authors": [{"name": "monitor"}],
        "language": "en",
        "items": [
            {
                "id": f"{home_url.rstrip('/')}/alerts/{e.alert_id}",
                "url": story_url(e.story_id),
                **({"external_url": _safe(e.article_link)} if _safe(e.article_link) else {}),
                "title": ("Update: " if e.decision == "update" else "") + e.title,
                "content_text": _summary(e),
                "summary": e.what_is_new or e.title,
                "date_published": _iso(e.published_at),
                "date_modified": _iso(e.created_at),
                "tags": [topic_id, *(e.outlets or (e.outlet,))],
                "_monitor": {"decision": e.decision, "story_id": e.story_id, "outlets": list(e.outlets or (e.outlet,))},
            }
            for e in items
        ],
    }
    return json.dumps(feed, ensure_ascii=False, indent=1).encode("utf-8")
