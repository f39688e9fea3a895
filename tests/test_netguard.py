"""The outbound address policy (monitor.netguard): IPv6 forms that carry an IPv4 address (6to4, NAT64) are
judged by the IPv4 address they lead to, Teredo is never public, at every layer (the rule, the up-front URL check, the connection-time resolver
and the feed fetcher)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import pytest
from feedserver import FeedServer, rss

from monitor.config import Settings
from monitor.ingest.fetch import Fetcher
from monitor.netguard import (
    BlockedAddressError,
    GuardedResolver,
    PrivateAddressError,
    check_url,
    is_public_ip,
)
from monitor.records import FetchRequest

# (address, what it leads to)
PRIVATE = [
    ("2002:c0a8:0101::1", "6to4 of 192.168.1.1"),
    ("2002:0a00:0001::", "6to4 of 10.0.0.1"),
    ("2002:7f00:0001::1", "6to4 of 127.0.0.1"),
    ("2002:a9fe:a9fe::", "6to4 of 169.254.169.254 (cloud metadata)"),
    ("64:ff9b::10.0.0.1", "NAT64 of 10.0.0.1"),
    ("64:ff9b::127.0.0.1", "NAT64 of 127.0.0.1"),
    ("64:ff9b::169.254.169.254", "NAT64 of the metadata address"),
    ("64:ff9b:1::a00:1", "local-use NAT64 prefix"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo, client 10.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:3f57:fefe", "Teredo, client 192.168.1.1"),
    ("2001:0:0a00:0001:8000:63bf:f7f7:f7f7", "Teredo via a private server 10.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "Teredo, even with a public client 8.8.8.8"),
    ("::ffff:192.168.1.1", "IPv4-mapped"),
    ("fd00::1", "unique local"),
    ("::1", "loopback"),
]
PUBLIC = [
    ("2002:0808:0808::1", "6to4 of 8.8.8.8"),
    ("64:ff9b::8.8.8.8", "NAT64 of 8.8.8.8 (an IPv6-only network with DNS64)"),
    ("2a00:1450:4009:81f::200e", "native IPv6"),
    ("93.184.216.34", "IPv4"),
]


@pytest.mark.parametrize(("address", "what"), PRIVATE)
def test_embedded_private_ipv4_is_private(address: str, what: str) -> None:
    assert not is_public_ip(address), what
    with pytest.raises(BlockedAddressError, match="non-public"):
        check_url(f"http://[{address}]/feed.xml", allow_private_networks=False)


@pytest.mark.parametrize(("address", "what"), PUBLIC)
def test_embedded_public_ipv4_stays_public(address: str, what: str) -> None:
    assert is_public_ip(address), what


@pytest.mark.parametrize("address", ["2002:c0a8:0101::1", "64:ff9b::10.0.0.1", "2001:0:4136:e378:8000:63bf:f5ff:fffe"])
async def test_resolver_refuses_a_name_answering_with_an_embedded_private_address(address: str) -> None:
    # The resolver checks the answers the connection would use; a numeric host is answered as itself.
    resolver = GuardedResolver()
    try:
        with pytest.raises(PrivateAddressError, match="non-public"):
            await resolver.resolve(address, 80, socket.AF_INET6)
    finally:
        await resolver.close()


async def test_feed_at_a_6to4_address_of_loopback_is_refused_before_connecting(feed_server: FeedServer) -> None:
    feed_server.route("/f.xml", body=rss([{"title": "t", "guid": "1"}]))
    settings = Settings(allow_private_networks=False, fetch_timeout_s=2.0)  # type: ignore[call-arg]
    url = f"http://[2002:7f00:1::1]:{feed_server.port}/f.xml"  # 127.0.0.1 through a 6to4 relay
    async with Fetcher(settings, clock=lambda: datetime(2024, 5, 1, tzinfo=UTC)) as f:
        r = await f.fetch(FetchRequest(1, url))
    assert r.status == "error" and r.error_kind == "private_address", r.error
    assert "allow_private_networks" in (r.error or "")
