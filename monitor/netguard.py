"""Outbound address policy shared by everything that connects to a URL taken from configuration or a feed:
private, loopback, link-local, multicast and reserved addresses are refused unless the operator allows
private networks (`settings.allow_private_networks`). The host is resolved here and every address it
resolves to must be public."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from monitor.errors import MonitorError


class BlockedAddressError(MonitorError):
    """The URL points at a private or otherwise non-public address."""


def is_public_ip(address: str) -> bool:
    """True only for a global unicast address (an IPv4-mapped IPv6 address is judged as IPv4); anything
    that is not an address at all is not public."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback)


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise BlockedAddressError(f"cannot resolve host {host!r}: {e}") from e
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
