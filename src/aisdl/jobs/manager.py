"""All download jobs of the node: create, resume after a restart, status, abort, remove.

Unfinished jobs resume only once the node answers (`resume_in_background`), each on its own:
nothing a stored job holds can keep the node from serving, and a job that cannot resume is
recorded as that job's error."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aisdl.config import NodeConfig
from aisdl.db import Database
from aisdl.engine.pool import ChunkPool, FetchPool
from aisdl.errors import BadRequest, DatabaseRefused, NotFound
from aisdl.jobs import records
from aisdl.jobs.multiobj import MultiObjOps
from aisdl.jobs.records import Counters, Cursor
from aisdl.jobs.request import JobSpec, check_regex
from aisdl.jobs.run import JobRun
from aisdl.models import Bucket
from aisdl.observe.ledger import Ledger
from aisdl.redact import redact_text
from aisdl.store.store import Store

if TYPE_CHECKING:
    from aisdl.sources.cloud import CloudSource

log = logging.getLogger("aisdl.jobs")
_ID_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
RESUME_RETRY_MAX = 5.0  # seconds between tries at most, while the database refuses to list jobs


@dataclass(frozen=True)
class JobState:
    """One job as the job (xaction) API reports it: `finished_ns` is 0 while it runs, and an
    aborted job may still be winding down."""

    id: str
    kind: str  # the AIS job kind
    description: str
    bucket: Bucket
    started_ns: int
    finished_ns: int
    aborted: bool
    errors: int
    error_text: str = ""  # what went wrong, where the kind words it itself (delete, evict)


def new_job_id() -> str:
    return "dnl-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat().replace("+00:00", "Z") if ns \
        else "1970-01-01T00:00:00Z"


class JobManager:
    def __init__(self, config: NodeConfig, db: Database, store: Store) -> None:
        self.config, self.db, self.store = config, db, store
        self.runs: dict[str, JobRun] = {}
        self._fetcher: ChunkPool | None = None
        self._resuming: asyncio.Task[None] | None = None
        self.multiobj = MultiObjOps(store)  # deletes and evictions (prefetches are jobs here)
        self.ledger = Ledger()  # the node's metrics (api/metrics.py)
        db.observer = self.ledger

    async def start(self) -> None:
        """Before the node serves: the fetch workers, and no work files but those of unfinished
        jobs (before any new job can make some)."""
        if self.config.scheduler:
            from aisdl.engine.dask_pool import DaskPool  # dask loads only for such a node

            self._fetcher = DaskPool(self.config, self.config.scheduler, self.store.layout)
        else:
            self._fetcher = FetchPool(self.config, self.config.fetch_procs, self.store.layout)
        await self._fetcher.start()
        rows = await self.db.run(records.unfinished_jobs)
        await asyncio.get_running_loop().run_in_executor(
            None, self.store.clean_work, {r["id"] for r in rows})

    def resume_in_background(self) -> None:
        """Once the node serves: resume unfinished jobs."""
        self._resuming = asyncio.create_task(self._resume_logged(), name="resume jobs")

    async def _resume_logged(self) -> None:
        try:
            await self._resume()
        except Exception:  # the node serves on; what did not resume resumes at the next start
            log.exception("resuming the unfinished jobs failed")

    async def _resume(self) -> None:
        delay = 0.25
        while True:
            try:
                rows = await self.db.run(records.unfinished_jobs)
                break
            except DatabaseRefused as err:
                log.error("cannot list the jobs to resume (%s); trying again", err.message)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RESUME_RETRY_MAX)
        # All launches before the next await: an abort that reaches the database after the
        # rows were read finds its job running (see `abort`).
        aborted: list[sqlite3.Row] = []
        failed: list[tuple[sqlite3.Row, str]] = []
        for row in rows:
            if row["id"] in self.runs:
                continue
            if row["aborted"]:  # the abort was recorded, then the node stopped: finish it
                aborted.append(row)
                continue
            try:
                log.info("resuming job %s (%s)", row["id"], redact_text(row["description"]))
                self._launch(row["id"], JobSpec.from_json(row["spec"]), row)
            except Exception as exc:  # noqa: BLE001 - a record this node cannot read
                log.exception("cannot resume job %s", row["id"])
                self.runs.pop(row["id"], None)
                failed.append((row, f"cannot resume the job: {type(exc).__name__}: {exc}"))
        for row, error in failed:
            await self._fail(row, error)
        for row in aborted:
            await self._finish_abort(row)

    async def _fail(self, row: sqlite3.Row, error: str) -> None:
        now = time.time_ns()
        try:
            await self.db.run(lambda c: records.fail_job(c, row["id"], row["id"], error, now))
        except DatabaseRefused as err:  # it stays unfinished: the next start tries again
            log.error("job %s: cannot record that it cannot resume (%s)", row["id"], err.message)

    async def _finish_abort(self, row: sqlite3.Row) -> None:
        job_id, now, dispatched = row["id"], time.time_ns(), bool(row["all_dispatched"])
        log.info("job %s was aborted before the node stopped: finishing the abort", job_id)
        try:
            await self.db.run(lambda c: records.mark_finished(c, job_id, now, True, dispatched))
        except DatabaseRefused as err:  # it stays aborted on disk: the next start finishes it
            log.error("job %s: cannot record the end of its abort (%s)", job_id, err.message)
            return
        await asyncio.get_running_loop().run_in_executor(None, self.store.drop_work, job_id)

    @property
    def pool(self) -> ChunkPool | None:
        """Where chunks run (None before `start`)."""
        return self._fetcher

    @property
    def cloud(self) -> CloudSource:
        assert self._fetcher is not None, "the job manager has not started"
        cloud: CloudSource = self._fetcher.sources.cloud
        return cloud

    async def close(self) -> None:
        if self._resuming is not None:
            self._resuming.cancel()
            await asyncio.gather(self._resuming, return_exceptions=True)
        await asyncio.gather(*(r.shutdown() for r in self.runs.values()))
        await self.multiobj.close()
        if self._fetcher is not None:
            await self._fetcher.aclose()

    def _launch(self, job_id: str, spec: JobSpec, row: sqlite3.Row | dict[str, Any]) -> JobRun:
        assert self._fetcher is not None
        node_limit = self.config.max_connections  # also for records from before limits were
        run = JobRun(job_id, spec, db=self.db, store=self.store, fetcher=self._fetcher,
                     workers=min(spec.connections or node_limit, node_limit),  # checked
                     counters=Counters(row["finished_cnt"], row["skipped"], row["errors"]),
                     cursor=Cursor.from_json(row["cursor"]), started_ns=row["started"],
                     ledger=self.ledger)
        self.runs[job_id] = run
        run.start()
        return run

    async def create(self, spec: JobSpec) -> str:
        await self.store.ensure_bucket(spec.bucket)
        if spec.kind == "backend":
            spec = replace(spec, source=await self._remote_of(spec.bucket))
        job_id, now, total = new_job_id(), time.time_ns(), spec.total
        await self.db.run(lambda c: records.insert_job(
            c, job_id, spec.to_json(), spec.description, total, now))
        self._launch(job_id, spec, {"finished_cnt": 0, "skipped": 0, "errors": 0,
                                    "cursor": "{}", "started": now})
        log.info("job %s started: %s", job_id, redact_text(spec.description))
        return job_id

    async def _remote_of(self, bucket: Bucket) -> Bucket:
        """The remote bucket a backend job lists: the bucket itself when it is a cloud bucket,
        else its `backend_bck`."""
        remote = self.store.remote_of(bucket)
        if remote is None:
            raise BadRequest(
                f"bucket download requires a remote bucket: {bucket.cname} has no backend;"
                f" connect it first, e.g. `ais bucket props set {bucket.cname}"
                " backend_bck=gcp://BUCKET`")
        return remote

    async def abort(self, job_id: str) -> None:
        """The abort goes to disk first: a node that stops while carrying it out, however it
        stops, finishes the abort when it starts again instead of resuming the job."""
        row = await self.db.run(lambda c: records.get_job(c, job_id))
        if row is None:
            raise self._not_found(job_id)
        if row["finished"]:
            return  # aborting a finished job changes nothing (upstream would flip it to "aborted")
        await self.db.run(lambda c: records.mark_aborted(c, job_id))
        run = self._live(job_id)
        if run is not None:
            await run.abort()
        # else: not resumed yet; `_resume` finishes the abort it finds on disk

    async def remove(self, job_id: str) -> None:
        row = await self.db.run(lambda c: records.get_job(c, job_id))
        if row is None:
            raise self._not_found(job_id)
        if self._live(job_id) is not None or not row["finished"]:  # (or not resumed yet)
            raise BadRequest(f'job "{job_id}" is still running')
        await self.db.run(lambda c: records.delete_job(c, job_id))
        self.runs.pop(job_id, None)
        self.ledger.forget(job_id)

    def _live(self, job_id: str) -> JobRun | None:
        run = self.runs.get(job_id)
        if run is not None and run.finished_ns:
            del self.runs[job_id]  # finished: the database has it all
            return None
        return run

    @staticmethod
    def _not_found(job_id: str) -> NotFound:
        return NotFound(f"download job {job_id} does not exist", tcode="ErrNotFound")

    # -- status -----------------------------------------------------------------------------
    async def status(self, job_id: str, only_active: bool) -> dict[str, Any]:
        row = await self.db.run(lambda c: records.get_job(c, job_id))
        if row is None:
            raise self._not_found(job_id)
        out = self._summary(row)
        run = self._live(job_id)
        if run is not None:
            out["current_tasks"] = [
                {"name": t.name, "downloaded": str(t.downloaded), "total": str(t.total),
                 "start_time": rfc3339(t.start_ns), "end_time": rfc3339(0),
                 **({"worker": t.worker} if t.worker else {})}
                for t in sorted(run.current.values(), key=lambda t: t.name)]
        if not only_active:
            errors = await self.db.run(lambda c: records.job_errors(c, job_id))
            tasks = await self.db.run(lambda c: records.recent_tasks(c, job_id))
            out["download_errors"] = [{"name": n, "error": redact_text(e)} for n, e in errors]
            out["finished_tasks"] = [
                {"name": t.name, "downloaded": str(t.downloaded), "total": str(t.total),
                 "start_time": rfc3339(t.start_ns), "end_time": rfc3339(t.end_ns)}
                for t in tasks]
        return {k: v for k, v in out.items() if v != []}

    async def states(self) -> list[JobState]:
        """Every job of the node, oldest first: download jobs, then the deletes and
        evictions kept in memory (as AIS keeps them: not after a restart)."""
        rows = await self.db.run(records.job_states)
        ops = [JobState(op.id, op.kind, op.what, op.bucket, op.started_ns, op.ended_ns,
                        op.aborted, op.error_count, op.error)
               for op in self.multiobj.records.values()]
        return [self._state(r) for r in rows] + ops

    def _state(self, row: sqlite3.Row) -> JobState:
        run = self._live(row["id"])
        if run is not None:
            c, finished, aborted = run.counters, 0, run.aborted
        else:
            c = Counters(row["finished_cnt"], row["skipped"], row["errors"])
            finished, aborted = row["finished"], bool(row["aborted"])
        return JobState(row["id"], "download", redact_text(row["description"]),
                        Bucket(row["provider"], row["bucket"]), row["started"], finished, aborted,
                        c.errors)

    async def list(self, regex: str, only_active: bool) -> list[dict[str, Any]]:
        pattern = check_regex(regex)
        rows = await self.db.run(records.all_jobs)
        jobs = [j for j in map(self._summary, rows) if pattern.search(j["description"])]
        if only_active:
            jobs = [j for j in jobs if j["finished_time"] == rfc3339(0)]
        return jobs

    def _summary(self, row: sqlite3.Row) -> dict[str, Any]:
        run = self._live(row["id"])
        if run is not None:
            c, finished, aborted, dispatched = run.counters, 0, run.aborted, run.all_dispatched
            scheduled = run.scheduled
            waiting = self._fetcher.waiting if self._fetcher is not None else ""
        else:
            c = Counters(row["finished_cnt"], row["skipped"], row["errors"])
            finished, aborted, dispatched = row["finished"], bool(row["aborted"]), bool(
                row["all_dispatched"])
            scheduled = c.finished + c.errors
            waiting = ""
        return {
            "id": row["id"], "xaction_id": row["id"],
            "description": redact_text(row["description"]),  # it may hold a link's password
            "started_time": rfc3339(row["started"]), "finished_time": rfc3339(finished),
            "finished_cnt": c.finished, "scheduled_cnt": scheduled, "skipped_cnt": c.skipped,
            "error_cnt": c.errors, "total": row["total"], "all_dispatched": dispatched,
            "aborted": aborted, **({"waiting": waiting} if waiting else {}),
        }
