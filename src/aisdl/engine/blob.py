"""Blob downloads: one large object fetched as ranged parts over several connections at once.

A source that caps each connection (a CDN, nginx's `limit_rate`) leaves most of a link idle when
a large object comes over one connection. A job with a blob threshold sends objects at least
that big (`wants_blob`) here: the object is cut into parts (`part_size`), and the item's own
connection plus the extra ones its chunk and host can spare (`Connections`) fetch parts from a
shared queue, each part a ranged GET with `If-Range` (or the provider's `If-Match`) against the
validator of the first answer, written at its own offset of the work file.

Durability: beside the work file, a journal (`<work>.blob`) holds the object's validators and
each part's bytes done, rewritten in place right after those bytes are written, so after a
crash it never claims bytes the work file lacks. A restarted fetch reads it and asks each part
for the rest from its own byte. A part answered without its range, or by another version of the
object, is `Changed`: the blob's work is discarded and the object fetched again from the start,
so two versions are never spliced. Verification: the work file's size, the source's MD5 where
it published one, and the xxhash of the whole object are computed by a reader that follows the
finished prefix of the object while the parts still arrive; the object is renamed into place
only after that, by the chunk, as any other."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import mmap
import os
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import msgspec
import xxhash

from aisdl.config import RetryPolicy
from aisdl.engine.hostlimit import overloaded
from aisdl.engine.retry import backoff_delay, out_of_tries, retry_cause
from aisdl.errors import SourceError
from aisdl.sources.base import SourceObject

log = logging.getLogger("aisdl.engine")
DEFAULT_CONNS = 8
MAX_CONNS = 128        # AIS's bound of its blob downloader's workers
PART_MIN = 8 << 20     # the smallest part of a large object (a request each: a round trip)
PART_MAX = 32 << 20    # the largest: parts end in about the order they began, so the hash
                       # behind them (which needs the bytes in order) keeps up
PART_FLOOR = 1 << 20   # a smaller object: one part per connection, at least this big
PART_ALIGN = 64 << 10
HASH_STEP = 64 << 20   # bytes hashed at a time (a page-aligned window of the work file)
_COUNTER = struct.Struct("<Q")


@dataclass(frozen=True)
class BlobSettings:
    """What a job asks: objects of at least `threshold` bytes over up to `conns` connections."""

    threshold: int
    conns: int = DEFAULT_CONNS


class Changed(SourceError):
    """A part was answered without its range or by another version of the object."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the source changed during the blob download ({why}); "
                         "starting over", transient=True)


def wants_blob(settings: BlobSettings | None, meta: SourceObject, ranges: bool) -> bool:
    """Whether an object whose first answer says `meta` (and whether its source serves byte
    ranges) is fetched as a blob: big enough, more than one connection asked for, and a
    validator to hold every part to the same version."""
    return (settings is not None and settings.threshold > 0 and settings.conns > 1 and ranges
            and meta.size is not None and meta.size >= settings.threshold
            and bool(meta.etag or meta.last_modified or meta.version))


def _align(n: int) -> int:
    return max(PART_ALIGN, -(-n // PART_ALIGN) * PART_ALIGN)


def layout(size: int, conns: int) -> list[int]:
    """Where the parts of an object of `size` bytes start. The first `conns` parts are small
    (PART_MIN, or the object split evenly when smaller): they end soon, which shows the
    host's limit that it keeps up (engine/hostlimit.py) and starts the hash behind them. Then
    each part is 1/(2 x conns) of what is left, within [that size, PART_MAX]: equal parts while
    much is left (they end in the order they began: the hash keeps up), smaller ones at the
    end, so the connections finish together rather than waiting for one last large part."""
    conns = max(1, conns)
    first = _align(min(PART_MIN, max(PART_FLOOR, -(-size // conns))))
    starts: list[int] = []
    pos = 0
    while pos < size:
        starts.append(pos)
        guided = min(PART_MAX, _align((size - pos) // (2 * conns)))
        pos += first if len(starts) <= conns else max(first, guided)
    return starts


def journal_path(work: str) -> str:
    return work + ".blob"


@dataclass
class Part:
    index: int
    start: int
    end: int       # exclusive
    done: int = 0  # bytes of it in the work file (and in the journal)

    @property
    def pos(self) -> int:
        return self.start + self.done

    @property
    def left(self) -> int:
        return self.end - self.pos


class _Header(msgspec.Struct):
    meta: SourceObject
    starts: list[int]


class Journal:
    """`<work>.blob`: one JSON line (the object's validators, the part size), then each part's
    bytes done as 8 bytes at a fixed place, rewritten in place (pwrite) after the bytes."""

    def __init__(self, fd: int, base: int) -> None:
        self.fd, self.base = fd, base

    @classmethod
    def create(cls, path: str, meta: SourceObject, starts: list[int]) -> Journal:
        head = msgspec.json.encode(_Header(meta, starts)) + b"\n"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.write(fd, head + bytes(_COUNTER.size * len(starts)))
        return cls(fd, len(head))

    def record(self, part: Part) -> None:
        os.pwrite(self.fd, _COUNTER.pack(part.done), self.base + _COUNTER.size * part.index)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _parts(size: int, starts: list[int]) -> list[Part]:
    ends = [*starts[1:], size]
    return [Part(i, start, end) for i, (start, end) in enumerate(zip(starts, ends, strict=True))]


class Blob:
    """One object's parts, its journal and its work file."""

    def __init__(self, work: str, meta: SourceObject, parts: list[Part],
                 journal: Journal) -> None:
        assert meta.size is not None
        self.work, self.meta, self.size = work, meta, meta.size
        self.parts, self.journal = parts, journal
        self.done = sum(p.done for p in parts)
        self.progress = asyncio.Event()  # set whenever bytes are written (for the hasher)
        self.events: BlobEvents | None = None

    @classmethod
    def begin(cls, work: str, meta: SourceObject, conns: int) -> Blob:
        """A new blob: the journal first, then the work file at its full size (a crash in
        between leaves a journal whose work file is missing: started over)."""
        assert meta.size is not None
        starts = layout(meta.size, conns)
        journal = Journal.create(journal_path(work), meta, starts)
        parts = _parts(meta.size, starts)
        fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, meta.size)
        finally:
            os.close(fd)
        return cls(work, meta, parts, journal)

    @classmethod
    def resume(cls, work: str) -> Blob | None:
        """The blob a previous run left (None: there is none, or what is there cannot be
        trusted: the caller starts over)."""
        path = journal_path(work)
        try:
            with open(path, "rb") as f:
                raw = f.read()
            head, sep, counters = raw.partition(b"\n")
            header = msgspec.json.decode(head, type=_Header)
            size = header.meta.size
            starts = header.starts
            if not sep or size is None or not starts or starts[0] or os.stat(work).st_size != size \
                    or any(b <= a for a, b in zip(starts, [*starts[1:], size], strict=True)):
                return None
            parts = _parts(size, starts)
            if len(counters) != _COUNTER.size * len(parts):
                return None
            for p in parts:
                p.done = min(p.end - p.start, _COUNTER.unpack_from(counters,
                                                                   _COUNTER.size * p.index)[0])
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None
        return cls(work, header.meta, parts, Journal(fd, len(head) + 1))

    def wrote(self, part: Part, n: int) -> None:
        """`n` more bytes of `part` are in the work file."""
        part.done += n
        self.done += n
        self.journal.record(part)
        self.progress.set()
        if self.events is not None:
            self.events.started(self.done, self.size)

    def prefix(self) -> int:
        """Bytes from the object's start that are all in the work file."""
        for p in self.parts:
            if p.left:
                return p.pos
        return self.size

    def close(self) -> None:
        self.journal.close()


class BlobEvents(Protocol):
    """What a blob download reports of itself: its progress (the sum of its parts), each sign
    of overload its parts see, and each retry of a part (by cause)."""

    def started(self, offset: int, total: int | None) -> None: ...
    def advanced(self, nbytes: int) -> None: ...
    def strained(self) -> None: ...
    def retried(self, cause: str) -> None: ...


# A part's fetch: bytes [part.pos, part.end) of the blob's object, each write reported with
# `blob.wrote(part, n)`; SourceError when it ends early, Changed when the answer is not the
# blob's version or range.
ReadPart = Callable[[Blob, Part], Awaitable[None]]
# One more connection for a part, now, or None; what it returns gives the connection back.
MoreConnections = Callable[[], Callable[[bool], None] | None]


async def download(blob: Blob, read_part: ReadPart, events: BlobEvents, conns: int,
                   more: MoreConnections | None, policy: RetryPolicy,
                   sha256: bool = False) -> tuple[int, str, str | None]:
    """Fetch the blob's missing parts on the caller's connection plus up to `conns - 1` more
    (taken from `more` while parts wait), verify it, and return its size, xxhash and (when
    asked: a listing promised it) SHA-256. Its journal is removed once the object is whole; on
    failure it stays (the caller discards the blob when the failure is final)."""
    pending = deque(p for p in blob.parts if p.left)
    log.info("blob %s: %d bytes, %d of its %d parts to fetch over up to %d connections",
             blob.work, blob.size, len(pending), len(blob.parts), conns)
    blob.events = events
    events.started(blob.done, blob.size)
    hasher = asyncio.create_task(_hash(blob, sha256))
    try:
        async with asyncio.TaskGroup() as tg:
            workers = [0]

            def grow() -> None:
                # Parts wait and the blob has fewer connections than it may: take one more
                while more is not None and workers[0] < conns and len(pending) > workers[0]:
                    release = more()
                    if release is None:
                        return
                    workers[0] += 1
                    tg.create_task(_worker(blob, pending, read_part, events, policy, grow,
                                           release, workers))

            workers[0] = 1
            grow()
            tg.create_task(_worker(blob, pending, read_part, events, policy, grow, None,
                                   workers))
        size, cksum, sha = await hasher
    except BaseExceptionGroup as group:
        hasher.cancel()
        raise _first(group) from None
    except BaseException:
        hasher.cancel()
        raise
    finally:
        blob.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal_path(blob.work))
    return size, cksum, sha


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a part failed with (a Changed first: it decides what happens next)."""
    changed = group.subgroup(Changed)
    sources = changed or group.subgroup(SourceError)
    found = sources or group.subgroup(lambda e: not isinstance(e, asyncio.CancelledError))
    pick: BaseException = found or group
    while isinstance(pick, BaseExceptionGroup):
        pick = pick.exceptions[0]
    return pick


async def _worker(blob: Blob, pending: deque[Part], read_part: ReadPart, events: BlobEvents,
                  policy: RetryPolicy, grow: Callable[[], None],
                  release: Callable[[bool], None] | None, workers: list[int]) -> None:
    answered = False
    try:
        while pending:
            part = pending.popleft()
            await _part(blob, part, read_part, events, policy)
            answered = True
            grow()  # a connection may have come free (a finished lane, a host that grew)
    finally:
        workers[0] -= 1
        if release is not None:
            release(answered)


async def _part(blob: Blob, part: Part, read_part: ReadPart, events: BlobEvents,
                policy: RetryPolicy) -> None:
    """One part, retried from its own byte; its retry budget is renewed by progress."""
    failures = attempts = 0
    while part.left:
        before = part.done
        try:
            await read_part(blob, part)
            if part.left:
                raise SourceError(f"part {part.index} ended {part.left} bytes short",
                                  transient=True)
        except Changed:
            raise
        except SourceError as err:
            attempts += 1
            if overloaded(err):
                events.strained()
            if part.done > before:
                failures = 0
            if out_of_tries(policy, attempts, failures, err):
                raise SourceError(err.message, transient=False) from err  # tried enough
            events.retried(retry_cause(err, got_bytes=part.done > before))
            delay = backoff_delay(policy, failures, err)
            log.info("retrying part %d (bytes %d-%d) of %s in %.2fs: %s", part.index,
                     part.pos, part.end - 1, blob.work, delay, err.message)
            failures += 1
            await asyncio.sleep(delay)
        finally:
            events.started(blob.done, blob.size)


async def _hash(blob: Blob, sha256: bool) -> tuple[int, str, str | None]:
    """Read back and hash the object behind the parts as its finished prefix grows (so the
    check costs little time after the last part), then verify it."""
    xx = xxhash.xxh64()
    md5 = hashlib.md5() if blob.meta.md5 else None
    sha = hashlib.sha256() if sha256 else None
    loop = asyncio.get_running_loop()
    fd = os.open(blob.work, os.O_RDONLY | os.O_CLOEXEC)

    def step(pos: int, n: int) -> int:
        # Hashed where the bytes lie in the page cache: copying them out first (pread) cost
        # ~4x the CPU of the hash itself (4 GiB: 1.9 s against 0.5 s). The work file has its
        # full size from the start and is only ever unlinked, never cut: no SIGBUS.
        with mmap.mmap(fd, n, prot=mmap.PROT_READ, offset=pos) as window:
            window.madvise(mmap.MADV_SEQUENTIAL)
            xx.update(window)
            if md5 is not None:
                md5.update(window)
            if sha is not None:
                sha.update(window)
        return n

    try:
        if (on_disk := os.fstat(fd).st_size) != blob.size:
            raise SourceError(f"the work file has {on_disk} bytes, the source announced "
                              f"{blob.size}", transient=True)
        pos = 0
        while pos < blob.size:
            blob.progress.clear()
            ready = blob.prefix()
            if ready < blob.size:  # windows start at a page
                ready -= ready % mmap.ALLOCATIONGRANULARITY
            if ready <= pos:
                await blob.progress.wait()
                continue
            pos += await loop.run_in_executor(None, step, pos, min(ready - pos, HASH_STEP))
    finally:
        os.close(fd)
    if md5 is not None and md5.hexdigest() != blob.meta.md5:
        raise Changed("MD5 of the downloaded bytes does not match the source's")
    return blob.size, xx.hexdigest(), sha.hexdigest() if sha is not None else None


def same_version(blob: SourceObject, answer: SourceObject) -> bool:
    """A part's answer describes the blob's object: nothing comparable differs (size, ETag,
    version; a part's own MD5, if sent, is of the part)."""
    for mine, theirs in ((blob.size, answer.size), (blob.etag, answer.etag),
                         (blob.version, answer.version)):
        if mine is not None and theirs is not None and mine != theirs:
            return False
    return True


def if_range(meta: SourceObject) -> str | None:
    """The validator every part is asked against: the ETag (quoted), else Last-Modified."""
    return f'"{meta.etag}"' if meta.etag else meta.last_modified
