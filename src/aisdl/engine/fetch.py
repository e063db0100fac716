"""Downloading one object into its work file: plan (fresh / resume / unchanged) → stream →
verify → hand back for commit. Retries transient failures; a retry resumes from the bytes
already on disk when the source honours `Range` + `If-Range`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import xxhash

from aisdl.config import RetryPolicy, TransferLimits
from aisdl.engine.blob import (
    Blob,
    BlobSettings,
    Changed,
    MoreConnections,
    Part,
    download,
    if_range,
    journal_path,
    same_version,
    wants_blob,
)
from aisdl.engine.hostlimit import overloaded
from aisdl.engine.limits import TokenBucket
from aisdl.engine.prealloc import preallocate
from aisdl.engine.retry import backoff_delay, out_of_tries, retry_cause
from aisdl.errors import SourceError
from aisdl.sources.base import SourceObject
from aisdl.sources.http import stalled
from aisdl.sources.registry import Sources
from aisdl.units import format_duration

log = logging.getLogger("aisdl.engine")
CHUNK = 256 * 1024
WRITE_BATCH = 1 << 20  # bytes handed to a writer thread at once
SIDECAR_FROM = 4 << 20  # files this big keep their validator on disk for resume after a crash
PART_WRITERS = 1      # threads that write blob parts: one (16 writing one file at once
                      # spent 4 s more CPU per 4 GiB on the file's lock); a part has one
                      # batch in flight at most
PART_BACKLOG = 8 << 20  # bytes of a part waiting for the writer before the loop waits too


class TaskEvents(Protocol):
    """How a transfer reports itself; accounting lives on the other side."""

    def started(self, offset: int, total: int | None) -> None: ...
    def advanced(self, nbytes: int) -> None: ...


class FetchEvents(TaskEvents, Protocol):
    """What a fetch reports: progress, and each sign that its source is overloaded (a refused
    or reset connection, a dropped SYN, 503, 429) as soon as it is seen, for the node's
    per-host limit (engine/hostlimit.py)."""

    def strained(self) -> None: ...

    def retried(self, cause: str) -> None:
        """A failed try is tried again; `cause` is one of engine/retry.py's RETRY_CAUSES."""


@dataclass
class Fetched:
    unchanged: bool
    size: int = 0
    cksum: str = ""
    custom: dict[str, str] = field(default_factory=dict)


@dataclass
class FetchRequest:
    link: str
    work: str                                 # the work file (a str: no Path to unpickle)
    stored: SourceObject | None = None       # validators of our current copy, if any
    headers: dict[str, list[str]] = field(default_factory=dict)
    timeout: float | None = None
    throttle: TokenBucket | None = None
    validator: str | None = None              # ETag or Last-Modified of the bytes in `work`
    sidecar: bool = False                     # whether `work` may have a validator file
    # What the bytes must be, from a listing pinned to one version (a Hub commit): checked as
    # they arrive (size, ETag, sha256) and recorded as the object's validators.
    expect: SourceObject | None = None
    download_timeout: float | None = None     # seconds for the whole file, every try included
    blob: BlobSettings | None = None          # objects this big come in ranged parts at once
    more_conns: MoreConnections | None = None  # connections a blob's parts may add


@dataclass
class BlobStart:
    """The first answer shows a blob (see engine/blob.py): its transfer stops there. None:
    the source refused its `Range: bytes=0-` (416, as for an empty object): ask again
    without it."""

    meta: SourceObject | None


class _PartEvents:
    """A blob part's transfer: its progress is counted by the blob; overload goes on."""

    __slots__ = ("events",)

    def __init__(self, events: FetchEvents) -> None:
        self.events = events

    def started(self, offset: int, total: int | None) -> None:
        pass

    def advanced(self, nbytes: int) -> None:
        pass

    def strained(self) -> None:
        self.events.strained()

    def retried(self, cause: str) -> None:
        pass  # a part's tries are the blob's to retry (and to count), not this transfer's


def _sidecar(work: str) -> str:
    return work + ".validator"


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def discard(work: str) -> None:
    _remove(journal_path(work))  # first: a work file without its journal is started over
    _remove(work)
    _remove(_sidecar(work))


class Fetcher:
    def __init__(self, sources: Sources, policy: RetryPolicy) -> None:
        self.sources = sources
        self.policy = policy
        self._writers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="writer")
        self._part_writers: ThreadPoolExecutor | None = None

    async def fetch(self, req: FetchRequest, events: FetchEvents) -> Fetched:
        """The object into `req.work`, retrying what is transient, all within the job's
        download timeout when it has one."""
        if not req.download_timeout:
            return await self._fetch(req, events)
        deadline = asyncio.timeout(req.download_timeout)
        try:
            async with deadline:
                return await self._fetch(req, events)
        except TimeoutError:
            if not deadline.expired():
                raise
            discard(req.work)
            raise download_timed_out(req.download_timeout) from None

    async def _fetch(self, req: FetchRequest, events: FetchEvents) -> Fetched:
        failures = attempts = 0
        size = furthest = _size(req.work)  # furthest: the most bytes the work file has held
        while True:
            before = size
            try:
                return await self._attempt(req, events, before)
            except SourceError as err:
                attempts += 1
                if isinstance(err, Changed):  # never splice two versions: start over
                    discard(req.work)
                if overloaded(err):
                    events.strained()
                if (size := _size(req.work)) > furthest and not isinstance(err, TooSlow):
                    # Resumed progress: the source is alive, renew the budget. A source that
                    # starts over at byte 0 every time makes none, however many bytes it sends,
                    # nor does a trickle, however far it got.
                    furthest, failures = size, 0
                if out_of_tries(self.policy, attempts, failures, err):
                    discard(req.work)
                    raise
                events.retried(retry_cause(err, got_bytes=size > before))
                delay = backoff_delay(self.policy, failures, err)
                log.info("retrying %s in %.2fs: %s", req.link, delay, err.message)
                failures += 1
                await asyncio.sleep(delay)  # then resume from `size`, as the disk has it

    async def _attempt(self, req: FetchRequest, events: FetchEvents, size: int) -> Fetched:
        if req.blob is not None and os.path.exists(journal_path(req.work)):
            blob = Blob.resume(req.work)  # a blob an earlier attempt or run began
            if blob is not None:
                return await self._blob(req, events, blob)
            discard(req.work)
            size = 0
        start, validator = _resume_point(req, size)
        curl = self.sources.curl
        if self._on_curl(req):
            assert curl is not None
            probe = None if start or req.blob is None else functools.partial(wants_blob,
                                                                              req.blob)
            got = await curl.attempt(req, events, start, validator, probe=probe)
            if isinstance(got, BlobStart) and got.meta is None:
                got = await curl.attempt(req, events, start, validator)
            if isinstance(got, BlobStart):
                assert got.meta is not None
                return await self._blob(req, events, self._begin_blob(req, got.meta))
            if isinstance(got, Fetched):
                return got
            return await self._end_body(req, got.meta, got.digest)
        limits = self.sources.limits
        watch = Watchdog(limits, req.timeout)
        source = self.sources.for_link(req.link)
        async with source.open(req.link, start=start, if_range=validator, stored=req.stored,
                               headers=req.headers, timeout=watch.stall) as obj:
            if obj.not_modified or unchanged(req, start, obj.meta):
                return Fetched(unchanged=True)
            meta = obj.meta
            check_size(limits, meta.size)
            is_blob = not start and wants_blob(req.blob, meta, obj.ranges)
            if not is_blob:  # (a blob's first answer is left unread: its parts follow)
                watch.restart(time.monotonic())  # a wait for a pooled connection: no slowness
                digest = begin_body(req, meta, obj.offset)
                events.started(obj.offset, meta.size)
                await self._stream(req, obj, events, digest, watch)
        if is_blob:
            return await self._blob(req, events, self._begin_blob(req, meta))
        return await self._end_body(req, meta, digest)

    def _on_curl(self, req: FetchRequest) -> bool:
        """Plain http(s) GETs run on libcurl; throttled ones on aiohttp (the token bucket
        paces its chunk loop)."""
        return (self.sources.curl is not None and req.throttle is None
                and req.link[:4].lower() == "http")

    def _begin_blob(self, req: FetchRequest, meta: SourceObject) -> Blob:
        assert req.blob is not None
        discard(req.work)  # what a single stream left, if anything
        req.validator, req.sidecar = None, False
        return Blob.begin(req.work, meta, req.blob.conns)

    async def _blob(self, req: FetchRequest, events: FetchEvents, blob: Blob) -> Fetched:
        """The object's parts over this connection and those `req.more_conns` spares."""
        assert req.blob is not None
        read = self._curl_part if self._on_curl(req) else self._stream_part
        expect = req.expect
        try:
            size, cksum, sha256 = await download(
                blob, functools.partial(read, req, events), events, req.blob.conns,
                req.more_conns, self.policy, sha256=bool(expect is not None and expect.sha256))
        finally:
            blob.close()
        if expect is not None:  # what a pinned listing promised, as a stream is checked
            _check_expected(req.work, blob.meta, expect, size, sha256)
        return Fetched(unchanged=False, size=size, cksum=cksum, custom=_custom(req, blob.meta))

    async def _curl_part(self, req: FetchRequest, events: FetchEvents, blob: Blob,
                         part: Part) -> None:
        curl = self.sources.curl
        assert curl is not None
        if self._part_writers is None:
            self._part_writers = ThreadPoolExecutor(max_workers=PART_WRITERS,
                                                    thread_name_prefix="part-writer")
        writer = _PartWriter(blob, part, self._part_writers)
        try:
            await curl.attempt(req, _PartEvents(events), part.pos, if_range(blob.meta),
                               part=(part.end, writer.write, blob.meta))
        finally:
            await writer.close()

    async def _stream_part(self, req: FetchRequest, events: FetchEvents, blob: Blob,
                           part: Part) -> None:
        """A part through the source's own reader (cloud stores, throttled http), written at
        its offset."""
        watch = Watchdog(self.sources.limits, req.timeout)
        source = self.sources.for_link(req.link)
        async with source.open(req.link, start=part.pos, end=part.end,
                               if_range=if_range(blob.meta), headers=req.headers,
                               timeout=watch.stall) as obj:
            if obj.offset != part.pos:
                raise Changed("a part was answered without its range")
            if not same_version(blob.meta, obj.meta):
                raise Changed("another version of the object answered a part")
            watch.restart(time.monotonic())
            chunk = req.throttle.chunk_size if req.throttle else CHUNK
            fd = os.open(req.work, os.O_WRONLY | os.O_CLOEXEC)
            got = 0
            try:
                async for data in obj.chunks(chunk):
                    view = memoryview(data)[:part.left]
                    while view:
                        n = os.pwrite(fd, view, part.pos)
                        blob.wrote(part, n)
                        view = view[n:]
                    got += len(data)
                    if req.throttle:  # the job's rate, shared by all its transfers and parts
                        req.throttle.charge(len(data))
                        waited = time.monotonic()
                        await req.throttle.wait_ready()
                        watch.pause(time.monotonic() - waited)
                    if not part.left:
                        return
                    if error := watch.saw(got, time.monotonic()):
                        raise error
            finally:
                os.close(fd)

    async def _end_body(self, req: FetchRequest, meta: SourceObject,
                        digest: Digest | None) -> Fetched:
        if digest is None:  # resumed: hash what is on disk
            size, cksum = await asyncio.get_running_loop().run_in_executor(
                None, _verify, req.work, meta, req.expect)
        else:
            size, cksum = digest.check(req.work)
        if req.sidecar:
            _remove(_sidecar(req.work))
        return Fetched(unchanged=False, size=size, cksum=cksum, custom=_custom(req, meta))

    async def _stream(self, req: FetchRequest, obj: Any, events: TaskEvents,
                      digest: Digest | None, watch: Watchdog) -> None:
        chunk = req.throttle.chunk_size if req.throttle else CHUNK
        limit, size = self.sources.limits.max_object_size, obj.offset
        with open(req.work, "r+b" if obj.offset else "wb") as f:
            if obj.offset:
                f.seek(obj.offset)
                f.truncate()
            preallocate(f.fileno(), obj.offset, obj.meta.size)
            writer = _BatchWriter(f, digest, self._writers)
            try:
                async for data in obj.chunks(chunk):
                    size += len(data)
                    if limit and size > limit:
                        raise too_large(limit)
                    if error := watch.saw(size - obj.offset, time.monotonic()):
                        raise error
                    await writer.add(data)
                    events.advanced(len(data))
                    if req.throttle:
                        req.throttle.charge(len(data))
                        waited = time.monotonic()
                        await req.throttle.wait_ready()
                        watch.pause(time.monotonic() - waited)  # our slowness, not the source's
            finally:
                await writer.close()  # also after a failure: what arrived is kept for resume


class _PartWriter:
    """A blob part's body, written at its offsets by the writer thread while the event loop
    goes on reading every part's socket: a write the kernel holds back (dirty pages over its
    limit) no longer stops all parts' sockets at once (4 GiB to disk: dips of a second in the
    whole blob's rate when the loop wrote). One batch in flight at a time, so the part's
    journal entry, recorded after each batch, counts bytes in order that are all in the file."""

    def __init__(self, blob: Blob, part: Part, pool: ThreadPoolExecutor) -> None:
        self.blob, self.part, self.pool = blob, part, pool
        self.loop = asyncio.get_running_loop()
        self.fd = os.open(blob.work, os.O_WRONLY | os.O_CLOEXEC)
        self.pos = part.pos                # where the next byte handed over goes
        self.queue: list[bytes] = []
        self.queued = 0
        self.running: Any = None           # the batch being written (a concurrent Future)
        self.error: BaseException | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.closing = False

    def write(self, data: bytes) -> None:
        """(On the loop, from libcurl's callback.)"""
        if self.error is not None:
            raise self.error
        self.queue.append(data)
        self.queued += len(data)
        if self.running is None:
            self._submit()
        elif self.queued >= PART_BACKLOG:  # the disk is far behind: wait for it here
            running = self.running
            running.result()
            self._done(running)

    def _submit(self) -> None:
        batch, self.queue, self.queued = self.queue, [], 0
        pos, self.pos = self.pos, self.pos + sum(map(len, batch))
        self.idle.clear()
        running = self.running = self.pool.submit(self._write, batch, pos)
        running.add_done_callback(lambda f: self.loop.call_soon_threadsafe(self._done, f))

    def _write(self, batch: list[bytes], pos: int) -> int:
        total = 0
        for data in batch:
            view = memoryview(data)
            while view:
                n = os.pwrite(self.fd, view, pos + total)
                view = view[n:]
                total += n
        return total

    def _done(self, running: Any) -> None:
        if running is not self.running:
            return  # recorded already (the backlog wait)
        self.running = None
        try:
            self.blob.wrote(self.part, running.result())
        except Exception as exc:  # noqa: BLE001 - the disk's refusal: the part's error
            self.error = exc
            self.queue, self.queued = [], 0
        if self.queue:
            self._submit()
            return
        self.idle.set()
        if self.closing:
            os.close(self.fd)

    async def close(self) -> None:
        """Wait for the bytes handed over to be written (and recorded), then close."""
        self.closing = True
        if self.running is None and not self.queue:
            os.close(self.fd)
        else:
            await asyncio.shield(self.idle.wait())
        if self.error is not None:
            raise self.error


class TooSlow(SourceError):
    """Ended for falling below the node's minimum rate (retried, but what it got so far is
    no progress that renews the retry budget)."""


class Watchdog:
    """The node's rules for a transfer that is alive in name only: silence longer than the
    stall window (the node's, or the job's timeout where shorter) cuts it; fewer than
    `min_rate` bytes/s over a `rate_window` ends it. One rule for libcurl (looked at every
    tick) and the other paths (at every piece of body; their silence is a socket timeout)."""

    def __init__(self, limits: TransferLimits, job_timeout: float | None) -> None:
        self.stall = limits.stall_for(job_timeout)
        self.min_rate, self.window = limits.min_rate, limits.rate_window
        self.last = self.since = time.monotonic()  # the last sign of life; the window's start
        self.seen = self.base = 0                  # bytes so far; bytes at the window's start

    def saw(self, received: int, now: float) -> SourceError | None:
        """`received` bytes so far at `now`: the error that ends the transfer, if any."""
        if received != self.seen:
            self.seen, self.last = received, now
        if self.stall and now - self.last > self.stall:
            return stalled(self.stall)
        if self.min_rate and self.window and now - self.since >= self.window:
            if self.seen - self.base < self.min_rate * self.window:
                return TooSlow(f"transfer slower than {_bytes(self.min_rate)}/s for "
                               f"{format_duration(self.window)}", transient=True)
            self.since, self.base = now, self.seen
        return None

    def restart(self, now: float) -> None:
        """Not started yet (waiting for a connection of ours): both rules start from `now`."""
        self.last = self.since = now
        self.base = self.seen

    def pause(self, seconds: float) -> None:
        """Time the transfer was held up by us (a throttle) counts for neither rule."""
        self.last += seconds
        self.since += seconds


def _bytes(n: int) -> str:
    """`1KiB`, `1.50MiB`, `100B`: exact units where they are exact."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n // size}{unit}" if n % size == 0 else f"{n / size:.2f}{unit}"
    return f"{n}B"


def _custom(req: FetchRequest, meta: SourceObject) -> dict[str, str]:
    """The object's custom metadata: the source's validators, and what a pinned listing said
    the bytes are (checked by then), so a re-run can skip it."""
    custom = meta.custom(req.link)
    if req.expect is not None:
        custom.update(req.expect.custom(req.link))
    return custom


def download_timed_out(limit: float) -> SourceError:
    """Not retried: the limit is the file's whole time, so another try could only exceed it."""
    return SourceError(f"download timeout: not done within {format_duration(limit)}"
                       " (the job's download_timeout)", transient=False)


def too_large(limit: int) -> SourceError:
    return SourceError(f"object larger than the node's limit of {_bytes(limit)} "
                       f"(max object size)", transient=False)


def check_size(limits: TransferLimits, size: int | None) -> None:
    """A body announced beyond the node's limit is refused before its first byte."""
    if limits.max_object_size and size is not None and size > limits.max_object_size:
        raise too_large(limits.max_object_size)


def unchanged(req: FetchRequest, start: int, meta: SourceObject) -> bool:
    """The source describes the very bytes we store: nothing to download."""
    return req.stored is not None and not start and req.stored.same_as(meta)


def begin_body(req: FetchRequest, meta: SourceObject, offset: int) -> Digest | None:
    """Before a body's first byte: remember its validator (beside the bytes when the file is
    worth resuming after a crash); a body from byte 0 is hashed as it streams."""
    if offset:
        return None
    req.validator = meta.etag and f'"{meta.etag}"' or meta.last_modified
    if meta.size is None or meta.size >= SIDECAR_FROM:
        with open(_sidecar(req.work), "w") as f:
            f.write(req.validator or "")
        req.sidecar = True
    return Digest(meta, req.expect)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _resume_point(req: FetchRequest, size: int) -> tuple[int, str | None]:
    """Bytes already on disk (`size`) and the validator to send as If-Range, or (0, None)."""
    if size and req.validator is None:
        try:
            with open(_sidecar(req.work)) as f:
                req.validator = f.read() or None  # left by a previous run
            req.sidecar = True
        except FileNotFoundError:
            pass
    return (size, req.validator) if size and req.validator else (0, None)


class _BatchWriter:
    """Appends a body to its work file in batches written (and hashed) on a worker thread, so
    the event loop keeps reading sockets while the kernel copies bytes to disk. One batch is in
    flight and one filling at most, which bounds memory per transfer; a body smaller than one
    batch is written on the spot, where a thread hop would cost more than it saves."""

    def __init__(self, f: BinaryIO, digest: Digest | None, pool: ThreadPoolExecutor) -> None:
        self.f, self.digest, self.pool = f, digest, pool
        self.buffers: list[bytes] = []
        self.size = 0
        self.pending: asyncio.Future[None] | None = None

    async def add(self, data: bytes) -> None:
        self.buffers.append(data)
        self.size += len(data)
        if self.size >= WRITE_BATCH:
            await self._submit()

    async def _submit(self) -> None:
        if self.pending is not None:
            await self.pending
        batch, self.buffers, self.size = self.buffers, [], 0
        self.pending = asyncio.get_running_loop().run_in_executor(self.pool, self._write, batch)

    async def close(self) -> None:
        if self.pending is None:
            self._write(self.buffers)
        else:
            await self._submit()
            await self.pending

    def _write(self, batch: list[bytes]) -> None:
        for data in batch:
            self.f.write(data)  # a buffered file: partial writes are retried for us
            if self.digest is not None:
                self.digest.update(data)


class Digest:
    """Hashes computed while the bytes stream (no second read of the file)."""

    def __init__(self, meta: SourceObject, expect: SourceObject | None = None) -> None:
        self.meta, self.expect = meta, expect
        self.size = 0
        self.xx = xxhash.xxh64()
        self.md5 = hashlib.md5() if meta.md5 else None
        self.sha256 = hashlib.sha256() if expect is not None and expect.sha256 else None

    def update(self, data: bytes) -> None:
        self.size += len(data)
        self.xx.update(data)
        if self.md5 is not None:
            self.md5.update(data)
        if self.sha256 is not None:
            self.sha256.update(data)

    def check(self, work: str) -> tuple[int, str]:
        _check(work, self.meta, self.size, self.md5.hexdigest() if self.md5 else None)
        if self.expect is not None:
            _check_expected(work, self.meta, self.expect, self.size,
                            self.sha256.hexdigest() if self.sha256 else None)
        return self.size, self.xx.hexdigest()


def _verify(work: str, meta: SourceObject,
            expect: SourceObject | None = None) -> tuple[int, str]:
    """Size and xxhash of a finished work file read back from disk (after a resume)."""
    digest = Digest(meta, expect)
    with open(work, "rb") as f:
        while data := f.read(4 << 20):
            digest.update(data)
    return digest.check(work)


def _check(work: str, meta: SourceObject, size: int, md5: str | None) -> None:
    """What arrived is what the source promised, or the work file goes."""
    if meta.size is not None and size != meta.size:
        discard(work)
        raise SourceError(f"got {size} bytes, the source announced {meta.size}", transient=True)
    if md5 is not None and md5 != meta.md5:
        discard(work)
        raise SourceError("MD5 of the downloaded bytes does not match the source's",
                          transient=True)


def _check_expected(work: str, meta: SourceObject, expect: SourceObject, size: int,
                    sha256: str | None) -> None:
    """What arrived is what the pinned listing said the file is, or the work file goes."""
    problem = ""
    if expect.size is not None and size != expect.size:
        problem = f"got {size} bytes, the listing says {expect.size}"
    elif sha256 is not None and sha256 != expect.sha256:
        problem = "SHA-256 of the downloaded bytes does not match the listing's"
    elif expect.etag and meta.etag and expect.etag != meta.etag:
        problem = f"the source's ETag {meta.etag!r} is not the listing's {expect.etag!r}"
    if problem:
        discard(work)
        raise SourceError(problem, transient=True)
