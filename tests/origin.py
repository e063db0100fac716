"""A fault-injecting HTTP origin server for end-to-end tests (real aiohttp server on 127.0.0.1).

    origin = Origin().start()              # serves in a background thread with its own loop
    origin.add("/a.bin", payload("a", 1000), gcs=True)
    origin.add_virtual("/big.bin", 50 << 20, seed=7)   # body generated on the fly
    origin.fault("/a.bin", "fail_then_ok", n=2)      # 500, 500, then 200
    origin.add_fault("/a.bin", "stall", after=1000)  # ... then the next request stalls
    url = origin.url_for("/a.bin")                   # "http://127.0.0.1:PORT/a.bin"
    origin.hits("/a.bin"); origin.requests("/a.bin")[-1].headers["Range"]
    origin.stop()

Every file answers GET/HEAD with `ETag` (quoted md5 hex of the content), `Last-Modified`,
`Accept-Ranges: bytes` and, with gcs=True, `x-goog-generation` and `x-goog-hash`. It honours
`If-None-Match`/`If-Modified-Since` (304), a single `Range` (206 / 416) and `If-Range`.

Fault kinds, set per path with `origin.fault(path, kind, **opts)` (replacing the path's faults)
or queued with `origin.add_fault(path, kind, **opts)`: a request gets the first of the path's
faults that still applies to it, so faults with a finite `n` form a sequence. `n` is how many
requests a fault applies to (None: all of them), `methods` which methods it applies to:

    status        status=500             always answer `status` (n=None)
    fail_then_ok  status=500, n=1        answer `status` n times, then serve normally
    retry_after   seconds=1, n=1         answer 429 with `Retry-After: seconds` n times
    reset         n=1                    send the headers and half of the body, then close
                                         the connection (GET only by default)
    slow          rate=65536, chunk=None send the body in chunks of `chunk` bytes (default
                                         rate/10, at most 16 KiB) at `rate` bytes/s (GET only)
    hang          seconds=30             accept, answer nothing for `seconds`, then serve
    stall         after=None, seconds=30 send the headers and `after` bytes of the body
                                         (default half), pause `seconds`, then the rest
    reset_at      at=None, honour_range  close the connection once byte `at` of the file
                  =True                  (default half) is sent; honour_range=False answers
                                         every request 200 from byte 0, ignoring `Range`
    endless       -                      200 with a chunked body that never ends
    lying_length  delta=1000             announce Content-Length off by `delta` bytes: more
                                         than is sent (then close: a short body), or fewer
                                         (only those are sent: a well-formed truncated body)

A trickle is `slow` with a small rate (`rate=100, chunk=1`); any status (304, 204, a 302 without
`Location`) is `status`.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["Origin", "Request", "crc32c", "payload", "virtual_bytes"]

VCHUNK = 64 * 1024  # the unit in which virtual bodies are generated
SEND_CHUNK = 64 * 1024
BASE_TIME = 1_700_000_000  # 2023-11-14T22:13:20Z: default Last-Modified of the first add()


# -- content --------------------------------------------------------------------------------
def payload(name: str, size: int) -> bytes:
    """Deterministic, incompressible content of `size` bytes named `name`."""
    return hashlib.shake_256(f"payload:{name}".encode()).digest(size) if size else b""


def _virtual_chunk(seed: int | str, k: int) -> bytes:
    return random.Random(f"virtual:{seed}:{k}").randbytes(VCHUNK)


def virtual_range(seed: int | str, start: int, end: int,
                  chunk: int = SEND_CHUNK) -> Iterator[bytes]:
    """The bytes [start, end) of the virtual file `seed`, in pieces of at most `chunk` bytes."""
    pos = start
    while pos < end:
        k, off = divmod(pos, VCHUNK)
        piece = _virtual_chunk(seed, k)[off:off + min(chunk, end - pos)]
        yield piece
        pos += len(piece)


def virtual_bytes(seed: int | str, size: int) -> bytes:
    """The whole content of `origin.add_virtual(path, size, seed)` (for checks)."""
    return b"".join(virtual_range(seed, 0, size, chunk=VCHUNK))


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), as GCS reports it; pure python (a few MB/s)."""
    crc ^= 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- state ----------------------------------------------------------------------------------
class Request(NamedTuple):
    method: str
    path: str
    headers: CIMultiDictProxy[str]  # case-insensitive: r.headers["range"]
    query: str = ""


@dataclass
class _File:
    size: int
    data: bytes | None  # None: virtual
    seed: int | str | None
    etag: bool | str
    last_modified: int | None
    gcs: bool
    generation: int
    content_length: bool
    _md5: bytes | None = None
    _crc: int | None = None

    def chunks(self, start: int, end: int, chunk: int = SEND_CHUNK) -> Iterator[bytes]:
        if self.data is not None:
            for pos in range(start, end, chunk):
                yield self.data[pos:min(pos + chunk, end)]
        else:
            assert self.seed is not None
            yield from virtual_range(self.seed, start, end, chunk)

    def md5(self) -> bytes:  # lazily: may be slow for big virtual files
        if self._md5 is None:
            h = hashlib.md5()
            for piece in self.chunks(0, self.size, 1 << 20):
                h.update(piece)
            self._md5 = h.digest()
        return self._md5

    def crc(self) -> int:
        if self._crc is None:
            c = 0
            for piece in self.chunks(0, self.size, 1 << 20):
                c = crc32c(piece, c)
            self._crc = c
        return self._crc

    def etag_value(self) -> str | None:
        if self.etag is False:
            return None
        if isinstance(self.etag, str):
            return self.etag if self.etag.startswith(("\"", "W/")) else f"\"{self.etag}\""
        return f"\"{self.md5().hex()}\""

    def headers(self) -> dict[str, str]:
        h = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if (etag := self.etag_value()) is not None:
            h["ETag"] = etag
        if self.last_modified is not None:
            h["Last-Modified"] = email.utils.formatdate(self.last_modified, usegmt=True)
        if self.gcs:
            h["x-goog-generation"] = str(self.generation)
            h["x-goog-metageneration"] = "1"
            h["x-goog-stored-content-length"] = str(self.size)
            h["x-goog-hash"] = (f"crc32c={_b64(self.crc().to_bytes(4, 'big'))},"
                                f"md5={_b64(self.md5())}")
        return h


_FAULTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    # kind: (default options, default methods)
    "status": ({"status": 500, "n": None}, ("GET", "HEAD")),
    "fail_then_ok": ({"status": 500, "n": 1}, ("GET", "HEAD")),
    "retry_after": ({"seconds": 1, "n": 1}, ("GET", "HEAD")),
    "reset": ({"n": 1}, ("GET",)),
    "slow": ({"rate": 64 * 1024, "chunk": None, "n": None}, ("GET",)),
    "hang": ({"seconds": 30.0, "n": None}, ("GET", "HEAD")),
    "stall": ({"after": None, "seconds": 30.0, "n": None}, ("GET",)),
    "reset_at": ({"at": None, "honour_range": True, "n": None}, ("GET",)),
    "endless": ({"n": None}, ("GET",)),
    "lying_length": ({"delta": 1000, "n": None}, ("GET",)),
}


@dataclass
class _Fault:
    kind: str
    opts: dict[str, Any]
    methods: tuple[str, ...]
    left: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.left = self.opts["n"]

    def take(self, method: str) -> bool:
        """Whether this request gets the fault (and count it)."""
        if method not in self.methods:
            return False
        if self.left is None:
            return True
        if self.left > 0:
            self.left -= 1
            return True
        return False


def _norm(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def _http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _parse_range(value: str, size: int) -> tuple[int, int] | None | str:
    """[start, end) of a single `bytes=` range; None: ignore the header; "416": unsatisfiable."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec or "-" not in spec:
        return None
    first, _, last = (s.strip() for s in spec.partition("-"))
    try:
        if not first:  # suffix: the last N bytes
            n = int(last)
            return (max(0, size - n), size) if n > 0 and size > 0 else "416"
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        return "416"
    return start, min(end, size)


# -- the server -----------------------------------------------------------------------------
class Origin:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._hits: Counter[str] = Counter()
        self._log: list[Request] = []
        self._clock = BASE_TIME
        self._generation = 1_700_000_000_000_000
        self._active: set[asyncio.Task[Any]] = set()  # slow/hang handlers, cancelled by reset()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + quote(_norm(path))

    def start(self) -> Origin:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="origin", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(sock), self._loop).result(10)
        return self

    async def _astart(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        if self._loop is None:
            return
        self._cancel_active()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all files, faults, hits and the log; cut slow/hanging responses."""
        self._cancel_active()
        with self._lock:
            self._files.clear()
            self._faults.clear()
            self._hits.clear()
            self._log.clear()

    def _cancel_active(self) -> None:
        if self._loop is not None and self._loop.is_running():
            async def cancel() -> None:
                for task in list(self._active):
                    task.cancel()
            asyncio.run_coroutine_threadsafe(cancel(), self._loop).result(10)

    # content -------------------------------------------------------------------------------
    def add(self, path: str, data: bytes, *, etag: bool | str = True,
            last_modified: bool | int | float | datetime = True, gcs: bool = False,
            content_length: bool = True) -> None:
        """Serve `data` at `path` (replacing what was there). `etag`: True (md5), False (none) or
        a value; `last_modified`: True (a fixed time, later at every add), False, or a time."""
        self._put(_norm(path), len(data), bytes(data), None, etag, last_modified, gcs,
                  content_length)

    def add_virtual(self, path: str, size: int, seed: int | str = 0, **kw: Any) -> None:
        """Serve `size` deterministic bytes generated on the fly (see `virtual_bytes`). Same
        options as `add`; the md5 (ETag) / crc32c are computed at the first request needing
        them, which costs time for big files: pass etag="..." / gcs=False to avoid it."""
        self._put(_norm(path), size, None, seed, kw.pop("etag", True),
                  kw.pop("last_modified", True), kw.pop("gcs", False),
                  kw.pop("content_length", True), **kw)

    def _put(self, path: str, size: int, data: bytes | None, seed: int | str | None,
             etag: bool | str, last_modified: bool | int | float | datetime, gcs: bool,
             content_length: bool) -> None:
        with self._lock:
            self._clock += 1
            if last_modified is True:
                lm: int | None = self._clock
            elif last_modified is False:
                lm = None
            elif isinstance(last_modified, datetime):
                lm = int(last_modified.timestamp())
            else:
                lm = int(last_modified)
            old = self._files.get(path)
            same = old is not None and (old.data, old.seed, old.size) == (data, seed, size)
            if old is not None and same:
                generation = old.generation
            else:
                self._generation += 1
                generation = self._generation
            new = _File(size, data, seed, etag, lm, gcs, generation, content_length)
            if same and old is not None:
                new._md5, new._crc = old._md5, old._crc
            self._files[path] = new

    def remove(self, path: str) -> None:
        with self._lock:
            self._files.pop(_norm(path), None)

    def set_last_modified(self, path: str, when: int | float | datetime | None) -> None:
        with self._lock:
            f = self._files[_norm(path)]
            f.last_modified = (None if when is None else int(
                when.timestamp() if isinstance(when, datetime) else when))

    def content(self, path: str) -> bytes:
        """What GET `path` returns in full (generated for virtual files)."""
        with self._lock:
            f = self._files[_norm(path)]
        return f.data if f.data is not None else b"".join(f.chunks(0, f.size))

    def etag(self, path: str) -> str | None:
        with self._lock:
            f = self._files[_norm(path)]
        return f.etag_value()

    def generation(self, path: str) -> int:
        with self._lock:
            return self._files[_norm(path)].generation

    # faults and observation ----------------------------------------------------------------
    def fault(self, path: str, kind: str | None, *, methods: tuple[str, ...] | None = None,
              **opts: Any) -> None:
        """Inject a fault at `path` (see the module doc), replacing its faults; kind=None
        removes them."""
        path = _norm(path)
        with self._lock:
            self._faults.pop(path, None)
        if kind is not None:
            self.add_fault(path, kind, methods=methods, **opts)

    def add_fault(self, path: str, kind: str, *, methods: tuple[str, ...] | None = None,
                  **opts: Any) -> None:
        """Queue a fault at `path` after those already there (see the module doc)."""
        if kind not in _FAULTS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(_FAULTS)}")
        defaults, default_methods = _FAULTS[kind]
        if unknown := set(opts) - set(defaults):
            raise TypeError(f"fault {kind!r} has no option(s) {sorted(unknown)}")
        fault = _Fault(kind, {**defaults, **opts},
                       tuple(m.upper() for m in methods or default_methods))
        with self._lock:
            self._faults.setdefault(_norm(path), []).append(fault)

    def clear_fault(self, path: str) -> None:
        self.fault(path, None)

    def hits(self, path: str | None = None) -> int:
        """Requests received for `path` (all paths with None), faulted ones included."""
        with self._lock:
            return sum(self._hits.values()) if path is None else self._hits[_norm(path)]

    def requests(self, path: str | None = None, method: str | None = None) -> list[Request]:
        """The log of requests received, oldest first, optionally filtered."""
        with self._lock:
            log = list(self._log)
        return [r for r in log if (path is None or r.path == _norm(path))
                and (method is None or r.method == method.upper())]

    @property
    def log(self) -> list[Request]:
        return self.requests()

    # serving -------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        with self._lock:
            self._hits[path] += 1
            self._log.append(Request(method, path, CIMultiDictProxy(CIMultiDict(request.headers)),
                                     request.query_string))
            fault = next((f for f in self._faults.get(path, []) if f.take(method)), None)
            kind = fault.kind if fault is not None else None
            opts = dict(fault.opts) if fault is not None else {}
            f = self._files.get(path)

        if kind in ("status", "fail_then_ok"):
            return web.Response(status=opts["status"], text=f"injected {opts['status']}\n")
        if kind == "retry_after":
            return web.Response(status=429, headers={"Retry-After": str(opts["seconds"])},
                                text="injected 429\n")
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)
        try:
            if kind == "hang":
                await asyncio.sleep(opts["seconds"])
            return await self._serve(request, f, kind, opts)
        finally:
            self._active.discard(task)

    async def _serve(self, request: web.Request, f: _File | None, kind: str | None,
                     opts: dict[str, Any]) -> web.StreamResponse:
        method = request.method
        if method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        if f is None:
            return web.Response(status=404, text="not found\n")
        if f.etag is True or f.gcs:  # hash off the loop (cached after the first time)
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: (f.md5(), f.crc() if f.gcs else None))
        headers = f.headers()
        etag, lm = f.etag_value(), f.last_modified

        # conditional GET
        inm = request.headers.get("If-None-Match")
        ims = request.headers.get("If-Modified-Since")
        if inm is not None:
            tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
            if etag is not None and ("*" in tags or etag.removeprefix("W/") in tags):
                return web.Response(status=304, headers=_not_modified(headers))
        elif ims is not None and lm is not None:
            since = _http_date(ims)
            if since is not None and lm <= since:
                return web.Response(status=304, headers=_not_modified(headers))

        # range
        status, start, end = 200, 0, f.size
        rng = request.headers.get("Range")
        honour_range = kind not in ("endless", "reset_at") or (
            kind == "reset_at" and opts["honour_range"])
        if rng is not None and honour_range and _if_range_ok(request.headers.get("If-Range"),
                                                             etag, lm):
            parsed = _parse_range(rng, f.size)
            if parsed == "416":
                return web.Response(status=416, headers={"Content-Range": f"bytes */{f.size}"})
            if isinstance(parsed, tuple):
                status, (start, end) = 206, parsed
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"

        resp = web.StreamResponse(status=status, headers=headers)
        if kind == "lying_length":
            resp.content_length = max(0, end - start + opts["delta"])
        elif f.content_length and kind != "endless":
            resp.content_length = end - start
        else:
            resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            if method == "HEAD":
                await resp.write_eof()
                return resp
            return await self._body(request, resp, f, start, end, kind, opts)
        except ConnectionError:  # the client went away
            return resp

    async def _body(self, request: web.Request, resp: web.StreamResponse, f: _File,
                    start: int, end: int, kind: str | None,
                    opts: dict[str, Any]) -> web.StreamResponse:
        """Send bytes [start, end) of `f`, as the fault `kind` (if any) bends it."""
        chunk, delay = SEND_CHUNK, 0.0
        if kind == "slow":
            rate = max(1, int(opts["rate"]))
            chunk = int(opts["chunk"] or max(1, min(16 * 1024, rate // 10)))
            delay = chunk / rate
        cut = None  # close the connection at this byte of the file
        if kind == "reset":
            cut = start + (end - start) // 2
        elif kind == "reset_at":
            at = f.size // 2 if opts["at"] is None else opts["at"]
            cut = at if start < at else None
        elif kind == "lying_length":
            announced = max(0, end - start + opts["delta"])
            if opts["delta"] > 0:
                cut = end  # everything there is, then close: short of what was announced
            else:
                end = start + announced
        pause_at = None
        if kind == "stall":
            pause_at = start + ((end - start) // 2 if opts["after"] is None else opts["after"])
        pos = start
        for piece in f.chunks(start, end if cut is None else min(cut, end), chunk):
            if pause_at is not None and pos <= pause_at < pos + len(piece):
                head = pause_at - pos
                if head:
                    await resp.write(piece[:head])
                await asyncio.sleep(opts["seconds"])
                piece, pos = piece[head:], pause_at
            await resp.write(piece)
            pos += len(piece)
            if delay:
                await asyncio.sleep(delay)
        if kind == "endless":
            k = 0
            while True:  # until the client goes away (or reset() cancels us)
                await resp.write(_virtual_chunk(f"endless:{request.path}", k % 16))
                k += 1
        if cut is not None:
            # flush what was written, then close: the client gets a short body
            if request.transport is not None:
                request.transport.close()
            return resp
        await resp.write_eof()
        return resp


def _not_modified(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in ("ETag", "Last-Modified") or
            k.startswith("x-goog-")}


def _if_range_ok(value: str | None, etag: str | None, lm: int | None) -> bool:
    """Whether a Range request may be honoured given its If-Range (absent: yes)."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith(("\"", "W/")):
        return etag is not None and not value.startswith("W/") and value == etag
    when = _http_date(value)
    return when is not None and lm is not None and int(when) == lm
