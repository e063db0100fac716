"""One running download job: dispatch items in order to a pool of workers, record outcomes in
batches (one transaction per batch: object commits, counters, errors and the resume cursor
together), so a job stopped at any instant resumes with exact counts. A batch the database
refuses (another program holds its lock, its disk is full) is kept and tried again."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from aisdl.db import Database
from aisdl.engine.chunks import (
    Chunk,
    ChunkItem,
    InFlight,
    Row,
    Watch,
    describe,
    journal_file,
    placed_rows,
)
from aisdl.engine.limits import THROTTLED_CONNECTIONS, TokenBucket
from aisdl.engine.pool import ChunkPool
from aisdl.errors import AisdlError, BadRequest, DatabaseRefused, SourceError
from aisdl.jobs import records
from aisdl.jobs.listing import backend_items, source_link
from aisdl.jobs.records import RECENT_TASKS, Counters, Cursor, TaskRow
from aisdl.jobs.request import Entry, Item, JobSpec
from aisdl.observe.ledger import Ledger
from aisdl.sources import hf
from aisdl.store.paths import normalize_object_name
from aisdl.store.store import Store

log = logging.getLogger("aisdl.jobs")
T = TypeVar("T")
FLUSH_EVERY = 0.25   # seconds between batch commits
FLUSH_AT = 512       # outcomes that force a commit sooner
BACKLOG = 8 * FLUSH_AT  # outcomes not yet recorded at which the workers wait for the database
RETRY_MAX = 5.0      # seconds between tries at most, while the database refuses a batch
MAX_CHUNK = 256      # items of one chunk at most
TASKS_EVERY = 1.0    # seconds between saves of the recent finished tasks
CHUNK_BYTES = 64 << 20  # a chunk of big files holds about this many bytes

Recorded = tuple[Counters, Cursor, list[TaskRow]]  # a batch's counts, and tasks left unsaved

# Items for the lanes, each with what the catalog has of it; None tells a lane to stop.
ChunkQueue = asyncio.Queue[list[ChunkItem] | None]


class ChunkSizer:
    """How many items the next chunk gets: one for the very first (so the first object is in
    place at once), then the transfers a lane runs at once (every connection busy from the
    start), doubling per round of lanes up to MAX_CHUNK; for big files about CHUNK_BYTES worth,
    but never fewer than the transfers a chunk runs at once. Where the job's size is known
    (`left`: items still to do), never more than a lane's share of what is left: a small job
    spreads over every lane, hence every fetch process (4 files of 512 MiB had gone 1 + 3 to two
    processes, one core doing three), and a job's tail is not one process's big chunk."""

    def __init__(self, conns: int, lanes: int = 1, left: int = -1) -> None:
        self.conns, self.lanes = max(1, conns), max(1, lanes)
        self.chunks, self.files, self.bytes = 0, 0, 0
        self.left = left  # items not yet handed out; -1: unknown (a listing)

    def next(self) -> int:
        rounds = (self.chunks - 1) // self.lanes
        n = 1 if self.chunks == 0 else min(MAX_CHUNK, self.conns << min(rounds, 16))
        self.chunks += 1
        if self.files:
            n = min(n, max(self.conns, CHUNK_BYTES * self.files // max(1, self.bytes)))
        if self.left >= 0:
            n = min(n, -(-self.left // self.lanes))
            self.left = max(0, self.left - n)
        return max(1, n)

    def saw(self, size: int) -> None:
        self.files += 1
        self.bytes += size


def entries_left(total: int, cursor: Cursor) -> int:
    """The entries a job's producer has still to read (-1: unknown). It reads from the cursor's
    `low` on, done ones above it included; counting outcomes instead (finished already holds
    the skipped) would come out short, and every chunk after that would hold one item."""
    return total - cursor.low if total >= 0 else -1


def lane_connections(connections: int, lanes: int) -> list[int]:
    """A job's connections split between its lanes (chunks in flight), adding up exactly."""
    return [connections // lanes + (i < connections % lanes) for i in range(lanes)]


class JobRun:
    def __init__(self, job_id: str, spec: JobSpec, *, db: Database, store: Store,
                 fetcher: ChunkPool, workers: int, counters: Counters, cursor: Cursor,
                 started_ns: int, ledger: Ledger) -> None:
        self.id, self.spec = job_id, spec
        self.db, self.store, self.fetcher = db, store, fetcher
        self.workers = max(1, min(workers, THROTTLED_CONNECTIONS) if spec.bytes_per_hour
                           else workers)
        self.counters, self.cursor = counters, cursor
        self.started_ns = started_ns
        self.ledger = ledger  # the node's metrics: this job's outcomes and retries go there
        self.tally = ledger.open_job(job_id, spec.bucket.cname, counters.finished,
                                     counters.skipped, counters.errors)
        self.total = spec.total
        self.watches: set[Watch] = set()  # chunks in flight
        self.aborted = False
        self.all_dispatched = False
        self.finished_ns = 0
        self._batch: list[Row] = []
        self._journals: list[Path] = []  # of chunks in the batch: removed once it is recorded
        self._recording = 0  # outcomes handed to the database thread, not yet in counters
        self._counts_lock = threading.Lock()  # counters and _recording change on two threads
        self._flush_now = asyncio.Event()
        self._flushing = asyncio.Lock()  # one batch at a time: each starts from the last's counts
        self._room = asyncio.Event()     # set when the backlog has been recorded
        self._refused = False  # the database refused the last record: said once in the log
        self._throttle = TokenBucket(spec.bytes_per_hour) if spec.bytes_per_hour else None
        # Chunk ids (and journal names) unique to this run of the job: a chunk of an earlier
        # run may still be finishing on a remote worker.
        self._chunk_ids = itertools.count(time.time_ns() // 1000)
        self._tasks: deque[TaskRow] = deque(maxlen=RECENT_TASKS)  # finished, not yet saved
        self._tasks_at = time.monotonic()
        self._save_tasks = False  # the job is ending: save them with the next batch
        procs = 1 if self._throttle else fetcher.parallelism
        lanes = min(self.workers, 2 * procs)
        if spec.blob_threshold:  # fewer, wider lanes: a blob's parts use its lane's connections
            lanes = max(1, min(lanes, self.workers // spec.blob_conns))
        self._lanes = lane_connections(self.workers, lanes)
        self._sizer = ChunkSizer(self._lanes[0], len(self._lanes))
        bucket = spec.bucket
        self._write_through = source_link(bucket, "") if bucket.is_remote and \
            spec.source != bucket else ""
        # A Hub token lives in memory only: a job resumed after a restart uses the node's own
        self._hf_token = (spec.hf_token or hf.hub_token()) if spec.hf is not None else ""
        self._headers = {**spec.headers, **hf.auth_headers(self._hf_token)}
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        c = self.counters
        return (f"<JobRun {self.id} {self.spec.kind} done={c.finished}+{c.errors}/{self.total}"
                f" chunks={len(self.watches)} aborted={self.aborted}>")

    @property
    def current(self) -> dict[int, InFlight]:
        """The transfers in flight, as their workers last reported them."""
        return {i: f for w in list(self.watches) for i, f in list(w.in_flight.items())}

    @property
    def scheduled(self) -> int:
        with self._counts_lock:
            c, recording = self.counters, self._recording
        in_chunks = sum(len(w.items) - w.taken for w in list(self.watches))
        return c.finished + c.errors + in_chunks + len(self._batch) + recording

    @property
    def unrecorded(self) -> int:
        """Outcomes waiting for the database (queued, or in a transaction now)."""
        with self._counts_lock:
            return len(self._batch) + self._recording

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"job {self.id}")

    async def abort(self) -> None:
        """Stop now: in-flight transfers are cancelled and discarded; what is done stays."""
        self.aborted = True
        for watch in list(self.watches):
            watch.discard = True
        await self._stop()
        if not self.finished_ns:  # cancelled before it ever ran: its `_run` could not finish it
            await self._finish()

    async def shutdown(self) -> None:
        """Node stopping: keep partial work files so the job resumes where it was."""
        await self._stop()

    async def _stop(self) -> None:
        if self._task and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait(self) -> None:
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)

    # -- the run ----------------------------------------------------------------------------
    async def _run(self) -> None:
        queue: ChunkQueue = asyncio.Queue(maxsize=len(self._lanes))
        flusher = asyncio.create_task(self._flush_loop())
        try:
            await self._reconcile()
            async with asyncio.TaskGroup() as tg:
                for conns in self._lanes:
                    tg.create_task(self._lane(queue, conns))
                await self._produce(queue)
                for _ in self._lanes:
                    await queue.put(None)
            await self._finish()
        except asyncio.CancelledError:
            if self.aborted:
                await self._finish()
            else:
                self._save_tasks = True
                await self._flush()  # node stopping: keep what is done, resume the rest later
            raise
        except Exception as exc:
            log.exception("job %s stopped by an internal error", self.id)
            await self._finish(stopped_by=describe(exc))
        finally:
            flusher.cancel()

    async def _reconcile(self) -> None:
        """A node stopped (killed) between placing objects and recording them: what its chunk
        journals show in place is recorded now, never fetched again."""
        layout, bck = self.store.layout, self.spec.bucket

        def read() -> tuple[list[Path], list[Row]]:
            folder = layout.journal_dir(self.id)
            paths = sorted(folder.glob("*.jnl")) if folder.is_dir() else []
            rows = [r for p in paths for r in placed_rows(layout, bck, self.id, p)
                    if not self.cursor.done(r.index)]
            return paths, rows

        paths, rows = await asyncio.get_running_loop().run_in_executor(None, read)
        if not paths:
            return
        if rows:
            log.info("job %s: %d object(s) were in place but not recorded; recording them",
                     self.id, len(rows))
        self._batch.extend(rows)
        self._journals.extend(paths)
        await self._patiently(self._flush)

    async def _produce(self, queue: ChunkQueue) -> None:
        self._sizer.left = entries_left(self.total, self.cursor)  # (after the reconciliation)
        if self.spec.kind in ("backend", "hf"):
            await self._produce_listed(queue)
            return
        entries = self.spec.entries(start=self.cursor.low)
        while batch := list(itertools.islice(entries, self._sizer.next())):
            done = self.cursor.done
            await self._dispatch([e for e in batch if not done(e[0])], queue)
        self.all_dispatched = True

    async def _produce_listed(self, queue: ChunkQueue) -> None:
        """A backend or Hugging Face job's items, as the listing of its source yields them."""
        batch: list[Entry] = []
        want = self._sizer.next()
        try:
            async for item in self._listed_items():
                if self.cursor.done(item.index):
                    continue
                if item.evict:  # sync: the source no longer has it
                    self._batch.append(await self._evict(item))
                    continue
                batch.append((item.index, item.name, item.link, item.error, item.listed,
                              item.expect))
                if len(batch) >= want:
                    await self._dispatch(batch, queue)
                    batch, want = [], self._sizer.next()
        except SourceError as err:  # the listing failed: one error for the job, not silence
            await self._dispatch(batch, queue)
            self._batch.append(self._job_error(f"listing failed: {err.message}"))
            return
        await self._dispatch(batch, queue)
        self.all_dispatched = True

    async def _dispatch(self, batch: list[Entry], queue: ChunkQueue) -> None:
        """Hand items to the lanes with what we already store of each (one query a chunk)."""
        if not batch:
            return
        stored = await self.store.lookup_many(self.spec.bucket,
                                              [e[1] for e in batch if not e[3]])
        customs = {name: a.custom for name, a in stored.items() if a.custom}
        await queue.put([ChunkItem(i, name, link, customs.get(name), listed, error, expect)
                         for i, name, link, error, listed, expect in batch])

    async def _evict(self, item: Item) -> Row:
        row = Row(item.index, item.name, time.time_ns())
        try:
            await self.store.delete_object(self.spec.bucket, item.name)
        except AisdlError as err:
            row.error = err.message
        row.end_ns = time.time_ns()
        return row

    async def _listed_items(self) -> AsyncIterator[Item]:
        if self.spec.kind == "backend":
            cloud = self.fetcher.sources.cloud
            async for item in backend_items(self.spec, cloud, self.store, self.cursor.low):
                yield item
        elif self.spec.hf is not None:
            http = self.fetcher.sources.http
            async for index, name, link, expect in hf.items(
                    self.spec.hf, self._hf_token, http.session, http.allow_private,
                    self.cursor.low):
                error = ""
                try:  # the Hub names its files: a name we cannot store is that file's error
                    name = normalize_object_name(name)
                except BadRequest as exc:
                    error = exc.message
                yield Item(index, name, link, expect=expect, error=error)

    async def _lane(self, queue: ChunkQueue, conns: int) -> None:
        """Runs chunks one after another with `conns` transfers at once (its share of the
        job's connections)."""
        spec = self.spec
        budget = self.fetcher.budget
        while (items := await queue.get()) is not None:
            # (a blob's parts may use the lane's connections that its items leave free)
            want = conns if spec.blob_threshold else min(conns, len(items))
            held = await budget.take(self.id, want)
            chunk = Chunk(self.id, next(self._chunk_ids), spec.bucket.provider, spec.bucket.name,
                          items, held, self._headers, spec.timeout, self._write_through,
                          download_timeout=spec.download_timeout,
                          blob_threshold=spec.blob_threshold, blob_conns=spec.blob_conns)
            watch = Watch(chunk)
            watch.discard = self.aborted
            self.watches.add(watch)
            try:
                await self.fetcher.run_chunk(watch, self._throttle)
            except asyncio.CancelledError:
                self._take(watch, complete=False)
                raise
            except Exception as exc:  # a bug: the chunk's files without an outcome are errors
                log.exception("job %s: chunk %d failed on an internal error", self.id, chunk.id)
                self._take(watch, problem=f"internal error: {describe(exc)}")
            else:
                self._take(watch)
            finally:
                budget.give(self.id, held)
            if len(self._batch) >= BACKLOG:  # the database is behind or refusing: hold on
                self._room.clear()
                await self._room.wait()

    def _take(self, watch: Watch, *, complete: bool = True, problem: str = "") -> None:
        """A chunk's rows join the next batch. Run to its end, every item has one: one that
        has none (a worker's bug) is that file's error, never a silent gap."""
        self.watches.discard(watch)
        self.ledger.retried(self.tally, watch.retries)
        if complete and len(watch.rows) < len(watch.items):
            seen = {r.index for r in watch.rows}
            now = time.time_ns()
            watch.rows.extend(Row(i.index, i.name, now, now, error=problem or watch.problem or
                                  "internal error: the fetch worker gave no outcome; see the"
                                  " node's log")
                        for i in watch.items if i.index not in seen)
        self._add(watch.new_rows())
        self._journals.append(journal_file(self.store.layout, self.id, watch.chunk.id))

    def _add(self, rows: list[Row]) -> None:
        for r in rows:
            if r.placed:
                self._sizer.saw(r.size)
        self._batch.extend(rows)
        if len(self._batch) >= FLUSH_AT:
            self._flush_now.set()

    def _job_error(self, message: str) -> Row:
        """An error of the job itself, not of one of its files: named after its source."""
        source = self.spec.source.cname if self.spec.source else self.spec.bucket.cname
        now = time.time_ns()
        return Row(-1, source, now, now, error=message)

    # -- recording outcomes -----------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._flush_now.wait(), FLUSH_EVERY)
            except TimeoutError:
                pass
            self._flush_now.clear()
            try:
                await self._flush()
            except Exception:  # what it held is missing from the counts: `_finish` says so
                log.exception("job %s: recording outcomes failed", self.id)

    async def _flush(self) -> bool:
        """Record the outcomes so far. False when the database refused them: they stay queued,
        in order, for the next try."""
        async with self._flushing:
            for watch in list(self.watches):  # rows of chunks still running
                self._add(watch.new_rows())
            batch, self._batch = self._batch, []
            journals, self._journals = self._journals, []
            if batch and (left := await self._store(batch)):
                self._batch[:0] = left
                self._journals[:0] = journals
                return False
        self._room.set()
        if journals:  # their rows are recorded: a crash from now on has nothing to reconcile
            await asyncio.get_running_loop().run_in_executor(None, _unlink_all, journals)
        return True

    async def _store(self, batch: list[Row], *, last_try: bool = False) -> list[Row]:
        """Record `batch` in one transaction; returns what the database refused (to try again).
        A batch that fails otherwise (a constraint, a bug) is recorded outcome by outcome, and
        an outcome that cannot be recorded becomes that file's error: no count is ever lost."""
        with self._counts_lock:
            self._recording += len(batch)
        try:
            stored = await self._in_db(lambda conn: self._record(conn, batch),
                                       f"{len(batch)} outcomes",
                                       then=lambda state: self._recorded(batch, state))
        except Exception as exc:
            with self._counts_lock:
                self._recording -= len(batch)
            if last_try:
                raise
            if len(batch) > 1:
                log.error("job %s: cannot record %d outcomes together (%s); one by one now",
                          self.id, len(batch), describe(exc))
                for i, o in enumerate(batch):
                    if await self._store([o]):
                        return batch[i:]
                return []
            [o] = batch
            log.exception("job %s: cannot record %s", self.id, o.name)
            if o.placed:  # it cannot stay in place without a row
                with contextlib.suppress(OSError, AisdlError):
                    os.unlink(self.store.object_file(self.spec.bucket, o.name))
            o.placed, o.error = False, f"cannot record the object: {describe(exc)}"
            return await self._store(batch, last_try=True)
        if not stored:
            with self._counts_lock:
                self._recording -= len(batch)
            return batch
        return []

    def _recorded(self, batch: list[Row], state: Recorded) -> None:
        """On the database thread, once a batch has committed: the next batch starts from its
        counts (that thread runs one at a time, in order, whoever still waits for it)."""
        counters, cursor, unsaved = state
        with self._counts_lock:
            self.counters, self.cursor, self._recording = counters, cursor, \
                self._recording - len(batch)
        self.ledger.recorded(self.tally, batch)
        if unsaved:
            self._tasks.extend(unsaved)
        else:
            self._tasks.clear()
            self._tasks_at = time.monotonic()

    async def _in_db(self, fn: Callable[[sqlite3.Connection], T], what: str,
                     then: Callable[[T], None] | None = None) -> bool:
        """Run `fn` in one transaction; False when the database refuses it (another program
        holds its lock, its disk is full), said in the log once per spell of refusals."""
        try:
            await asyncio.shield(self.db.run(fn, then))
        except DatabaseRefused as err:
            if not self._refused:
                log.error("job %s: cannot record %s (%s); trying again", self.id, what,
                          err.__cause__ or err.message)
            self._refused = True
            return False
        if self._refused:
            log.info("job %s: recording again", self.id)
            self._refused = False
        return True

    async def _patiently(self, attempt: Callable[[], Awaitable[bool]]) -> None:
        """Try until `attempt` succeeds, backing off while the database refuses."""
        delay = FLUSH_EVERY
        while not await attempt():
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX)

    def _record(self, conn: sqlite3.Connection, batch: list[Row]) -> Recorded:
        """Runs on the database thread, in one transaction: the objects' rows, and the job's
        counts and cursor with the batch, to take effect once that transaction has committed."""
        counters = Counters(**vars(self.counters))
        cursor = Cursor(self.cursor.low, set(self.cursor.above))
        placed = [o for o in batch if o.placed]
        refused = self.store.record_placed(conn, self.spec.bucket, [
            (o.name, o.size, o.cksum, o.custom, o.start_ns) for o in placed])
        for i, message in refused.items():  # final, also if the batch is tried again
            placed[i].placed, placed[i].error = False, message
        errors, tasks = [], []
        new = [(o.name, o.downloaded, o.total, o.start_ns, o.end_ns)
               for o in batch[-RECENT_TASKS:]]  # only so many are ever shown
        # The recent finished tasks (what `-v` shows) are written once a second, not per file:
        # on a small-file job they were a row per object and a trim, a fifth of this work.
        due = self._save_tasks or time.monotonic() - self._tasks_at >= TASKS_EVERY
        if due:
            tasks = [*self._tasks, *new][-RECENT_TASKS:]
        for o in batch:
            if o.error:
                counters.errors += 1
                errors.append((o.name, o.error))
            else:
                counters.finished += 1
                counters.skipped += o.skipped
        cursor.mark_all([o.index for o in batch if o.index >= 0])  # -1: the job's own error
        records.save_progress(conn, self.id, counters, cursor, errors, tasks)
        return counters, cursor, [] if due else new

    async def _finish(self, stopped_by: str = "") -> None:
        """Record the last outcomes and the end of the job. A job that stopped early, or whose
        counts do not add up to its total, says so in its error list: never a silent gap."""
        self._save_tasks = True
        await self._patiently(self._flush)
        c = self.counters
        if stopped_by:
            left = f"; {self.total - c.finished - c.errors} of {self.total} files not done" \
                if self.total >= 0 else ""
            self._batch.append(self._job_error(
                f"the job stopped on an internal error ({stopped_by}){left}; see the node's log"))
        elif gap := count_gap(self.total, c, aborted=self.aborted,
                              all_dispatched=self.all_dispatched):
            log.error("job %s: counts do not add up: %s", self.id, gap)
            self._batch.append(self._job_error(f"counts do not add up: {gap}; see the node's log"))
        await self._patiently(self._flush)
        finished, aborted, dispatched = time.time_ns(), self.aborted, self.all_dispatched
        await self._patiently(lambda: self._in_db(
            lambda conn: records.mark_finished(conn, self.id, finished, aborted, dispatched),
            "the end of the job"))
        self.finished_ns = finished  # only now: status reads finished jobs from the database
        await asyncio.get_running_loop().run_in_executor(None, self.store.drop_work, self.id)


def count_gap(total: int, counters: Counters, *, aborted: bool, all_dispatched: bool) -> str:
    """How a job that ran to its end misses `finished + errors == total` ("" when it does not,
    or when the rule does not apply: an aborted job, one stopped early, an unknown total)."""
    if aborted or not all_dispatched or total < 0:
        return ""
    done = counters.finished + counters.errors
    if done == total:
        return ""
    what = f"{total - done} without an outcome" if done < total else f"{done - total} counted twice"
    return f"{counters.finished} finished + {counters.errors} errors of {total} files: {what}"


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
