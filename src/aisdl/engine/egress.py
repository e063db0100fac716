"""Which addresses a node may fetch from (SSRF guard), checked after DNS resolution.

Never: every cloud's metadata addresses (169.254.169.254 and the rest of link-local,
100.100.100.200, 192.0.0.192, fd00:ec2::254, 168.63.129.16) and names (metadata.google.internal),
and every address of the IANA special-purpose registries that is not globally reachable:
this-network, link-local, site-local, documentation, benchmarking, multicast, reserved,
broadcast, and addresses hidden inside IPv4-mapped, IPv4-compatible, NAT64, 6to4 or Teredo forms
(judged as the IPv4 address they carry).
Loopback and private networks (127/8, 10/8, 172.16/12, 192.168/16, shared 100.64/10, ::1,
fc00::/7): allowed when the node listens only on loopback (a personal node fetching from a local
test server) or when started with --allow-private-egress.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_net = ipaddress.ip_network

# Cloud instance-metadata (and host agent) addresses: refused even where private ones are not.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",   # AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack, ...
    "169.254.170.2",     # AWS ECS task credentials
    "169.254.169.123",   # AWS time sync
    "169.254.169.253",   # AWS VPC DNS
    "fd00:ec2::254",     # AWS IMDS over IPv6
    "fd00:ec2::123",     # AWS time sync over IPv6
    "100.100.100.200",   # Alibaba Cloud
    "192.0.0.192",       # Oracle Cloud (OCI classic)
    "168.63.129.16",     # Azure WireServer (a public address that serves host metadata)
))
METADATA_NAMES = frozenset((
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data",
    "instance-data.ec2.internal", "metadata.tencentyun.com", "metadata.azure.com",
))
# The IANA special-purpose registries, each with why it is refused: never a download source.
_SPECIAL: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_net("0.0.0.0/8"), "this network"),
    (_net("169.254.0.0/16"), "link-local"),
    (_net("192.0.0.0/24"), "IETF protocol assignments"),
    (_net("192.0.2.0/24"), "documentation"),
    (_net("198.51.100.0/24"), "documentation"),
    (_net("203.0.113.0/24"), "documentation"),
    (_net("192.88.99.0/24"), "6to4 relay anycast"),
    (_net("198.18.0.0/15"), "benchmarking"),
    (_net("224.0.0.0/4"), "multicast"),
    (_net("240.0.0.0/4"), "reserved"),          # includes broadcast 255.255.255.255
    (_net("::/128"), "unspecified"),
    (_net("::/96"), "IPv4-compatible (deprecated)"),
    (_net("64:ff9b:1::/48"), "local-use NAT64"),
    (_net("100::/64"), "discard-only"),
    (_net("2001::/23"), "IETF protocol assignments"),
    (_net("2001:db8::/32"), "documentation"),
    (_net("3fff::/20"), "documentation"),
    (_net("5f00::/16"), "segment routing"),
    (_net("fe80::/10"), "link-local"),
    (_net("fec0::/10"), "site-local"),
    (_net("ff00::/8"), "multicast"),
)
_PRIVATE = tuple(_net(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "::1/128", "fc00::/7"))
_NAT64 = _net("64:ff9b::/96")


class EgressBlocked(OSError):
    """Raised instead of connecting; aiohttp wraps it in a ClientConnectorError."""


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, Teredo), else `ip`."""
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
    outer = ipaddress.ip_address(address.split("%", 1)[0])
    ip = _unwrap(outer)
    if ip in METADATA_ADDRESSES or outer in METADATA_ADDRESSES:
        return "cloud metadata"
    if any(ip in net for net in _PRIVATE):
        if allow_private:
            return None
        return "loopback or private (start the node with --allow-private-egress)"
    for net, why in _SPECIAL:
        if ip in net:
            return why
    if not ip.is_global:  # anything else the registries call not globally reachable
        return "special-purpose"
    return None


def blocked_name(host: str) -> str | None:
    """Why fetching from the host name `host` is refused (a metadata service's name), or None."""
    name = host.strip("[]").rstrip(".").lower()
    return "cloud metadata" if name in METADATA_NAMES else None


def check_address(address: str, allow_private: bool) -> None:
    reason = blocked_reason(address, allow_private)
    if reason:
        raise EgressBlocked(f"egress blocked: {address} ({reason})")


def check_name(host: str) -> None:
    reason = blocked_name(host)
    if reason:
        raise EgressBlocked(f"egress blocked: {host} ({reason})")


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
        check_name(host)
        results = await self._inner.resolve(host, port, family)
        for r in results:
            check_address(r["host"], self._allow_private)
        return results

    async def close(self, *args: Any) -> None:
        await self._inner.close()
