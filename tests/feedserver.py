"""A real HTTP server on 127.0.0.1 for tests: per-path responses (status, headers, body, gzip, slow drip,
redirects, conditional GET) and a record of every request it received.

    with FeedServer() as server:
        server.route("/feed.xml", body=rss_bytes, headers={"ETag": '"v1"'}, conditional=True)
        server.redirect("/old", "/feed.xml", status=301)
        url = server.url("/feed.xml")
        ...
        server.requests_for("/feed.xml")[-1].headers["if-none-match"]  # names lower-cased

Also available as the `feed_server` fixture (tests/conftest.py).
"""

from __future__ import annotations

import gzip as gzip_module
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class _QuietServer(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: with 64 connections at once on a loaded machine, the rest
    # were refused and counted as feed errors (test_poll's 2,500-feed pass on PostgreSQL, under load).
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up mid-response (deadline and size-cap tests) are expected


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    at: float


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = False  # compress the body and send Content-Encoding: gzip
    drip_interval_s: float | None = None  # send the body one byte per interval
    delay_s: float = 0.0  # wait before answering
    conditional: bool = False  # answer 304 when If-None-Match / If-Modified-Since match ETag / Last-Modified
    dynamic: Callable[[RecordedRequest], Route] | None = None  # compute the response per request


class FeedServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self)

            def do_HEAD(self) -> None:
                server._handle(self)

        self._httpd = _QuietServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> FeedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def route(self, path: str, route: Route | None = None, **kwargs: object) -> Route:
        r = route or Route(**kwargs)  # type: ignore[arg-type]
        with self._lock:
            self._routes[path] = r
        return r

    def redirect(self, path: str, location: str, status: int = 301) -> None:
        self.route(path, status=status, headers={"Location": location})

    def requests_for(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        req = RecordedRequest(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, time.time())
        with self._lock:
            self.requests.append(req)
            route = self._routes.get(h.path.split("?", 1)[0])
        if route is None:
            route = Route(status=404, body=b"not found")
        if route.dynamic is not None:
            route = route.dynamic(req)
        if route.delay_s:
            time.sleep(route.delay_s)
        headers = dict(route.headers)
        status, body = route.status, route.body
        if route.conditional and _not_modified(req.headers, headers):
            status, body = 304, b""
        if route.gzip and body:
            body = gzip_module.compress(body)
            headers["Content-Encoding"] = "gzip"
        try:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if h.command == "HEAD" or status == 304:
                return
            if route.drip_interval_s:
                for i in range(len(body)):
                    h.wfile.write(body[i : i + 1])
                    h.wfile.flush()
                    time.sleep(route.drip_interval_s)
            else:
                h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _not_modified(request_headers: dict[str, str], response_headers: dict[str, str]) -> bool:
    lower = {k.lower(): v for k, v in request_headers.items()}
    resp = {k.lower(): v for k, v in response_headers.items()}
    if "if-none-match" in lower and "etag" in resp:
        return lower["if-none-match"] == resp["etag"]
    if "if-modified-since" in lower and "last-modified" in resp:
        return lower["if-modified-since"] == resp["last-modified"]
    return False


def rss(items: list[dict[str, str]], title: str = "Test feed", link: str = "https://www.example.com/") -> bytes:
    """A small RSS 2.0 document; each item dict may have title, link, guid, description, pubDate."""
    from xml.sax.saxutils import escape

    parts = [f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel><title>{escape(title)}</title>'
             f"<link>{escape(link)}</link><description>test</description>"]
    for it in items:
        parts.append("<item>")
        for tag in ("title", "link", "guid", "description", "pubDate"):
            if tag in it:
                parts.append(f"<{tag}>{escape(it[tag])}</{tag}>")
        parts.append("</item>")
    parts.append("</channel></rss>")
    return "".join(parts).encode("utf-8")
