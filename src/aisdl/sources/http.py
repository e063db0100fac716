"""http(s) links: GET with ranges, conditional requests and the validators the origin sends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from aisdl.engine.egress import EgressBlocked, check_address, is_ip_literal
from aisdl.errors import SourceError
from aisdl.sources.base import SourceObject
from aisdl.units import format_duration

REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 10
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
Headers = CIMultiDict[str] | CIMultiDictProxy[str]
CHUNK_CAP = 64 * 1024  # smaller requested chunks are honoured exactly (a throttled read)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110 token)
_LINE_BREAKS = re.compile(r"[\r\n\0]")


@dataclass
class HttpRead:
    meta: SourceObject
    offset: int
    not_modified: bool
    _resp: aiohttp.ClientResponse | None
    _stall: float | None = None

    @property
    def ranges(self) -> bool:
        """Whether the source serves byte ranges of this object (a 206, or says it does)."""
        resp = self._resp
        return resp is not None and (resp.status == 206 or resp.headers.get(
            "Accept-Ranges", "").strip().lower() == "bytes")

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body as it arrives. `size` caps a chunk only when it is small (throttling):
        otherwise whatever the socket delivered is handed on without joining or splitting."""
        assert self._resp is not None
        content = self._resp.content
        try:
            if size < CHUNK_CAP:
                while chunk := await content.read(size):
                    yield chunk
            else:
                while chunk := await content.readany():
                    yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, "", self._stall) from exc


def _b64hex(value: str) -> str | None:
    try:
        return base64.b64decode(value).hex()
    except ValueError:
        return None


def validators(status: int, h: Headers) -> SourceObject:
    """What a response's headers say about the object (one parser for aiohttp and libcurl)."""
    size = None
    length = h.get("Content-Length", "")
    if status == 200 and length.isdigit():
        size = int(length)
    elif status == 206 and "/" in h.get("Content-Range", ""):
        total = h["Content-Range"].rsplit("/", 1)[1]
        size = int(total) if total.isdigit() else None
    hashes: dict[str, str | None] = {}
    for entry in h.getall("x-goog-hash", []):
        for part in entry.split(","):
            key, _, value = part.strip().partition("=")
            if key in ("md5", "crc32c") and value:
                hashes[key] = _b64hex(value)
    if "Content-MD5" in h and "md5" not in hashes:
        hashes["md5"] = _b64hex(h["Content-MD5"])
    version = h.get("x-goog-generation") or h.get("x-amz-version-id")
    source = "gcp" if "x-goog-generation" in h else "aws" if "x-amz-request-id" in h else "web"
    etag = h.get("ETag", "").removeprefix("W/").strip('"') or None
    return SourceObject(source=source, size=size, etag=etag,
                        last_modified=h.get("Last-Modified"),
                        version=None if version in (None, "", "null") else version,
                        md5=hashes.get("md5"), crc32c=hashes.get("crc32c"))


def request_headers(headers: dict[str, list[str]], start: int, if_range: str | None,
                    stored: SourceObject | None,
                    end: int | None = None) -> list[tuple[str, str]]:
    """The job's headers, plus a resume (`Range` + `If-Range`), a part of a blob (bytes
    [start, end), `If-Range`), or a conditional GET against the copy we store (one list for
    aiohttp and libcurl). A header that could end its line early (CR, LF, NUL) or is no header
    name at all is refused, never sent."""
    for name, values in headers.items():
        if not _TOKEN.fullmatch(name):
            raise SourceError(f"invalid header name {name!r}: not sent", transient=False)
        if any(_LINE_BREAKS.search(v) for v in values):
            raise SourceError(f"header {name!r} has a line break or NUL in its value: not sent",
                              transient=False)
    req = [(k, v) for k, vs in headers.items() for v in vs]
    if end is not None:
        req.append(("Range", f"bytes={start}-{end - 1}"))
        if if_range:
            req.append(("If-Range", if_range))
    elif start and if_range:
        req += [("Range", f"bytes={start}-"), ("If-Range", if_range)]
    elif conditional(start, stored):
        assert stored is not None
        if stored.etag:
            req.append(("If-None-Match", f'"{stored.etag}"'))
        if stored.last_modified:
            req.append(("If-Modified-Since", stored.last_modified))
    return req


def conditional(start: int, stored: SourceObject | None) -> bool:
    """Whether our GET asks "only if changed" of the copy we store: a whole body, and a
    validator to send."""
    return not start and stored is not None and bool(stored.etag or stored.last_modified)


def judge(status: int, headers: Headers, start: int,
          stored: SourceObject | None) -> tuple[SourceObject, int] | None:
    """What the answer to our GET means (one rule for aiohttp and libcurl): None when the
    source confirms our stored copy (a 304 to our conditional GET), else the object's
    validators and the offset its body starts at. An error status, an answer that carries no
    object (a 304 we did not ask for, 204, a redirect without `Location`, ...) or a range we
    did not ask for raises SourceError: never an empty object taken for the real one."""
    if status == 304 and conditional(start, stored):
        return None
    if status >= 400:
        raise status_error(status, headers.get("Retry-After"))
    if status not in (200, 206):
        raise SourceError(f"the source answered {status} ({_phrase(status)}) without the "
                          f"object", transient=False)
    if status == 206 and not headers.get("Content-Range", "").startswith(f"bytes {start}-"):
        raise SourceError("the source answered a different range", transient=True)
    return validators(status, headers), (start if status == 206 else 0)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def status_error(status: int, retry_after: str | None) -> SourceError:
    reason = _phrase(status)
    delay = None
    if retry_after and retry_after.strip().isdigit():
        delay = float(retry_after)
    return SourceError(f"request failed with {status} status code ({reason})",
                       transient=status in TRANSIENT_STATUS or status >= 500, retry_after=delay)


def stalled(seconds: float | None) -> SourceError:
    """A transfer cut for silence (retried: it resumes from its byte)."""
    said = f"no data for {format_duration(seconds)}" if seconds else "timeout exceeded"
    return SourceError(f"request timed out ({said})", transient=True)


def _translate(exc: BaseException, link: str, stall: float | None) -> SourceError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return stalled(stall)
    cause = getattr(exc, "os_error", None) or exc.__cause__
    if isinstance(exc, EgressBlocked) or isinstance(cause, EgressBlocked):
        return SourceError(f"dload: {cause or exc}", transient=False)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        host = urlsplit(link).hostname
        return SourceError(f"cannot resolve host {host!r}", transient=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return SourceError(f"cannot connect to {exc.host}:{exc.port}: {exc.strerror or exc}",
                           transient=True)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return SourceError(f"connection lost while reading the body: {exc}", transient=True)
    if isinstance(exc, aiohttp.InvalidURL):
        return SourceError(f"invalid link {link!r}", transient=False)
    return SourceError(f"request failed: {exc}", transient=True)


def origin_of(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of a link: what a credential is bound to."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:  # not a port: no origin of ours either
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


class HttpSource:
    """Reads http(s) links through the node's shared session (one connection pool)."""

    def __init__(self, session: aiohttp.ClientSession, allow_private: bool) -> None:
        self.session = session
        self.allow_private = allow_private

    async def _follow(self, link: str, headers: list[tuple[str, str]],
                      timeout: aiohttp.ClientTimeout,
                      stall: float | None) -> aiohttp.ClientResponse:
        """GET, following redirects ourselves: aiohttp connects to an IP literal without asking
        the resolver, so every hop's address is checked here (libcurl checks every socket).
        Credentials go to the link's own origin only, as libcurl sends them: a hop to another
        scheme, host or port gets no `Authorization` or `Cookie` header."""
        url, first = link, origin_of(link)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                if origin_of(url) != first:
                    headers = [(k, v) for k, v in headers
                               if k.lower() not in ("authorization", "cookie")]
                host = urlsplit(url).hostname or ""
                if is_ip_literal(host):
                    check_address(host.strip("[]"), self.allow_private)
                resp = await self.session.get(url, headers=headers, timeout=timeout,
                                              allow_redirects=False, auto_decompress=False)
                location = resp.headers.get("Location")
                if resp.status not in REDIRECTS or location is None:
                    return resp
                resp.release()
                url = urljoin(url, location)
                if urlsplit(url).scheme.lower() not in ("http", "https"):
                    raise SourceError(f"redirected to an unsupported link {url!r}",
                                      transient=False)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _translate(exc, url, stall) from exc
        raise SourceError(f"too many redirects: more than {MAX_REDIRECTS}", transient=False)

    @contextlib.asynccontextmanager
    async def open(self, link: str, *, start: int = 0, if_range: str | None = None,
                   stored: SourceObject | None = None, headers: dict[str, list[str]] | None = None,
                   timeout: float | None = None,
                   end: int | None = None) -> AsyncIterator[HttpRead]:
        """GET `link` (bytes [start, end) when `end` is given); `timeout`: how long the source
        may send nothing (connecting, before its answer, within the body). The wait for one of
        our own pooled connections is not the source's silence: it is bounded by the transfers
        ahead of it."""
        req = request_headers(headers or {}, start, if_range, stored, end)
        t = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        resp = await self._follow(link, req, t, timeout)
        try:
            judged = judge(resp.status, resp.headers, start, stored)
            if judged is None:
                assert stored is not None
                yield HttpRead(stored, 0, True, None)
                return
            yield HttpRead(*judged, False, resp, timeout)
        finally:
            resp.release()
