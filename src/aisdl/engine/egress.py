"""Which addresses a node may fetch from (SSRF guard), checked after DNS resolution.

Never: link-local (169.254.0.0/16, fe80::/10, incl. the cloud metadata address), the AWS IPv6
metadata address fd00:ec2::254, unspecified, multicast, and addresses hidden inside NAT64/6to4.
Loopback and private networks: allowed when the node listens only on loopback (a personal node
fetching from a local test server) or when started with --allow-private-egress.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_METADATA = ipaddress.ip_address("fd00:ec2::254")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class EgressBlocked(OSError):
    """Raised instead of connecting; aiohttp wraps it in a ClientConnectorError."""


def _unwrap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour:
            return ip.sixtofour
        if ip.teredo:
            return ip.teredo[1]
    return ip


@functools.lru_cache(maxsize=4096)
def blocked_reason(address: str, allow_private: bool) -> str | None:
    """Why fetching from `address` is refused, or None when it is allowed."""
    ip = _unwrap(ipaddress.ip_address(address.split("%", 1)[0]))
    if ip.is_link_local or ip == _METADATA:
        return "link-local / cloud metadata"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "unspecified, multicast or reserved"
    if not allow_private and (ip.is_loopback or ip.is_private or ip in _CGNAT):
        return "loopback or private (start the node with --allow-private-egress)"
    return None


def check_address(address: str, allow_private: bool) -> None:
    reason = blocked_reason(address, allow_private)
    if reason:
        raise EgressBlocked(f"egress blocked: {address} ({reason})")


@functools.lru_cache(maxsize=4096)  # asked once per request: parse each host once
def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class EgressResolver(AbstractResolver):
    """DNS resolution that refuses names resolving to blocked addresses."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            check_address(r["host"], self._allow_private)
        return results

    async def close(self, *args: Any) -> None:
        await self._inner.close()
