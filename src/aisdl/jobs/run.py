"""One running download job: dispatch items in order to a pool of workers, record outcomes in
batches (one transaction per batch: object commits, counters, errors and the resume cursor
together), so a job stopped at any instant resumes with exact counts. A batch the database
refuses (another program holds its lock, its disk is full) is kept and tried again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aisdl.db import Database
from aisdl.engine.fetch import FetchRequest, discard
from aisdl.engine.limits import THROTTLED_CONNECTIONS, TokenBucket
from aisdl.engine.pool import FetchPool
from aisdl.errors import AisdlError, DatabaseRefused, SourceError
from aisdl.jobs import records
from aisdl.jobs.listing import backend_items, source_link
from aisdl.jobs.records import Counters, Cursor, TaskInfo
from aisdl.jobs.request import Item, JobSpec
from aisdl.models import ObjectAttrs
from aisdl.sources.base import SourceObject
from aisdl.store.catalog_view import CatalogView
from aisdl.store.paths import check_object_name
from aisdl.store.store import Store

log = logging.getLogger("aisdl.jobs")
T = TypeVar("T")
FLUSH_EVERY = 0.25   # seconds between batch commits
FLUSH_AT = 512       # outcomes that force a commit sooner
BACKLOG = 8 * FLUSH_AT  # outcomes not yet recorded at which the workers wait for the database
RETRY_MAX = 5.0      # seconds between tries at most, while the database refuses a batch
LOOKUP_BATCH = 64    # items looked up in the catalog at once before dispatch

# Items for the workers, each with what the catalog has of it; None tells a worker to stop.
WorkQueue = asyncio.Queue[tuple[Item, ObjectAttrs | None] | None]


@dataclass
class TaskState:
    """A transfer in flight, as the status shows it."""

    name: str
    start_ns: int = field(default_factory=time.time_ns)
    downloaded: int = 0
    total: int = 0

    def started(self, offset: int, total: int | None) -> None:
        self.downloaded, self.total = offset, total or 0

    def advanced(self, nbytes: int) -> None:
        self.downloaded += nbytes


@dataclass
class Outcome:
    item: Item
    task: TaskState
    error: str = ""
    skipped: bool = False
    work: str | None = None
    size: int = 0
    cksum: str = ""
    custom: dict[str, str] = field(default_factory=dict)
    end_ns: int = field(default_factory=time.time_ns)
    placed: bool = False  # the bytes are in place: a batch tried again only records them


class JobRun:
    def __init__(self, job_id: str, spec: JobSpec, *, db: Database, store: Store,
                 fetcher: FetchPool, workers: int, counters: Counters, cursor: Cursor,
                 started_ns: int) -> None:
        self.id, self.spec = job_id, spec
        self.db, self.store, self.fetcher = db, store, fetcher
        self.workers = max(1, min(workers, THROTTLED_CONNECTIONS) if spec.bytes_per_hour
                           else workers)
        self.counters, self.cursor = counters, cursor
        self.started_ns = started_ns
        self.total = spec.total
        self.current: dict[int, TaskState] = {}
        self.aborted = False
        self.all_dispatched = False
        self.finished_ns = 0
        self._batch: list[Outcome] = []
        self._recording = 0  # outcomes handed to the database thread, not yet in counters
        self._counts_lock = threading.Lock()  # counters and _recording change on two threads
        self._flush_now = asyncio.Event()
        self._flushing = asyncio.Lock()  # one batch at a time: each starts from the last's counts
        self._room = asyncio.Event()     # set when the backlog has been recorded
        self._refused = False  # the database refused the last record: said once in the log
        self._throttle = TokenBucket(spec.bytes_per_hour) if spec.bytes_per_hour else None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        c = self.counters
        return (f"<JobRun {self.id} {self.spec.kind} done={c.finished}+{c.errors}/{self.total}"
                f" running={len(self.current)} aborted={self.aborted}>")

    @property
    def scheduled(self) -> int:
        with self._counts_lock:
            c, recording = self.counters, self._recording
        return c.finished + c.errors + len(self.current) + len(self._batch) + recording

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"job {self.id}")

    async def abort(self) -> None:
        """Stop now: in-flight transfers are cancelled and discarded; what is done stays."""
        self.aborted = True
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
        queue: WorkQueue = asyncio.Queue(maxsize=self.workers * 2)
        flusher = asyncio.create_task(self._flush_loop())
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(self.workers):
                    tg.create_task(self._worker(queue))
                await self._produce(queue)
                for _ in range(self.workers):
                    await queue.put(None)
            await self._finish()
        except asyncio.CancelledError:
            if self.aborted:
                await self._finish()
            else:
                await self._flush()  # node stopping: keep what is done, resume the rest later
            raise
        except Exception as exc:
            log.exception("job %s stopped by an internal error", self.id)
            await self._finish(stopped_by=_describe(exc))
        finally:
            flusher.cancel()

    async def _produce(self, queue: WorkQueue) -> None:
        batch: list[Item] = []
        try:
            async for item in self._items():
                if not self.cursor.done(item.index):
                    batch.append(item)
                if len(batch) >= LOOKUP_BATCH:
                    await self._dispatch(batch, queue)
                    batch = []
        except SourceError as err:  # the listing failed: one error for the job, not silence
            await self._dispatch(batch, queue)
            self._batch.append(self._job_error(f"listing failed: {err.message}"))
            return
        await self._dispatch(batch, queue)
        self.all_dispatched = True

    async def _dispatch(self, batch: list[Item],
                        queue: WorkQueue) -> None:
        """Hand items to the workers with what we already store of each (one query a batch)."""
        stored = await self.store.lookup_many(
            self.spec.bucket, [i.name for i in batch if not i.error])
        for item in batch:
            await queue.put((item, stored.get(item.name)))

    async def _items(self) -> AsyncIterator[Item]:
        if self.spec.kind == "backend":
            cloud = self.fetcher.sources.cloud
            async for item in backend_items(self.spec, cloud, self.store, self.cursor.low):
                yield item
        else:
            for item in self.spec.items(start=self.cursor.low):
                yield item

    async def _worker(self, queue: WorkQueue) -> None:
        while (entry := await queue.get()) is not None:
            item, stored = entry
            task = TaskState(item.name)
            self.current[item.index] = task
            try:
                outcome = await self._download(item, stored, task)
            except asyncio.CancelledError:
                self.current.pop(item.index, None)
                if self.aborted:
                    discard(self._work_path(item))
                raise
            self.current.pop(item.index, None)
            self._batch.append(outcome)
            if len(self._batch) >= FLUSH_AT:
                self._flush_now.set()
            if len(self._batch) >= BACKLOG:  # the database is behind or refusing: hold on
                self._room.clear()
                await self._room.wait()

    def _job_error(self, message: str) -> Outcome:
        """An error of the job itself, not of one of its files: named after its source."""
        source = self.spec.source.cname if self.spec.source else self.spec.bucket.cname
        return Outcome(Item(-1, source, ""), TaskState(source), error=message)

    def _work_path(self, item: Item) -> str:
        return self.store.work_file(self.spec.bucket, item.name, self.id, f".{item.index}")

    async def _download(self, item: Item, stored: ObjectAttrs | None,
                        task: TaskState) -> Outcome:
        bucket = self.spec.bucket
        if item.error:
            return Outcome(item, task, error=item.error)
        try:
            check_object_name(item.name)
            if item.evict:
                await self.store.delete_object(bucket, item.name)
                return Outcome(item, task)
            known = SourceObject.from_custom(stored.custom) if stored and stored.custom.get(
                "source") else None
            if known is not None and item.listed is not None and known.same_as(item.listed):
                return Outcome(item, task, skipped=True)  # the listing proves it unchanged
            req = FetchRequest(link=item.link, work=self._work_path(item), stored=known,
                               headers=self.spec.headers, timeout=self.spec.timeout,
                               throttle=self._throttle)
            got = await self.fetcher.fetch(req, task, job=self.id)
            if not got.unchanged and bucket.is_remote and self.spec.source != bucket:
                await self._write_through(item, req.work)
        except SourceError as err:
            return Outcome(item, task, error=err.message)
        except AisdlError as err:
            return Outcome(item, task, error=err.message)
        except OSError as err:
            discard(self._work_path(item))
            return Outcome(item, task, error=f"cannot write the object: {err.strerror or err}")
        except Exception as exc:  # a bug met by one file must not stop the other files
            log.exception("job %s: %s failed on an internal error", self.id, item.name)
            with contextlib.suppress(OSError):
                discard(self._work_path(item))
            return Outcome(item, task, error=f"internal error: {_describe(exc)}")
        if got.unchanged:
            return Outcome(item, task, skipped=True)
        return Outcome(item, task, work=req.work, size=got.size, cksum=got.cksum,
                       custom=got.custom)

    async def _write_through(self, item: Item, work: str) -> None:
        """A cloud bucket as the destination: the object goes to the cloud too."""
        try:
            await self.fetcher.sources.cloud.put(source_link(self.spec.bucket, item.name), work)
        except SourceError:
            discard(work)
            raise

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
            batch, self._batch = self._batch, []
            if batch and (left := await self._store(batch)):
                self._batch[:0] = left
                return False
        self._room.set()
        return True

    async def _store(self, batch: list[Outcome], *, last_try: bool = False) -> list[Outcome]:
        """Record `batch` in one transaction; returns what the database refused (to try again).
        A batch that fails otherwise (a constraint, a bug) is recorded outcome by outcome, and
        an outcome that cannot be recorded becomes that file's error: no count is ever lost."""
        with self._counts_lock:
            self._recording += len(batch)
        try:
            stored = await self._in_db(lambda conn: self._record(conn, batch),
                                       f"{len(batch)} outcomes",
                                       then=lambda state: self._recorded(len(batch), state))
        except Exception as exc:
            with self._counts_lock:
                self._recording -= len(batch)
            if last_try:
                raise
            if len(batch) > 1:
                log.error("job %s: cannot record %d outcomes together (%s); one by one now",
                          self.id, len(batch), _describe(exc))
                for i, o in enumerate(batch):
                    if await self._store([o]):
                        return batch[i:]
                return []
            [o] = batch
            log.exception("job %s: cannot record %s", self.id, o.item.name)
            o.work, o.error = None, f"cannot record the object: {_describe(exc)}"
            return await self._store(batch, last_try=True)
        if not stored:
            with self._counts_lock:
                self._recording -= len(batch)
            return batch
        return []

    def _recorded(self, size: int, state: tuple[Counters, Cursor]) -> None:
        """On the database thread, once a batch has committed: the next batch starts from its
        counts (that thread runs one at a time, in order, whoever still waits for it)."""
        with self._counts_lock:
            (self.counters, self.cursor), self._recording = state, self._recording - size

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

    def _record(self, conn: sqlite3.Connection, batch: list[Outcome]) -> tuple[Counters, Cursor]:
        """Runs on the database thread, in one transaction: the job's counts and cursor with
        the batch, to take effect once that transaction has committed."""
        counters = Counters(**vars(self.counters))
        cursor = Cursor(self.cursor.low, set(self.cursor.above))
        errors, tasks = [], []
        bck = self.spec.bucket
        view = CatalogView(conn, bck, [o.item.name for o in batch if o.work])
        for o in batch:
            if o.work is not None:
                try:
                    if not o.placed:
                        self.store.place(bck, o.item.name, o.work, view)
                        o.placed = True
                    self.store.record_in_txn(conn, bck, o.item.name, o.size, o.cksum, o.custom,
                                             o.task.start_ns, view)
                except AisdlError as err:
                    with contextlib.suppress(OSError):  # else it goes with the job's work dir
                        discard(o.work)
                    o.work, o.error = None, err.message  # final, also if the batch is tried again
            if o.error:
                counters.errors += 1
                errors.append((o.item.name, o.error))
            else:
                counters.finished += 1
                counters.skipped += o.skipped
            if o.item.index >= 0:  # -1: an error of the job itself (its listing)
                cursor.mark(o.item.index)
            tasks.append(TaskInfo(o.item.name, o.task.downloaded, o.task.total,
                                  o.task.start_ns, o.end_ns))
        records.save_progress(conn, self.id, counters, cursor, errors, tasks)
        return counters, cursor

    async def _finish(self, stopped_by: str = "") -> None:
        """Record the last outcomes and the end of the job. A job that stopped early, or whose
        counts do not add up to its total, says so in its error list: never a silent gap."""
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


def _describe(exc: BaseException) -> str:
    """One line for an unexpected exception (the first of a group): its type and message."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
