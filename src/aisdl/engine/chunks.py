"""Chunks: the unit of work a node hands to whoever fetches (a fetch worker process, or the
node itself), and what comes back.

A chunk is a slice of a job's item stream: names and links, with what the catalog knows of each
(for the skip check). Whoever runs it does every per-file step: fetch, verify, write through to
a cloud destination, and place the object under its final name (an atomic rename on its
mountpath). It answers once per chunk with one compact row per item; the node records a chunk's
rows in one transaction. So the node's work per file is a few dictionary and SQL rows, not a
coroutine, a request and an outcome each.

Placed but not yet recorded: each object is written to the chunk's journal (one line, before its
rename), so a node killed after a rename and before the record finds it at start-up, and a
chunk whose worker died is recorded from its journal instead of being fetched again.

The messages are msgspec structs with a protocol version: the same bytes go to a local worker
process or to a task on another machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from aisdl.config import NodeConfig
from aisdl.engine.blob import BlobSettings
from aisdl.engine.fetch import Fetcher, FetchRequest, discard
from aisdl.engine.hostlimit import START, host_of
from aisdl.engine.limits import FairSlots, Ticket, TokenBucket
from aisdl.errors import AisdlError, SourceError
from aisdl.models import Bucket
from aisdl.sources.base import SourceObject
from aisdl.sources.registry import Sources
from aisdl.store.layout import Layout
from aisdl.store.paths import check_object_name

log = logging.getLogger("aisdl.engine")
PROTOCOL = 1
LOCK_POLL = 0.1     # seconds between tries for a chunk's journal lock
LEASE_CHECK = 1.0   # seconds between checks of a remote chunk's lease
LEASE_STALE = 10.0  # seconds without renewal after which a lease is the node's no longer


# Items and rows are made by the ten thousand and hold no cycles: kept out of the garbage
# collector (`gc=False`), which otherwise runs every few hundred of them.
class ChunkItem(msgspec.Struct, array_like=True, frozen=True, gc=False):
    index: int
    name: str
    link: str
    stored: dict[str, str] | None = None  # custom metadata of the copy we store, if any
    listed: SourceObject | None = None    # validators from a bucket listing (backend jobs)
    error: str = ""                       # already known to fail (its name is refused)
    expect: SourceObject | None = None    # what its bytes must be (a listing pinned to a commit)


class Chunk(msgspec.Struct, frozen=True):
    job: str
    id: int
    provider: str
    bucket: str
    items: list[ChunkItem]
    conns: int                            # transfers of this chunk at once
    headers: dict[str, list[str]] = {}
    timeout: float | None = None
    write_through: str = ""               # a cloud bucket's link prefix: objects go there too
    blob_threshold: int = 0               # objects this big come in ranged parts at once...
    blob_conns: int = 0                   # ...over up to this many of the chunk's connections
    lease: str = ""   # a file that names the node running the job (`owner`): a chunk of a
    owner: str = ""   # node that is gone, or replaced by another, stops (remote workers)
    protocol: int = PROTOCOL
    download_timeout: float | None = None  # seconds one file may take, every try included

    @property
    def bck(self) -> Bucket:
        return Bucket(self.provider, self.bucket)


class Row(msgspec.Struct, array_like=True, gc=False):
    """One item's outcome. `placed`: its bytes are under its final name, to be recorded."""

    index: int
    name: str
    start_ns: int
    end_ns: int = 0
    size: int = 0
    cksum: str = ""
    custom: str = "{}"  # the object's custom metadata as the catalog keeps it (JSON)
    downloaded: int = 0
    total: int = 0
    error: str = ""
    skipped: bool = False
    placed: bool = False


class InFlight(msgspec.Struct, array_like=True):
    """A transfer in flight, as the status shows it; also its progress events."""

    index: int
    name: str
    start_ns: int
    downloaded: int = 0
    total: int = 0
    worker: str = ""  # which worker fetches it, where that is worth saying (Dask)

    def started(self, offset: int, total: int | None) -> None:
        self.downloaded, self.total = offset, total or 0

    def advanced(self, nbytes: int) -> None:
        self.downloaded += nbytes


# Retries of a chunk's fetches by cause (engine/retry.py RETRY_CAUSES), since the last report
Retries = dict[str, int]


class ChunkResult(msgspec.Struct):
    id: int
    rows: list[Row]
    retries: Retries = {}


class ChunkProgress(msgspec.Struct):
    """Every 0.25 s while a chunk runs: its transfers in flight and the rows since the last
    report (so errors and objects show while a chunk's slowest file still runs)."""

    id: int
    in_flight: list[InFlight]
    rows: list[Row]
    retries: Retries = {}


CHUNK_ENCODER = msgspec.msgpack.Encoder()
CHUNK_DECODER = msgspec.msgpack.Decoder(Chunk)
RESULT_DECODER = msgspec.msgpack.Decoder(ChunkResult)
PROGRESS_DECODER = msgspec.msgpack.Decoder(ChunkProgress)
_LINE_DECODER = msgspec.json.Decoder(Row)
_LINE_ENCODER = msgspec.json.Encoder()


class Watch:
    """One chunk as its sender follows it: the rows so far, the transfers in flight, and
    whether a cancel discards partial work files (an abort) or keeps them (a shutdown)."""

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk
        self.items = chunk.items  # all of them (`chunk` may lose those done before a re-run)
        self.rows: list[Row] = []
        self.in_flight: dict[int, InFlight] = {}
        self.discard = False
        self.problem = ""     # why the chunk stopped before its end (its runner's bug)
        self.changed = False  # progress not yet reported (worker side)
        self.sent = 0         # rows reported so far (worker side)
        self.taken = 0        # rows handed to the job's records so far (node side)
        self.retries: Retries = {}  # by cause: not yet reported (worker side), all (node side)
        self.spare = 0  # connections of the chunk no lane uses: a blob's parts may use them

    def retried(self, retries: Retries) -> None:
        for cause, n in retries.items():
            self.retries[cause] = self.retries.get(cause, 0) + n

    def unreported_retries(self) -> Retries:
        """The retries since the last report (worker side)."""
        retries, self.retries = self.retries, {}
        return retries

    def new_rows(self) -> list[Row]:
        """The rows not yet handed to the job's records (node side)."""
        rows, self.taken = self.rows[self.taken:], len(self.rows)
        return rows


# -- the journal ---------------------------------------------------------------------------
def journal_file(layout: Layout, job: str, chunk_id: int) -> Path:
    return layout.journal_dir(job) / f"{chunk_id}.jnl"


class Journal:
    """The chunk's objects about to be placed, one line each, written before the rename (a
    failed rename adds its error line), so what was placed is known after any crash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def _open(self) -> None:
        if self._fd < 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    async def lock(self) -> None:
        """Hold the journal's lock (flock: it goes with the process, however that ends)."""
        self._open()
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL)

    def write(self, row: Row) -> None:
        self._open()
        os.write(self._fd, _LINE_ENCODER.encode(row) + b"\n")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def placed_rows(layout: Layout, bck: Bucket, job: str, path: Path) -> list[Row]:
    """The rows of a journal whose objects are in place: their rename happened (the work file
    is gone, the object is there with the journal's size) and no error line followed."""
    last: dict[int, Row] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_bytes().splitlines():
            try:
                row = _LINE_DECODER.decode(line)
            except msgspec.DecodeError:  # a line cut by the crash: its rename never happened
                continue
            last[row.index] = row
    rows = []
    for row in last.values():
        if row.error or not row.placed:
            continue
        work = layout.work_file(bck, row.name, job, f".{row.index}")
        try:
            final = layout.object_file(bck, row.name)
            if os.path.exists(work) or os.stat(final).st_size != row.size:
                continue
        except (OSError, AisdlError):
            continue
        rows.append(row)
    return rows


# -- the lease of a remote run ------------------------------------------------------------
def lease_holder(path: str) -> tuple[str, float]:
    """Who holds a lease file, and how many seconds ago it was renewed ("": nobody)."""
    try:
        with open(path) as f:
            owner = f.read().strip()
        return owner, time.time() - os.stat(path).st_mtime
    except OSError:
        return "", math.inf


async def _hold_lease(chunk: Chunk, run: asyncio.Future[None]) -> None:
    """A remote chunk runs only while the node that sent it holds the lease: a node killed, or
    restarted (a new owner), must not find objects placed behind its back."""
    while True:
        await asyncio.sleep(LEASE_CHECK)
        owner, age = lease_holder(chunk.lease)
        if owner != chunk.owner or age > LEASE_STALE:
            why = "another node runs its job now" if owner != chunk.owner else \
                f"its node has not renewed its lease for {age:.0f} s"
            log.warning("chunk %d of job %s stops: %s (%s)", chunk.id, chunk.job, why,
                        chunk.lease)
            run.cancel()
            return


# -- running a chunk -------------------------------------------------------------------------
class _Events:
    """A fetch's events: progress into its InFlight, overload to the slots of this process."""

    __slots__ = ("flight", "slots", "ticket", "watch")

    def __init__(self, flight: InFlight, watch: Watch, slots: FairSlots, ticket: Ticket) -> None:
        self.flight, self.watch, self.slots, self.ticket = flight, watch, slots, ticket

    def started(self, offset: int, total: int | None) -> None:
        self.flight.started(offset, total)
        self.watch.changed = True

    def advanced(self, nbytes: int) -> None:
        self.flight.downloaded += nbytes
        self.watch.changed = True

    def strained(self) -> None:
        self.slots.strained(self.ticket)

    def retried(self, cause: str) -> None:
        self.watch.retried({cause: 1})
        self.watch.changed = True


class ChunkRunner:
    """Runs chunks in one process, on its fetcher and its share of the node's slots."""

    def __init__(self, fetcher: Fetcher, layout: Layout, slots: FairSlots) -> None:
        self.fetcher, self.layout, self.slots = fetcher, layout, slots

    @classmethod
    def open(cls, config: NodeConfig, layout: Layout, per_host: int = 0,
             host_start: int = START) -> ChunkRunner:
        """The runner of this process (the node, a fetch process, a Dask worker): sources of
        its own for the node's connections (the chunks bring their share of them), and
        `per_host` transfers at most per host (0: the node's cap)."""
        c = config
        fetcher = Fetcher(Sources.open(c, c.max_connections), c.retry)
        slots = FairSlots(c.max_connections, per_host or c.max_per_host or c.max_connections,
                          host_start)
        return cls(fetcher, layout, slots)

    async def run(self, watch: Watch, throttle: TokenBucket | None = None) -> None:
        """Run `watch.chunk`, appending a row per item to `watch.rows` as each ends. Cancelled,
        it stops its transfers (discarding their work files when `watch.discard`) and lets the
        exception through: the rows so far stay in `watch.rows`."""
        chunk = watch.chunk
        path = journal_file(self.layout, chunk.job, chunk.id)
        journal = Journal(path)
        try:
            # One run of a chunk at a time (a run thought lost may still be going on another
            # worker); then what an earlier run placed is done.
            try:
                await journal.lock()
            except OSError as err:  # a full disk: nothing can be placed safely
                now = time.time_ns()
                watch.rows.extend(Row(i.index, i.name, now, now, error="cannot write the "
                                      f"object: no room for its journal: {err.strerror or err}")
                                  for i in chunk.items)
                return
            wanted = {i.index for i in chunk.items}
            placed = [r for r in placed_rows(self.layout, chunk.bck, chunk.job, path)
                      if r.index in wanted]
            watch.rows.extend(placed)
            done = {r.index for r in placed}
            items = iter([i for i in chunk.items if i.index not in done])
            lanes = asyncio.ensure_future(self._lanes(watch, items, journal, throttle))
            watcher = asyncio.create_task(_hold_lease(chunk, lanes)) if chunk.lease else None
            try:
                await lanes  # a cancel of this run cancels them too
            finally:
                if watcher is not None:
                    watcher.cancel()
        finally:
            journal.close()

    async def _lanes(self, watch: Watch, items: Iterator[ChunkItem], journal: Journal,
                     throttle: TokenBucket | None) -> None:
        lanes = max(1, min(watch.chunk.conns, len(watch.chunk.items)))
        watch.spare = watch.chunk.conns - lanes
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(lanes):
                    tg.create_task(self._lane(watch, items, journal, throttle))
        except BaseExceptionGroup as group:  # a lane's own bug is re-raised as it was
            cancelled = group.subgroup(asyncio.CancelledError)
            if cancelled is not None and cancelled is group:
                raise asyncio.CancelledError from None
            raise

    async def _lane(self, watch: Watch, items: Iterator[ChunkItem], journal: Journal,
                    throttle: TokenBucket | None) -> None:
        for item in items:
            flight = InFlight(item.index, item.name, time.time_ns())
            watch.in_flight[item.index] = flight
            watch.changed = True  # reported even if its source never sends a byte
            try:
                row = await self._item(watch, item, flight, journal, throttle)
            except asyncio.CancelledError:
                if watch.discard:
                    discard(self._work(watch.chunk, item))
                raise
            finally:
                del watch.in_flight[item.index]
            row.downloaded, row.total, row.end_ns = flight.downloaded, flight.total, \
                time.time_ns()
            watch.rows.append(row)
            watch.changed = True
        watch.spare += 1  # no item left for this lane: its connection may serve a blob

    def _work(self, chunk: Chunk, item: ChunkItem) -> str:
        return self.layout.work_file(chunk.bck, item.name, chunk.job, f".{item.index}")

    async def _item(self, watch: Watch, item: ChunkItem, flight: InFlight, journal: Journal,
                    throttle: TokenBucket | None) -> Row:
        chunk = watch.chunk
        row = Row(item.index, item.name, flight.start_ns)
        if item.error:
            row.error = item.error
            return row
        work = ""
        try:
            check_object_name(item.name)
            known = SourceObject.from_custom(item.stored) if item.stored and item.stored.get(
                "source") else None
            listed = item.expect or item.listed
            if known is not None and listed is not None and known.same_as(listed):
                row.skipped = True  # the listing proves it unchanged
                return row
            if known is not None and item.listed is not None and known.version \
                    and item.listed.version and known.version != item.listed.version:
                known = None  # a new version: fetched whole (its ETag may still match ours)
            work = self._work(chunk, item)
            host = host_of(item.link)
            # (a pinned listing said it changed: no conditional GET against our copy)
            req = FetchRequest(link=item.link, work=work,
                               stored=None if item.expect else known, headers=chunk.headers,
                               timeout=chunk.timeout, throttle=throttle, expect=item.expect,
                               download_timeout=chunk.download_timeout)
            if chunk.blob_threshold:
                req.blob = BlobSettings(chunk.blob_threshold, chunk.blob_conns)
                req.more_conns = functools.partial(self._more_conns, watch, host)
            async with self.slots.take(chunk.job, host) as ticket:
                try:
                    got = await self.fetcher.fetch(req, _Events(flight, watch, self.slots,
                                                                ticket))
                except SourceError:  # the host answered (a 404 too): it kept up, or said not
                    ticket.answered()
                    raise
                ticket.answered()
            if got.unchanged:
                row.skipped = True
                return row
            if chunk.write_through:
                await self.fetcher.sources.cloud.put(chunk.write_through + item.name, work)
            row.size, row.cksum, row.placed = got.size, got.cksum, True
            row.custom = _LINE_ENCODER.encode(got.custom).decode()
            journal.write(row)
            try:
                self.layout.place(chunk.bck, item.name, work)
            except AisdlError as err:
                row.placed, row.error = False, err.message
                journal.write(row)
                discard(work)
            return row
        except (SourceError, AisdlError) as err:
            row.error = err.message
        except OSError as err:
            row.error = f"cannot write the object: {err.strerror or err}"
        except Exception as exc:  # a bug met by one file must not stop the other files
            log.exception("job %s: %s failed on an internal error", chunk.job, item.name)
            row.error = f"internal error: {describe(exc)}"
        if work:
            with contextlib.suppress(OSError):
                discard(work)
        row.placed = False
        return row

    def _more_conns(self, watch: Watch, host: str) -> Callable[[bool], None] | None:
        """One more connection for a blob's part: one the chunk holds and no lane uses, and a
        slot of this process for `host`, both now or not at all. What it returns gives both
        back (`answered`: the host answered that part, so it kept up)."""
        if watch.spare <= 0:
            return None
        ticket = self.slots.try_acquire(watch.chunk.job, host, watch.chunk.blob_conns)
        if ticket is None:
            return None
        watch.spare -= 1

        def release(answered: bool) -> None:
            if answered:
                ticket.answered()
            self.slots.release(ticket)
            watch.spare += 1

        return release


def describe(exc: BaseException) -> str:
    """One line for an unexpected exception (the first of a group): its type and message."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

