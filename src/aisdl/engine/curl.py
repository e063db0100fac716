"""Plain http(s) GETs on libcurl (pycurl): one multi handle drives every such transfer of a
process. Per small file this costs about a third of the CPU of an aiohttp request, which is
what bounds a node on many small files. libcurl hands a body over 16 KiB at a time; those
pieces go into a C-level buffer (no Python frame each), which drains into the work file in
1 MiB writes that are hashed as they go: 16 KiB writes cost ext4 twice the system time.
Only single attempts run here: planning, retries and resume stay in the Fetcher, and the rules
for what a response means are the same functions the aiohttp path uses."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import io
import logging
import os
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pycurl  # type: ignore[import-untyped]
from multidict import CIMultiDict

from aisdl.config import TransferLimits
from aisdl.engine.blob import Changed, same_version
from aisdl.engine.egress import blocked_reason
from aisdl.engine.fetch import (
    BlobStart,
    Digest,
    Fetched,
    FetchEvents,
    FetchRequest,
    Watchdog,
    begin_body,
    check_size,
    too_large,
    unchanged,
)
from aisdl.engine.hostlimit import slow_connect
from aisdl.engine.prealloc import preallocate
from aisdl.errors import SourceError
from aisdl.sources.base import SourceObject
from aisdl.sources.http import MAX_REDIRECTS, judge, request_headers, stalled

log = logging.getLogger("aisdl.engine")
BUFFER = 1 << 20         # libcurl's read buffer and our write buffer, per transfer: 512 KiB
                         # reads were 5–10% slower on 4 x 512 MiB, 2 MiB no better
TICK = 0.1               # seconds between looks at running transfers (progress, stalls)
_UNTRUSTED = {pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CACERT_BADFILE}
_LOST = {pycurl.E_PARTIAL_FILE, pycurl.E_RECV_ERROR, pycurl.E_GOT_NOTHING, pycurl.E_SEND_ERROR}
# Whether an object's first answer makes it a blob: (its validators, whether ranges are served)
Probe = Callable[[SourceObject, bool], bool]
# A part of a blob: where it ends, what takes its body's bytes in order, the blob's validators
PartSpec = tuple[int, Callable[[bytes], None], SourceObject]


@dataclass
class Body:
    """A body written to the work file; the Fetcher checks it (and hashes it when resumed)."""

    meta: SourceObject
    digest: Digest | None


class _Transfer:
    """One attempt, from submission until its outcome reaches the event loop."""

    def __init__(self, req: FetchRequest, events: FetchEvents, start: int, if_range: str | None,
                 headers: list[str], watch: Watchdog, final: asyncio.Future[Any],
                 probe: Probe | None = None, part: PartSpec | None = None) -> None:
        self.req, self.events, self.start, self.if_range = req, events, start, if_range
        self.headers, self.watch, self.final = headers, watch, final
        self.probe, self.part = probe, part
        self.handle: _Handle | None = None
        self.fd: int | None = None                 # the work file (a single stream's)
        self.meta: SourceObject | None = None      # set once the headers let the body begin
        self.digest: Digest | None = None
        self.offset = 0
        self.outcome: Any = None        # Fetched, Body or an exception, once decided
        self.blocked: str | None = None
        self.received = 0                # header and body bytes libcurl has seen
        self.written = 0                 # body bytes in the work file


class _Handle:
    """A reusable easy handle; its callbacks act on the transfer it currently runs. Header
    lines and body pieces are collected by C methods (list.append, BufferedWriter.write)."""

    def __init__(self, engine: CurlEngine) -> None:
        self.engine = engine
        self.t: _Transfer | None = None
        self.lines: list[bytes] = []
        self.buffer = io.BufferedWriter(_Sink(self), BUFFER)
        c = self.curl = pycurl.Curl()
        c.owner = self  # info_read hands back the pycurl object
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.BUFFERSIZE, BUFFER)
        c.setopt(pycurl.FOLLOWLOCATION, 1)
        c.setopt(pycurl.MAXREDIRS, MAX_REDIRECTS)
        c.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.PROXY, "")  # like the aiohttp session: no proxies from the environment
        c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        c.setopt(pycurl.USERAGENT, engine.user_agent)
        if engine.cafile:
            c.setopt(pycurl.CAINFO, engine.cafile)
        c.setopt(pycurl.WRITEFUNCTION, self.buffer.write)
        c.setopt(pycurl.HEADERFUNCTION, self.lines.append)
        c.setopt(pycurl.OPENSOCKETFUNCTION, self._open_socket)

    def drain(self) -> None:
        """Empty the write buffer into the transfer's work file (or nowhere, once decided)."""
        self.buffer.flush()  # _Sink.write raises nothing

    def _open_socket(self, purpose: int, address: Any) -> Any:
        reason = blocked_reason(address.addr[0], self.engine.allow_private)
        if reason:
            assert self.t is not None
            self.t.blocked = f"egress blocked: {address.addr[0]} ({reason})"
            return pycurl.SOCKET_BAD
        return socket.socket(address.family, address.socktype, address.protocol)


class _Sink(io.RawIOBase):
    """Where a handle's buffer drains: on the first drain the headers are judged and the work
    file opened; after that, each drain is written, hashed and counted."""

    def __init__(self, handle: _Handle) -> None:
        self.handle = handle

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        t, n = self.handle.t, len(data)
        if t is None or t.outcome is not None:
            return n  # decided already: what libcurl still delivers is dropped
        engine = self.handle.engine
        try:
            if t.meta is None and not engine.begin(t):
                engine.stop_soon(t)  # not inside libcurl's callback: once it returns
                return n
            limit = engine.limits.max_object_size
            if limit and t.offset + t.written + n > limit:  # an endless body, say
                t.outcome = too_large(limit)
                engine.stop_soon(t)
                return n
            if t.part is not None:
                if t.offset + t.written + n > t.part[0]:
                    t.outcome = SourceError("the source sent more than a part's range",
                                            transient=True)
                    engine.stop_soon(t)
                    return n
                t.part[1](bytes(data))  # its writer puts them at the part's next offset
            else:
                assert t.fd is not None
                view = data
                while view:
                    view = view[os.write(t.fd, view):]
        except Exception as exc:  # noqa: BLE001 - nothing may escape into libcurl
            t.outcome = exc
            engine.stop_soon(t)
            return n
        if t.digest is not None:
            t.digest.update(data)
        t.written += n
        return n


class CurlEngine:
    """libcurl's multi interface on the process's event loop: its sockets sit in an epoll set
    of their own, which the loop watches as one descriptor, and its timer is a loop timer; a
    transfer costs no thread hand-offs, and a socket's watch changes are single epoll_ctl
    calls rather than the loop's reader and writer bookkeeping."""

    def __init__(self, connections: int, per_host: int, allow_private: bool,
                 limits: TransferLimits | None = None) -> None:
        self.allow_private = allow_private
        self.limits = limits or TransferLimits()
        self.user_agent = user_agent()
        paths = ssl.get_default_verify_paths()
        self.cafile = paths.cafile or (paths.openssl_cafile
                                       if os.path.exists(paths.openssl_cafile) else None)
        m = self.multi = pycurl.CurlMulti()
        m.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, connections)
        m.setopt(pycurl.M_MAXCONNECTS, connections)
        if per_host:
            m.setopt(pycurl.M_MAX_HOST_CONNECTIONS, per_host)
        m.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        m.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.epoll = select.epoll()
        self.watched: set[int] = set()  # libcurl's sockets in the epoll set
        self.timer: asyncio.TimerHandle | None = None
        self.due: float | None = None    # when libcurl wants its timeouts looked at
        self.ticker: asyncio.TimerHandle | None = None
        self.running: set[_Transfer] = set()
        self.idle: list[_Handle] = []

    async def attempt(self, req: FetchRequest, events: FetchEvents, start: int,
                      if_range: str | None, *, probe: Probe | None = None,
                      part: PartSpec | None = None) -> Fetched | Body | BlobStart:
        """One GET of `req.link` from `start`. `probe`: asked at the first answer whether the
        object is a blob (then it stops with BlobStart; a `Range: bytes=0-` asks the source to
        show whether it serves ranges). `part`: bytes [start, part's end) of a blob, written
        at their offset of the work file."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.loop = loop
            loop.add_reader(self.epoll.fileno(), self._on_ready)
        # Refused here (before a handle is taken) when a header could inject lines
        pairs = request_headers(req.headers, start, if_range, None if part else req.stored,
                                end=part[0] if part else None)
        if probe is not None and not start:
            pairs.append(("Range", "bytes=0-"))
        headers = [f"{k}: {v}" for k, v in pairs]
        t = _Transfer(req, events, start, if_range, headers, Watchdog(self.limits, req.timeout),
                      self.loop.create_future(), probe, part)
        self._add(t)
        try:
            result: Fetched | Body | BlobStart = await t.final
            return result
        except asyncio.CancelledError:
            if t in self.running:  # stop now: the work file is not touched after this
                t.outcome = asyncio.CancelledError()
                self._finish(t)
            raise

    def close(self) -> None:
        for t in list(self.running):
            t.outcome = asyncio.CancelledError()
            self._finish(t)
        if self.loop is not None:
            self.loop.remove_reader(self.epoll.fileno())
        for handle in (self.timer, self.ticker):
            if handle is not None:
                handle.cancel()
        self.multi.close()
        self.epoll.close()

    def _add(self, t: _Transfer) -> None:
        h = self.idle.pop() if self.idle else _Handle(self)
        h.t, t.handle = t, h
        h.lines.clear()
        req = t.req
        c = h.curl
        c.setopt(pycurl.URL, req.link)
        # Exactly this transfer's headers: pycurl ignores an empty list, which would send the
        # previous transfer's (its token, its conditional or range headers) on this handle
        if t.headers:
            c.setopt(pycurl.HTTPHEADER, t.headers)
        else:
            c.unsetopt(pycurl.HTTPHEADER)
        self.running.add(t)
        if self.ticker is None:
            self.ticker = self.loop.call_later(TICK, self._tick)  # type: ignore[union-attr]
        self.multi.add_handle(c)

    def _on_ready(self) -> None:
        for fd, events in self.epoll.poll(0):
            flags = 0
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                flags |= pycurl.CSELECT_IN
            if events & select.EPOLLOUT:
                flags |= pycurl.CSELECT_OUT
            if events & select.EPOLLERR:
                flags |= pycurl.CSELECT_ERR
            self.multi.socket_action(fd, flags)
        self._collect()

    def _on_deadline(self) -> None:
        self.timer = None
        if self.due is None:
            return  # libcurl has taken its timer back since
        assert self.loop is not None
        if self.loop.time() < self.due:  # kept from an earlier wish: wait on. (libcurl counts
            self.timer = self.loop.call_at(self.due, self._on_deadline)  # on being called no
            return                                                       # sooner than asked)
        self.due = None  # (socket_action asks for the next one)
        self.multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        self._collect()

    def _collect(self) -> None:
        while True:
            queued, ok, failed = self.multi.info_read()
            for c in ok:
                self._complete(c.owner.t, 0, "")
            for c, code, message in failed:
                self._complete(c.owner.t, code, message)
            if not queued:
                return

    def stop_soon(self, t: _Transfer) -> None:
        self.loop.call_soon(self._stop, t)  # type: ignore[union-attr]

    def _stop(self, t: _Transfer) -> None:
        if t in self.running:
            self._finish(t)

    def _complete(self, t: _Transfer, code: int, message: str) -> None:
        assert t.handle is not None
        c = t.handle.curl
        if slow_connect(c.getinfo(pycurl.CONNECT_TIME) - c.getinfo(pycurl.NAMELOOKUP_TIME)):
            t.events.strained()
        t.handle.drain()  # also after a failure: what arrived is kept for resume
        if t.outcome is None:
            try:
                t.outcome = self._outcome(t, code, message)
            except Exception as exc:  # noqa: BLE001 - e.g. the work file could not be created
                t.outcome = exc
        self._finish(t)

    def _outcome(self, t: _Transfer, code: int,
                 message: str) -> Fetched | Body | BlobStart | Exception:
        if code:
            return self._error(t, code, message)
        if t.meta is None and not self.begin(t):  # an empty body: headers decide alone
            return t.outcome  # type: ignore[no-any-return]
        assert t.meta is not None
        return Body(t.meta, t.digest)

    def _error(self, t: _Transfer, code: int, message: str) -> Exception:
        link = t.req.link
        if code == pycurl.E_COULDNT_CONNECT and t.blocked:
            return SourceError(f"dload: {t.blocked}", transient=False)
        if code == pycurl.E_COULDNT_RESOLVE_HOST:
            url = t.handle.curl.getinfo(pycurl.EFFECTIVE_URL) if t.handle else link
            host = urlsplit(url).hostname
            return SourceError(f"cannot resolve host {host!r}", transient=False)
        if code == pycurl.E_COULDNT_CONNECT:
            return SourceError(f"cannot connect: {message}", transient=True)
        if code == pycurl.E_OPERATION_TIMEDOUT:
            return stalled(t.watch.stall)
        if code in _LOST:
            return SourceError(f"connection lost while reading the body: {message}",
                               transient=True)
        if code in (pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL):
            return SourceError(f"invalid link {link!r}", transient=False)
        if code in _UNTRUSTED:
            return SourceError(f"the source's TLS certificate is not trusted: {message}",
                               transient=False)
        if code == pycurl.E_TOO_MANY_REDIRECTS:
            return SourceError(f"too many redirects: {message}", transient=False)
        return SourceError(f"request failed: {message}", transient=True)

    def begin(self, t: _Transfer) -> bool:
        """At the first drain of the body (or the end of an empty one): decide from the headers
        alone, or open the work file. False when the outcome is already known (the transfer
        stops there)."""
        assert t.handle is not None
        status, headers = _parse(t.handle.lines)  # (pycurl refuses getinfo in a callback)
        if t.part is not None:
            return self._begin_part(t, status, headers)
        req = t.req
        if t.probe is not None and status == 416 and not t.start:
            t.outcome = BlobStart(None)  # an empty object has no byte 0 to range from
            return False
        try:
            judged = judge(status, headers, t.start, req.stored)
        except SourceError as err:
            t.outcome = err
            return False
        if judged is None or unchanged(req, t.start, judged[0]):
            t.outcome = Fetched(unchanged=True)
            return False
        meta, t.offset = judged
        try:
            check_size(self.limits, meta.size)
        except SourceError as err:
            t.outcome = err
            return False
        # (the probe asked for `bytes=0-`: a source that serves ranges answers 206, whatever
        # its Accept-Ranges says)
        if t.probe is not None and not t.offset and t.probe(meta, status == 206):
            t.outcome = BlobStart(meta)
            return False
        t.digest = begin_body(req, meta, t.offset)
        if t.offset:
            fd = os.open(req.work, os.O_WRONLY | os.O_CLOEXEC)
            os.ftruncate(fd, t.offset)
            os.lseek(fd, t.offset, os.SEEK_SET)
        else:
            fd = os.open(req.work, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        t.fd, t.meta = fd, meta
        preallocate(fd, t.offset, meta.size)
        return True

    def _begin_part(self, t: _Transfer, status: int, headers: CIMultiDict[str]) -> bool:
        """A blob part's answer: its range of the blob's version, or the blob starts over."""
        assert t.part is not None
        try:
            judged = judge(status, headers, t.start, None)
        except SourceError as err:
            t.outcome = err
            return False
        assert judged is not None
        meta, offset = judged
        if status != 206 or offset != t.start:
            t.outcome = Changed("a part was answered without its range")
            return False
        if not same_version(t.part[2], meta):
            t.outcome = Changed("another version of the object answered a part")
            return False
        t.meta, t.offset = meta, t.start  # (its bytes go through the part's writer)
        return True

    def _tick(self) -> None:
        """Progress from libcurl's own byte counts (our buffer holds up to 1 MiB of them), and
        the watchdog's look at each transfer: header and body bytes are its signs of life."""
        now = time.monotonic()
        for t in list(self.running):
            c = t.handle.curl  # type: ignore[union-attr]
            body = c.getinfo(pycurl.SIZE_DOWNLOAD_T)
            received = body + c.getinfo(pycurl.HEADER_SIZE)
            if received != t.received:
                t.received = received
                self._show(t, body)
            if c.getinfo(pycurl.CONN_ID) < 0:  # queued for one of our own connections: not
                t.watch.restart(now)           # the source's silence
            elif error := t.watch.saw(received, now):
                t.handle.drain()  # type: ignore[union-attr]  # what arrived: kept for resume
                if t.outcome is None:
                    t.outcome = error
                self._finish(t)
        self.ticker = self.loop.call_later(  # type: ignore[union-attr]
            TICK, self._tick) if self.running else None

    def _show(self, t: _Transfer, body: int) -> None:
        """Report `body` bytes received: after the offset the source resumed from (assumed to
        be the one asked for until the headers are judged), out of the object's size."""
        if t.meta is not None:
            t.events.started(t.offset + body, t.meta.size)
            return
        length = t.handle.curl.getinfo(pycurl.CONTENT_LENGTH_DOWNLOAD_T)  # type: ignore
        t.events.started(t.start + body, t.start + length if length >= 0 else None)

    def _finish(self, t: _Transfer) -> None:
        h = t.handle
        assert h is not None
        self.multi.remove_handle(h.curl)
        h.drain()  # empties the buffer: into the file if undecided, else dropped
        if t.meta is not None:
            t.events.started(t.offset + t.written, t.meta.size)
        h.t, t.handle = None, None
        self.idle.append(h)
        if t.fd is not None:
            os.close(t.fd)
            t.fd = None
        self.running.discard(t)
        if t.final.done():
            return
        if isinstance(t.outcome, asyncio.CancelledError):
            t.final.cancel()
        elif isinstance(t.outcome, BaseException):
            t.final.set_exception(t.outcome)
        else:
            t.final.set_result(t.outcome)

    def _on_socket(self, what: int, fd: int, multi: Any, data: Any) -> None:
        """libcurl now waits for `what` on `fd` (POLL_REMOVE: nothing; it says so before it
        closes a socket it watched)."""
        if what == pycurl.POLL_REMOVE:
            if fd in self.watched:
                self.watched.discard(fd)
                with contextlib.suppress(OSError):  # closed already: gone from the set
                    self.epoll.unregister(fd)
            return
        mask = ((select.EPOLLIN if what & pycurl.POLL_IN else 0)
                | (select.EPOLLOUT if what & pycurl.POLL_OUT else 0))
        if fd in self.watched:
            try:
                self.epoll.modify(fd, mask)
                return
            except FileNotFoundError:  # closed without a word, and the number reused
                pass
        try:
            self.epoll.register(fd, mask)
        except FileExistsError:
            self.epoll.modify(fd, mask)
        self.watched.add(fd)

    def _on_timer(self, ms: int) -> None:
        """libcurl wants its timeouts looked at in `ms` (-1: never). It asks again with every
        transfer added; a loop timer that fires no later is kept (its wake-up finds the new
        time and waits on): replacing one per transfer was 5% of a fetch process's Python
        time on small files."""
        if ms < 0:
            self.due = None
            return  # a timer still set finds nothing due
        assert self.loop is not None
        self.due = self.loop.time() + ms / 1000
        if self.timer is not None:
            if self.timer.when() <= self.due:
                return
            self.timer.cancel()
        self.timer = self.loop.call_at(self.due, self._on_deadline)


def user_agent() -> str:
    return f"aisdl/{importlib.metadata.version('aisdl')}"


def _parse(lines: list[bytes]) -> tuple[int, CIMultiDict[str]]:
    """The status and headers of the last response (`HTTP/1.1 200 OK`, then `Name: value`
    lines up to a blank one); earlier responses were redirects or `100 Continue`."""
    first = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith(b"HTTP/")),
                 None)
    parts = lines[first].split(None, 2) if first is not None else []
    if first is None or len(parts) < 2 or not parts[1].isdigit():
        raise SourceError("the source sent no valid HTTP status line", transient=True)
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[first + 1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            break  # the blank line: what may follow are trailers of a chunked body
        headers.add(name.strip(), value.strip())
    return int(parts[1]), headers

