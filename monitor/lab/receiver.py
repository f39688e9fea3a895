"""Small real HTTP servers on 127.0.0.1 for the demo, the tests and the benchmarks: a webhook receiver that
captures what it is sent (the demo's stand-in for Slack), and a live feed server that items can be
published to while a service polls it (the latency benchmark, the service tests)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for a server a test or benchmark starts as a subprocess)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() of receipt

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class CaptureReceiver:
    """Answers every POST with 200 "ok" (what Slack answers) and keeps the request; with `out_dir` each
    body is also written there as NNNN-<path>.json."""

    out_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> CaptureReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver._keep(Received(self.path, dict(self.headers.items()), body, time.time()))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                log.debug("receiver: " + format, *args)

        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="capture-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> CaptureReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _keep(self, r: Received) -> None:
        with self._lock:
            self.received.append(r)
            n = len(self.received)
        if self.out_dir is not None:
            name = r.path.strip("/").replace("/", "-") or "root"
            (self.out_dir / f"{n:04d}-{name}.json").write_bytes(r.body)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)


@dataclass
class LiveFeedServer:
    """Serves RSS at /<name>.xml with the items published so far; logs each request (name, time) and the
    time each item was first served, so a benchmark can tell fetch time from delivery time."""

    host: str = "127.0.0.1"
    feeds: dict[str, list[tuple[str, str, datetime]]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    first_served: dict[tuple[str, int], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def publish(self, feed: str, title: str, summary: str, published: datetime) -> int:
        """Add an item; returns its index in the feed."""
        with self._lock:
            items = self.feeds.setdefault(feed, [])
            items.append((title, summary, published))
            return len(items) - 1

    def document(self, feed: str) -> bytes:
        now = time.time()
        with self._lock:
            items = list(self.feeds.get(feed, []))
            for i in range(len(items)):
                self.first_served.setdefault((feed, i), now)
        body = "".join(
            f"<item><title>{escape(t)}</title><description>{escape(s)}</description>"
            f"<link>https://news.example.org/{feed}/{i}</link><guid>{feed}-{i}</guid>"
            f"<pubDate>{format_datetime(p)}</pubDate></item>"
            for i, (t, s, p) in enumerate(items)
        )
        return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>{feed}</title>'
                f"<link>https://news.example.org/</link><description>live test feed</description>{body}"
                "</channel></rss>").encode()

    def start(self) -> LiveFeedServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.strip("/").removesuffix(".xml")
                with outer._lock:
                    outer.requests.append(name)
                body = outer.document(name)
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("feed server: " + format, *args)

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="live-feed-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> LiveFeedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
