"""Outbound address policy shared by everything that connects to a URL taken from configuration or a feed:
private, loopback, link-local, multicast and reserved addresses are refused unless the operator allows
private networks (`settings.allow_private_networks`). Every address a host resolves to must be public.

Two layers: `check_url` resolves up front for a clear, early error (and covers IP literals, which are never
resolved); `GuardedResolver`, given to aiohttp's connector, checks the very answers the connection then uses,
so a name that resolves to a public address for the check and a private one for the connection (DNS
rebinding) is still refused. The feed fetcher and the webhook/Slack senders both connect through it."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from monitor.errors import MonitorError


class BlockedAddressError(MonitorError):
    """The URL points at a private or otherwise non-public address."""


class NameResolutionError(BlockedAddressError):
    """The host name could not be resolved (DNS): often transient (a resolver outage), or a typo in the URL.
    A BlockedAddressError for callers that only ask "may I connect?"; those that retry treat it as transient."""


# NAT64: the well-known prefix (RFC 6052) carries an IPv4 address in its last 32 bits; the local-use prefix
# (RFC 8215) only exists inside one operator's network, so it is never public.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def is_public_ip(address: str) -> bool:
    """True only for a global unicast address; anything that is not an address at all is not public.

    IPv6 forms that carry an IPv4 address are judged by that IPv4 address, since it is where the packets
    end up: IPv4-mapped (::ffff:a.b.c.d), 6to4 (2002:AABB:CCDD::/16, the relay delivers to a.b.c.d), NAT64
    (64:ff9b::a.b.c.d, the translator connects to a.b.c.d). So 2002:c0a8:0101:: (192.168.1.1) and
    64:ff9b::10.0.0.1 are private, while 64:ff9b::8.8.8.8 (a public site seen from an IPv6-only network with
    DNS64) is public. Teredo (2001::/32, which embeds its client's IPv4 address, possibly a private one) is
    never public: IANA lists it as not globally reachable and no news site is served from it."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _is_public(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return _is_public(ip.sixtofour)
        if ip in _NAT64_LOCAL:
            return False
        if ip in _NAT64:
            return _is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.teredo is not None:
            return False
    return _is_public(ip)


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback)


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise NameResolutionError(f"cannot resolve the host name {host!r} (DNS: {_reason(e)})") from e
    return sorted({str(info[4][0]) for info in infos})


def check_url(url: str, *, allow_private_networks: bool) -> None:
    """Raise BlockedAddressError unless `url` is http(s) and (when private networks are not allowed) every
    address its host resolves to is public."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedAddressError(f"not an http(s) URL: {parts.scheme or '?'}://{parts.hostname or '?'}")
    if allow_private_networks:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for address in resolve(parts.hostname, port):
        if not is_public_ip(address):
            raise BlockedAddressError(
                f"{parts.hostname} resolves to the non-public address {address}; refused "
                "(set allow_private_networks = true in [settings] to allow it)"
            )


class PrivateAddressError(OSError):
    """A host resolved, at connection time, to an address that is not public (an OSError so that aiohttp
    reports it as a connection failure, with this as the cause)."""


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing a name if any of its addresses is not public."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        bad = [r["host"] for r in results if not is_public_ip(r["host"])]
        if bad:
            raise PrivateAddressError(f"{host} resolves to a non-public address ({', '.join(sorted(set(bad)))})")
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_transport(*, allow_private_networks: bool, **connector_options: object) -> AiohttpTransport:
    """An httpx transport over aiohttp whose connections resolve through `GuardedResolver` (unless private
    networks are allowed): the one way feeds and webhooks connect. No cookies, no automatic decompression
    (httpx decodes), httpx's certificate store. Environment proxies (HTTP(S)_PROXY) are not used: a proxy
    would resolve the name itself, out of the guard's reach. Closing the transport closes the session."""
    connector = aiohttp.TCPConnector(ssl=httpx.create_ssl_context(),
                                     resolver=None if allow_private_networks else GuardedResolver(),
                                     **connector_options)  # type: ignore[arg-type]
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
    return AiohttpTransport(client=session)


def connect_failure(e: BaseException, host: str | None) -> tuple[str, str] | None:  # host: "name" or "name:port"
    """(kind, sentence) for the connection failures people must tell apart, judged by the cause (httpx-aiohttp
    reports every aiohttp connection error as a ConnectTimeout): "dns" when the name did not resolve,
    "refused" when nothing listens there. None for anything else."""
    dns = find_cause(e, socket.gaierror)
    if dns is not None:
        return "dns", f"cannot resolve the host name {(host or '').rsplit(':', 1)[0]!r} (DNS: {_reason(dns)})"
    refused = find_cause(e, ConnectionRefusedError)
    if refused is not None:
        return "refused", f"connection refused by {host} (nothing listens on that port, or the site is down)"
    return None


def _reason(e: BaseException) -> str:
    return (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__


def find_cause(e: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type `kind` among `e`, its causes and contexts (aiohttp and httpx wrap the
    resolver's error two or three levels deep)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, kind):
            return cur
        stack.extend([cur.__cause__, cur.__context__, getattr(cur, "os_error", None)])
    return None
