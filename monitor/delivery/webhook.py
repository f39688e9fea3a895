"""Webhook senders: Slack incoming webhooks (Block Kit JSON, at most one message per second per webhook)
and generic JSON webhooks signed per Standard Webhooks (https://www.standardwebhooks.com/):

    webhook-id: <delivery's idempotency key, the same on every retry>
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>

Responses: 2xx success; 3xx failure (redirects are not followed); 429/503 retry after `Retry-After`;
410 and Slack's `channel_not_found`/`channel_is_archived`/`no_service` disable the channel; other 4xx are
permanent; 5xx, timeouts and connection errors retry. URLs to private addresses are refused unless
`allow_private_networks`, both before sending and by the resolver the connection uses (monitor.netguard)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
import httpx

from monitor.delivery import Outgoing
from monitor.errors import ChannelGoneError, DeliveryError
from monitor.netguard import (
    BlockedAddressError,
    NameResolutionError,
    PrivateAddressError,
    check_url,
    connect_failure,
    find_cause,
)

SIGNATURE_TOLERANCE_S = 5 * 60
SLACK_MIN_INTERVAL_S = 1.0
SLACK_GONE = frozenset({"channel_not_found", "channel_is_archived", "no_service", "no_active_hooks"})
MAX_RETRY_AFTER_S = 24 * 3600.0

UrlLookup = Callable[[str], str | None]  # channel name -> URL (read from its env var at send time)


# --- Standard Webhooks signatures ------------------------------------------------------------------------


def secret_bytes(secret: str) -> bytes:
    """`whsec_<base64>` secrets are base64-decoded (the Standard Webhooks convention); others used as UTF-8."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except ValueError as e:
            raise DeliveryError("webhook secret starts with whsec_ but is not valid base64", permanent=True) from e
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_bytes(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None,
           tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """The receiver's check: a v1 signature matches and the timestamp is within the tolerance (replays of
    old messages fail). `headers` lookups are case-insensitive when given an httpx/starlette mapping."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    sigs = headers.get("webhook-signature")
    if not msg_id or not stamp or not sigs:
        return False
    try:
        ts = int(stamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = sign(secret, msg_id, ts, body).split(",", 1)[1]
    for candidate in sigs.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


# --- HTTP plumbing ---------------------------------------------------------------------------------------


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


class _HttpSender:
    def __init__(self, urls: UrlLookup, client: httpx.AsyncClient, *, allow_private_networks: bool, what: str) -> None:
        self._urls = urls
        self._client = client
        self._allow_private = allow_private_networks
        self._what = what

    async def _post(self, message: Outgoing, headers: dict[str, str]) -> httpx.Response:
        url = self._urls(message.target)
        where = f"{self._what} channel {message.target!r}"
        if not url:
            raise DeliveryError(f"{where}: no URL (is the channel still in feeds.toml and its url_env set?)")
        try:
            await asyncio.to_thread(check_url, url, allow_private_networks=self._allow_private)
        except NameResolutionError as e:  # a resolver outage passes; a typo needs the URL fixed
            raise DeliveryError(f"{where}: {e}; check the host name in the channel's URL") from e
        except BlockedAddressError as e:
            raise DeliveryError(f"{where}: {e}", permanent=True) from e
        try:
            return await self._client.post(url, content=message.payload, headers=headers, follow_redirects=False)
        except (httpx.HTTPError, aiohttp.ClientError) as e:
            private = find_cause(e, PrivateAddressError)
            if private is not None:  # the name changed its answer between the check and the connection
                raise DeliveryError(f"{where}: refused: {private} (set allow_private_networks = true in "
                                    "[settings] to allow it)", permanent=True) from e
            # Judge by the cause: httpx-aiohttp reports any aiohttp connection error as a ConnectTimeout.
            known = connect_failure(e, urlsplit(url).hostname)  # not the port or path: the URL is a secret
            if known is not None:
                raise DeliveryError(f"{where}: {known[1]}") from e
            if find_cause(e, TimeoutError) is not None:
                raise DeliveryError(f"{where}: timed out") from e
            cause = e.__cause__ or e
            raise DeliveryError(f"{where}: {type(cause).__name__}: {cause}") from e

    def _classify(self, message: Outgoing, response: httpx.Response, gone_bodies: frozenset[str] = frozenset()) -> str:
        status = response.status_code
        code = str(status)
        where = f"{self._what} channel {message.target!r}"
        body = response.text.strip()[:200]
        if body in gone_bodies or status == 410:
            raise ChannelGoneError(f"{where}: the receiver says the channel is gone ({status} {body or 'Gone'}); "
                                   "the channel is disabled until its URL is fixed", code=code)
        if 200 <= status < 300:
            return code
        if 300 <= status < 400:
            raise DeliveryError(f"{where}: redirect {status} to {response.headers.get('location', '?')!r} "
                                "not followed; update the URL", code=code)
        if status in (429, 503):
            raise DeliveryError(f"{where}: {status}, retrying later", code=code,
                                retry_after_s=retry_after_s(response.headers.get("retry-after")))
        if status in (408, 425) or status >= 500:
            raise DeliveryError(f"{where}: {status} {body}".strip(), code=code)
        raise DeliveryError(f"{where}: refused with {status} {body}".strip(), permanent=True, code=code)


class SlackSender(_HttpSender):
    """Posts Block Kit messages to Slack incoming webhooks, at most one per second per webhook URL."""

    def __init__(self, urls: UrlLookup, client: httpx.AsyncClient, *, allow_private_networks: bool,
                 min_interval_s: float = SLACK_MIN_INTERVAL_S, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(urls, client, allow_private_networks=allow_private_networks, what="slack")
        self._min_interval = min_interval_s
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def send(self, message: Outgoing) -> str:
        lock = self._locks.setdefault(message.target, asyncio.Lock())
        async with lock:
            last = self._last.get(message.target)
            if last is not None:
                wait = last + self._min_interval - self._monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                response = await self._post(message, {"content-type": "application/json; charset=utf-8"})
            finally:
                self._last[message.target] = self._monotonic()
            return self._classify(message, response, SLACK_GONE)


class WebhookSender(_HttpSender):
    """Posts the generic JSON digest, signed per Standard Webhooks with the channel's secret."""

    def __init__(self, urls: UrlLookup, secrets: UrlLookup, client: httpx.AsyncClient, *,
                 allow_private_networks: bool, clock: Callable[[], float] = time.time, user_agent: str = "monitor") -> None:
        super().__init__(urls, client, allow_private_networks=allow_private_networks, what="webhook")
        self._secrets = secrets
        self._clock = clock  # the receiver checks freshness against its wall clock: sign with the real time
        self._ua = user_agent

    async def send(self, message: Outgoing) -> str:
        secret = self._secrets(message.target)
        if not secret:
            raise DeliveryError(f"webhook channel {message.target!r}: no signing secret (set its secret_env)")
        ts = int(self._clock())
        headers = {
            "content-type": "application/json; charset=utf-8",
            "user-agent": self._ua,
            "webhook-id": message.idempotency_key,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, message.idempotency_key, ts, message.payload),
        }
        return self._classify(message, await self._post(message, headers))
