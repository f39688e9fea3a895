"""A feed replay server: real RSS 2.0 documents built from captured headlines, on a simulated clock.

Input: JSONL (plain or .xz) shaped like ../shared/data/stream/items_2023_worldnews.jsonl.xz, one object a
line: capture_day, feed (the feed URL), title, description, link, date_published (ISO 8601), language,
author?. Each source feed becomes `/feeds/<slug>.xml`, showing the latest `window` items whose
date_published <= the clock's now, with ETag / Last-Modified and 304 answers; `/feeds.opml` lists them all.

Speed: items are sorted per feed once; a request is a bisect on the feed's dates plus a dictionary lookup of
the document already rendered for that number of visible items (rendering happens once per new item).

Use in process (`ReplayServer(items, clock)` + `run_in_thread()`) for tests, the demo and benchmarks, or
through `monitor replay-server --data FILE --speed N`.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import lzma
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from monitor.errors import MonitorError

ATTRIBUTION = ("Replayed headlines from the public repository rumca-js/RSS-Link-Database-2023 (GPL-3.0); "
               "headlines and teasers belong to their outlets.")
DEFAULT_WINDOW = 50
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ReplayItem:
    feed: str
    title: str
    description: str
    link: str
    published: datetime  # aware UTC
    language: str | None = None
    author: str | None = None


def load_items(
    path: str | Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    feeds: Iterable[str] | None = None,
) -> list[ReplayItem]:
    """Read items from a JSONL file (.xz or plain), optionally only those published in [since, until) and
    from the given source feed URLs. Lines that are not valid items are skipped."""
    p = Path(path)
    wanted = set(feeds) if feeds is not None else None
    opener = lzma.open if p.suffix == ".xz" else open
    out: list[ReplayItem] = []
    try:
        with opener(p, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            for line in fh:
                item = _item(line)
                if item is None:
                    continue
                if wanted is not None and item.feed not in wanted:
                    continue
                if (since and item.published < since) or (until and item.published >= until):
                    continue
                out.append(item)
    except (OSError, lzma.LZMAError, EOFError) as e:
        raise MonitorError(f"{p}: cannot read replay data: {e}") from e
    return out


def _item(line: str) -> ReplayItem | None:
    try:
        d = json.loads(line)
        published = datetime.fromisoformat(str(d["date_published"]).replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(d, dict) or not d.get("feed") or not d.get("title"):
        return None
    published = published.replace(tzinfo=UTC) if published.tzinfo is None else published.astimezone(UTC)
    return ReplayItem(feed=str(d["feed"]), title=str(d["title"]), description=str(d.get("description") or ""),
                      link=str(d.get("link") or ""), published=published, language=d.get("language") or None,
                      author=d.get("author") or None)


def feed_slug(url: str) -> str:
    """A stable, readable path segment for a source feed URL."""
    parts = urlsplit(url)
    base = re.sub(r"[^a-z0-9]+", "-", f"{parts.hostname or ''}{parts.path}".lower()).strip("-")[:60]
    return f"{base}-{hashlib.sha256(url.encode()).hexdigest()[:6]}"


class _ReplayFeed:
    __slots__ = ("cache", "items", "slug", "times", "title", "url")

    def __init__(self, url: str, items: list[ReplayItem]) -> None:
        self.url = url
        self.slug = feed_slug(url)
        self.items = sorted(items, key=lambda i: i.published)
        self.times = [i.published for i in self.items]
        host = urlsplit(url).hostname or url
        self.title = f"{host} (replay)"
        self.cache: dict[int, tuple[bytes, str, str]] = {}


class ReplayFeeds:
    """The feed documents as a function of time (no I/O; the server below wraps it)."""

    def __init__(self, items: Iterable[ReplayItem], *, window: int = DEFAULT_WINDOW) -> None:
        by_feed: dict[str, list[ReplayItem]] = {}
        for it in items:
            by_feed.setdefault(it.feed, []).append(it)
        self.window = window
        self.feeds: dict[str, _ReplayFeed] = {}
        for url in sorted(by_feed):
            f = _ReplayFeed(url, by_feed[url])
            self.feeds[f.slug] = f
        self._lock = threading.Lock()

    def first_time(self) -> datetime | None:
        times = [f.times[0] for f in self.feeds.values() if f.times]
        return min(times) if times else None

    def document(self, slug: str, now: datetime) -> tuple[bytes, str, str] | None:
        """(RSS bytes, ETag, Last-Modified) of a feed at `now`, or None for an unknown feed."""
        f = self.feeds.get(slug)
        if f is None:
            return None
        count = bisect.bisect_right(f.times, now)
        doc = f.cache.get(count)
        if doc is None:
            doc = self._render(f, count)
            with self._lock:
                f.cache[count] = doc
        return doc

    def _render(self, f: _ReplayFeed, count: int) -> tuple[bytes, str, str]:
        visible = f.items[max(0, count - self.window) : count][::-1]
        last = visible[0].published if visible else EPOCH
        parts = [
            '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>',
            f"<title>{escape(f.title)}</title><link>{escape(f.url)}</link>",
            f"<description>{escape(ATTRIBUTION + ' Original feed: ' + f.url)}</description>",
            f"<lastBuildDate>{format_datetime(last, usegmt=True)}</lastBuildDate>",
        ]
        for it in visible:
            guid = it.link or hashlib.sha256(f"{it.title}{it.published.isoformat()}".encode()).hexdigest()
            permalink = "true" if it.link else "false"
            parts.append(
                f"<item><title>{escape(it.title)}</title>"
                + (f"<link>{escape(it.link)}</link>" if it.link else "")
                + f"<guid isPermaLink={quoteattr(permalink)}>{escape(guid)}</guid>"
                + f"<description>{escape(it.description)}</description>"
                + f"<pubDate>{format_datetime(it.published, usegmt=True)}</pubDate>"
                + (f"<author>{escape(it.author)}</author>" if it.author else "")
                + "</item>"
            )
        parts.append("</channel></rss>")
        body = "".join(parts).encode("utf-8")
        etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"'
        return body, etag, format_datetime(last, usegmt=True)

    def opml(self, base_url: str) -> bytes:
        lines = ['<?xml version="1.0" encoding="utf-8"?>', '<opml version="2.0"><head><title>replay feeds</title></head><body>']
        for f in self.feeds.values():
            lines.append(f"<outline type=\"rss\" text={quoteattr(f.title)} title={quoteattr(f.title)} "
                         f"xmlUrl={quoteattr(f'{base_url}/feeds/{f.slug}.xml')} htmlUrl={quoteattr(f.url)}/>")
        lines.append("</body></opml>")
        return "\n".join(lines).encode("utf-8")

    def urls(self, base_url: str) -> list[str]:
        return [f"{base_url}/feeds/{slug}.xml" for slug in self.feeds]


class ReplayServer:
    """HTTP server for ReplayFeeds on a clock. `clock()` returns the simulated now (aware UTC)."""

    def __init__(self, items: Iterable[ReplayItem] | ReplayFeeds, clock: Callable[[], datetime], *,
                 window: int = DEFAULT_WINDOW) -> None:
        self.feeds = items if isinstance(items, ReplayFeeds) else ReplayFeeds(items, window=window)
        self.clock = clock
        self.base_url = ""
        self.requests = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/feeds/{slug}.xml", self._feed)
        app.router.add_get("/feeds.opml", self._opml)
        app.router.add_get("/", self._index)
        return app

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        doc = self.feeds.document(request.match_info["slug"], self.clock())
        if doc is None:
            raise web.HTTPNotFound(text="no such replay feed; see /feeds.opml")
        body, etag, last_modified = doc
        headers = {"ETag": etag, "Last-Modified": last_modified, "Cache-Control": "no-cache"}
        inm = request.headers.get("If-None-Match")
        ims = request.headers.get("If-Modified-Since")
        if (inm is not None and inm == etag) or (inm is None and ims is not None and _not_modified_since(ims, last_modified)):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type="application/rss+xml", charset="utf-8")

    async def _opml(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.feeds.opml(_base(request)), content_type="text/x-opml", charset="utf-8")

    async def _index(self, request: web.Request) -> web.StreamResponse:
        text = (f"monitor replay server: {len(self.feeds.feeds)} feeds, clock at {self.clock().isoformat()}\n"
                f"feed list: {_base(request)}/feeds.opml\n{ATTRIBUTION}\n")
        return web.Response(text=text)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving on the running loop; returns the base URL."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        bound_port = sock.getsockname()[1]
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- background thread (tests, demo, benchmarks) ---

    def run_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> ReplayServer:
        """Serve from a daemon thread with its own event loop; returns self once listening."""

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start(host, port))
            except BaseException as e:
                self._error = e
                self._ready.set()
                return
            self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=main, name="replay-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise MonitorError(f"replay server could not start on {host}:{port}: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> ReplayServer:
        return self if self._thread is not None else self.run_in_thread()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def feed_urls(self) -> list[str]:
        return self.feeds.urls(self.base_url)


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _not_modified_since(ims: str, last_modified: str) -> bool:
    try:
        return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
    except (TypeError, ValueError, IndexError):
        return False

