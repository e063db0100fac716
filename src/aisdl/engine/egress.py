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

import asyncio
import functools
import ipaddress
import os
import socket
from typing import Any
from urllib.parse import urlsplit

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


# -- the checking proxy ----------------------------------------------------------------------
_HEAD_LIMIT = 64 * 1024
_COPY_CHUNK = 256 * 1024
CONNECT_LIMIT = 60.0  # seconds; the client gives up sooner by its own connect timeout


async def open_checked(host: str, port: int,
                       allow_private: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Resolve `host`, check every address it has, and connect to a checked one (pinned: the
    name is not resolved again between the check and the connect)."""
    check_name(host)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        check_address(address, allow_private)
    error: OSError = OSError(f"{host} has no address")
    for address in addresses:
        try:
            return await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_LIMIT)
        except TimeoutError:
            error = OSError(f"{address}: connect timed out")
        except OSError as exc:
            error = exc
    raise error


class EgressProxy:
    """An HTTP proxy on a loopback port through which a library that cannot check its own
    connections (obstore: reqwest follows redirects, resolves names itself) makes every one:
    each CONNECT (https) or absolute-form request (http) is resolved, checked and connected to
    the checked address here. A refused one is answered 403 (one that cannot connect, 502) with
    the reason in the body, also kept in `failure` (the latest): reqwest reports a failed
    CONNECT only as "TunnelUnsuccessful", so the caller looks here to say why."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.failure: str | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen on 127.0.0.1 (a free port); returns the proxy URL."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                asyncio.CancelledError):
            pass  # a malformed request, a peer gone, or the proxy closing: drop the connection
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_LIMIT:
            return
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.decode("latin-1").split(" ")
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            first = b""
        else:  # absolute-form: http://host[:port]/path; sent on in origin-form
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                return
            host, port = url.hostname, str(url.port or 80)
            path = url.path or "/"
            if url.query:
                path += "?" + url.query
            first = f"{method} {path} {version}\r\n".encode("latin-1") + rest
        try:
            up_reader, up_writer = await open_checked(host.strip("[]"), int(port),
                                                      self.allow_private)
        except OSError as exc:
            blocked = isinstance(exc, EgressBlocked)
            self.failure = str(exc) if blocked else \
                f"cannot connect to {host}:{port}: {_why(exc)}"
            body = self.failure.encode()
            writer.write(b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s"
                         % (b"403 Forbidden" if blocked else b"502 Bad Gateway", len(body), body))
            await writer.drain()
            return
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                up_writer.write(first)
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            up_writer.close()


def _why(exc: OSError) -> str:
    """'Connection refused', not asyncio's 'Connect call failed (...)'."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()
