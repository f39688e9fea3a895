"""fetch: one feed -> one HTTP result, politely and defensively.

`Fetcher` is an async context manager around one httpx transport. httpx is the project's HTTP API
(httpx.Request / httpx.Response, decoding, transports); the transport is `httpx-aiohttp` (aiohttp's
connection pool), measured ~5x faster than httpx's own pool at 64 connections. Requests go straight to the
transport (`handle_async_request`) rather than through httpx.AsyncClient: the client layer adds cookie
jars, auth and redirect handling that feeds do not need (redirects are followed here, by hand), and skipping
it made a 304 pass ~1.5x faster in bench/poll.py. Any httpx transport can be injected (tests, proxies).
What a fetch does:

* conditional GET (If-None-Match / If-Modified-Since from the stored validators); 304 -> "not_modified";
* a 200 whose body hashes (sha256) to the stored `body_hash` -> "unchanged" (not re-parsed downstream);
* 429/503 with Retry-After (delta seconds or HTTP date) -> "deferred" with `retry_after`;
* redirects followed by hand (at most 5 hops) so every hop is re-checked against the address rule; the
  new URL is reported as `permanent_url` only when *every* hop was 301/308;
* the body is streamed and counted *after* decompression, so a gzip bomb stops at `max_feed_bytes`;
* one deadline (`fetch_timeout_s`) around the whole exchange, so a 1 byte/s server cannot hold a worker;
* a global limit (`max_concurrency`) and a per-host limit (`per_host_concurrency`);
* hosts that resolve to private, loopback, link-local or reserved addresses are refused unless
  `allow_private_networks`: IP literals are checked before connecting, names by a resolver wrapped around
  aiohttp's (every address of the name is checked, at connection time, on every hop, so DNS rebinding
  between check and connect is not possible).

`fetch()` never raises: a failure is a FetchResult with status "error", `error_kind` and a message that names
the feed URL and says what to do.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import TracebackType
from urllib.parse import urljoin, urlsplit

import aiohttp
import httpx

from monitor.config import Settings
from monitor.netguard import PrivateAddressError, connect_failure, find_cause, guarded_transport, is_public_ip
from monitor.records import FetchRequest, FetchResult
from monitor.storage.db import utcnow

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PERMANENT = frozenset({301, 308})
# Response headers feedparser uses (encoding detection, relative URIs, language).
_PARSE_HEADERS = ("content-type", "content-location", "content-language")
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)", re.I)
_ACCEPT = "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, application/xml;q=0.8, text/xml;q=0.8, */*;q=0.1"


class _FetchFailed(Exception):
    def __init__(self, kind: str, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.http_status = http_status


def is_blocked_address(address: str) -> bool:
    """True for addresses a feed URL may not point at unless allow_private_networks is set (the one
    policy of monitor.netguard, shared with the webhook senders)."""
    return not is_public_ip(address)


class Fetcher:
    """HTTP client for feeds. Use as `async with Fetcher(settings) as f: result = await f.fetch(req)`."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport`: an httpx transport to use instead of the aiohttp one (the caller closes it)."""
        self._settings = settings
        self._clock = clock
        self._transport = transport
        self._owns_transport = False
        t = settings.fetch_timeout_s
        self._extensions = {"timeout": {"connect": t, "read": t, "write": t, "pool": t}}
        self._headers = {"User-Agent": settings.user_agent, "Accept": _ACCEPT, "Accept-Encoding": "gzip, deflate"}
        self._global = asyncio.Semaphore(settings.max_concurrency)
        self._hosts: dict[str, asyncio.Semaphore] = {}

    async def __aenter__(self) -> Fetcher:
        if self._transport is None:
            self._transport = guarded_transport(
                allow_private_networks=self._settings.allow_private_networks,
                limit=self._settings.max_concurrency,
                limit_per_host=0,  # enforced by our own per-host semaphores
                ttl_dns_cache=300,
            )
            self._owns_transport = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._transport is not None and self._owns_transport:
            await self._transport.aclose()
            self._transport = None
            self._owns_transport = False

    def _host_limit(self, url: str) -> asyncio.Semaphore:
        host = (urlsplit(url).hostname or "").lower()
        sem = self._hosts.get(host)
        if sem is None:
            sem = self._hosts[host] = asyncio.Semaphore(self._settings.per_host_concurrency)
        return sem

    async def fetch(self, req: FetchRequest) -> FetchResult:
        """Fetch one feed. Never raises (except cancellation): errors come back as status "error"."""
        if self._transport is None:
            raise RuntimeError("Fetcher used outside `async with`")
        fetched_at = self._clock()
        t0 = time.perf_counter()
        deadline = self._settings.fetch_timeout_s

        def failed(kind: str, message: str, http_status: int | None = None) -> FetchResult:
            return FetchResult(
                feed_id=req.feed_id, url=req.url, status="error", fetched_at=fetched_at,
                elapsed_s=time.perf_counter() - t0, http_status=http_status, error=message, error_kind=kind,
            )

        try:
            async with self._global, self._host_limit(req.url):
                t0 = time.perf_counter()  # the deadline covers the exchange, not the wait for a slot
                async with asyncio.timeout(deadline):
                    return await self._exchange(req, fetched_at, t0)
        except _FetchFailed as e:
            return failed(e.kind, str(e), e.http_status)
        except TimeoutError:
            return failed("timeout", f"{req.url}: no complete response within {deadline:g} s (fetch_timeout_s); "
                                     "the server is too slow or stalled, it will be retried later")
        except (httpx.HTTPError, aiohttp.ClientError, OSError, ValueError) as e:
            private = find_cause(e, PrivateAddressError)
            if private is not None:
                return failed("private_address", f"{req.url}: refused: {private}; set allow_private_networks = true "
                                                 "in [settings] only if this feed is meant to be on a private network")
            known = connect_failure(e, _host_port(req.url))
            if known is not None and known[0] == "dns":
                return failed("dns", f"{req.url}: {known[1]}; check the host name in the URL (a typo, or a site that "
                                     "is gone); it will be retried with backoff")
            if known is not None:
                return failed("network", f"{req.url}: {known[1]}; check the URL and that the site is up; it will "
                                         "be retried with backoff")
            return failed("network", f"{req.url}: network error: {_describe(e)}; check the URL and that the site "
                                     "is up; it will be retried with backoff")
        except Exception as e:  # never let one feed abort the pass: record it, back off, keep going
            log.exception("unexpected error fetching a feed", extra={"feed_id": req.feed_id, "feed_url": req.url})
            return failed("internal", f"{req.url}: unexpected error: {_describe(e)}; it will be retried with "
                                      "backoff (see the log)")

    async def _exchange(self, req: FetchRequest, fetched_at: datetime, t0: float) -> FetchResult:
        assert self._transport is not None
        url = req.url
        permanent = True
        headers = dict(self._headers)
        if req.etag:
            headers["If-None-Match"] = req.etag
        if req.last_modified:
            headers["If-Modified-Since"] = req.last_modified
        for _hop in range(MAX_REDIRECTS + 1):
            self._check_url(req.url, url)
            request = httpx.Request("GET", url, headers=headers, extensions=self._extensions)
            response = await self._transport.handle_async_request(request)
            try:
                status = response.status_code
                if status in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise _FetchFailed("http", f"{req.url}: HTTP {status} redirect without a Location header", status)
                    permanent = permanent and status in _PERMANENT
                    url = urljoin(url, location.strip())
                    continue
                return await self._result(req, response, url, permanent and url != req.url, fetched_at, t0)
            finally:
                await response.aclose()
        raise _FetchFailed("redirects", f"{req.url}: more than {MAX_REDIRECTS} redirects; fix the feed URL in feeds.toml")

    def _check_url(self, feed_url: str, url: str) -> None:
        kind = "redirects" if url != feed_url else "network"
        try:
            httpx.URL(url)  # what the request will be built from: e.g. an octal host or two ports fail here
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except (httpx.InvalidURL, ValueError) as e:
            where = "redirects to" if url != feed_url else "is"
            raise _FetchFailed(kind, f"{feed_url}: {where} an invalid URL {url!r} ({e}); fix the feed URL in "
                                     "feeds.toml") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _FetchFailed(kind, f"{feed_url}: {url!r} is not an http(s) URL; fix the feed URL in feeds.toml")
        if self._settings.allow_private_networks:
            return
        host = parts.hostname
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return  # a name: checked by the resolver when connecting
        if is_blocked_address(host):
            where = "" if url == feed_url else f" (redirected to {url})"
            raise PrivateAddressError(f"{host}{where} is a private, loopback, link-local or reserved address")

    async def _result(
        self, req: FetchRequest, response: httpx.Response, final_url: str, permanent: bool, fetched_at: datetime, t0: float
    ) -> FetchResult:
        status = response.status_code
        h = response.headers
        # What every outcome of this response shares; each branch below completes it.
        answered = FetchResult(
            feed_id=req.feed_id, url=req.url, status="ok", fetched_at=fetched_at, http_status=status,
            final_url=final_url, permanent_url=final_url if permanent else None,
            max_age_s=cache_lifetime(h.get("cache-control"), h.get("expires"), h.get("date"), fetched_at),
        )
        if status == 304:
            return replace(
                answered, status="not_modified", elapsed_s=time.perf_counter() - t0,
                etag=h.get("etag") or req.etag, last_modified=h.get("last-modified") or req.last_modified,
                body_hash=req.body_hash,
            )
        if status in (429, 503):
            retry_after = parse_retry_after(h.get("retry-after"), fetched_at)
            if status == 429 or retry_after is not None:
                when = f"after {retry_after.isoformat()}" if retry_after else "later (backing off)"
                return replace(
                    answered, status="deferred", elapsed_s=time.perf_counter() - t0, retry_after=retry_after,
                    error=f"{req.url}: HTTP {status}, the server asks to come back {when}", error_kind="http",
                )
        if not 200 <= status < 300:
            raise _FetchFailed("http", f"{req.url}: HTTP {status} {response.reason_phrase}; {_advice(status)}", status)
        body = await self._read_capped(req, response)
        digest = hashlib.sha256(body).hexdigest()
        unchanged = req.body_hash is not None and digest == req.body_hash
        return replace(
            answered, status="unchanged" if unchanged else "ok", elapsed_s=time.perf_counter() - t0,
            body=b"" if unchanged else body,
            headers=tuple((k, h[k]) for k in _PARSE_HEADERS if k in h),
            etag=h.get("etag"), last_modified=h.get("last-modified"), body_hash=digest,
        )

    async def _read_capped(self, req: FetchRequest, response: httpx.Response) -> bytes:
        cap = self._settings.max_feed_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and "content-encoding" not in response.headers and int(declared) > cap:
            raise _FetchFailed("too_large", f"{req.url}: body of {int(declared):,} bytes exceeds max_feed_bytes "
                                            f"({cap:,}); raise the setting if this feed is legitimately that big")
        buf = bytearray()
        async for chunk in response.aiter_bytes():  # decoded bytes: the cap applies after decompression
            buf += chunk
            if len(buf) > cap:
                raise _FetchFailed("too_large", f"{req.url}: body exceeds max_feed_bytes ({cap:,} bytes after "
                                                "decompression); raise the setting if this feed is legitimately that big")
        return bytes(buf)


def parse_retry_after(value: str | None, now: datetime) -> datetime | None:
    """Retry-After as delta seconds or an HTTP date -> aware UTC instant (None if absent or unreadable)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return now + timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def cache_lifetime(cache_control: str | None, expires: str | None, date: str | None, now: datetime) -> float | None:
    """Seconds the response may be reused: Cache-Control max-age, else Expires - Date. None if no hint."""
    if cache_control:
        if re.search(r"no-cache|no-store", cache_control, re.I):
            return None
        m = _MAX_AGE.search(cache_control)
        if m:
            return float(m.group(1))
    if expires:
        try:
            exp = parsedate_to_datetime(expires)
            base = parsedate_to_datetime(date) if date else now
        except (TypeError, ValueError, IndexError):
            return None
        if exp is None or base is None:
            return None
        exp = exp.replace(tzinfo=UTC) if exp.tzinfo is None else exp
        base = base.replace(tzinfo=UTC) if base.tzinfo is None else base
        return max(0.0, (exp - base).total_seconds())
    return None


def _advice(status: int) -> str:
    if status in (404, 410):
        return "the feed seems to be gone; check or remove its URL in feeds.toml"
    if status in (401, 403):
        return "the server refuses access; the feed may need another URL"
    if status >= 500:
        return "server error; it will be retried with backoff"
    return "check the feed URL in feeds.toml"


def _host_port(url: str) -> str | None:
    """host:port of a URL, without userinfo (it may hold credentials)."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    except ValueError:
        return None


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
