"""`GET /metrics`: the node's figures in Prometheus's text format (OpenMetrics when asked).

Everything is read at scrape time from memory: the node's accounting (observe/ledger.py), the
jobs that run (their chunks in flight) and the queues of the pool and the database. A scrape
never waits for the database thread that records downloads.

AIStore's downloader counters keep the names AIS's exporter gives them (stats/target_stats.go:
`dl.size`, `dl.ns.total`, `err.dl.n`; stats/common_prom.go turns them into
`ais_target_dl_bytes`, `ais_target_dl_ns_total`, `ais_target_err_dl_count` with a `node_id`
label, and the bucket as `bucket`), so an AIS dashboard reads them as they are. AIS types the
first and last as counters without the `_total` suffix, which prometheus_client always adds to
a counter: they are exposed untyped under AIS's exact names (PromQL treats them alike).

Labels are bounded: a job's id (jobs are removed, and their series with them), a bucket, a
cause or class from a fixed list; never an object's name, a link or a host.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

from aisdl.api.keys import DB, JOBS, NODE_ID
from aisdl.engine.retry import RETRY_CAUSES
from aisdl.jobs.manager import JobManager
from aisdl.jobs.run import JobRun
from aisdl.observe.ledger import ERROR_CLASSES, OUTCOMES

SAMPLE_EVERY = 1.0  # seconds between samples of the rates and of the event loop's lag
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


def setup(app: web.Application) -> None:
    """The route, and the sampler (after the node's resources: cleanup contexts run in order)."""
    registry = CollectorRegistry(auto_describe=False)  # one per node: not the process's global
    registry.register(NodeCollector(app))
    app[REGISTRY] = registry
    app.router.add_route("GET", "/metrics", make_aiohttp_handler(registry))
    app.cleanup_ctx.append(_sampler)


async def _sampler(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(sample_forever(app[JOBS]), name="metrics sampler")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def sample_forever(jobs: JobManager) -> None:
    """Once a second: the totals behind files/s and bytes/s, and how late the loop woke."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(SAMPLE_EVERY)
        lag = max(0.0, loop.time() - before - SAMPLE_EVERY)
        in_flight = {run.id: sum(f.downloaded for f in run.current.values())
                     for run in _running(jobs)}
        jobs.ledger.sample(in_flight, lag)


def _running(jobs: JobManager) -> list[JobRun]:
    return [run for run in list(jobs.runs.values()) if not run.finished_ns]


def _add_all(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


class NodeCollector(Collector):
    """Builds every family at scrape time from what the node holds in memory."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        app = self.app
        jobs, node_id = app[JOBS], app[NODE_ID]
        ledger = jobs.ledger
        node, buckets, tallies = ledger.snapshot()
        running = _running(jobs)

        # Retries of chunks still running are in their watches until the chunk ends.
        live_retries: dict[str, dict[str, int]] = {}
        for run in running:
            for watch in list(run.watches):
                _add_all(live_retries.setdefault(run.id, {}), watch.retries)
                _add_all(node.retries, watch.retries)

        # -- AIStore's downloader counters, under AIS's names ------------------------------
        dl_bytes = UnknownMetricFamily("ais_target_dl_bytes", "total downloaded size (bytes)",
                                       labels=("bucket", "node_id"))
        dl_ns = CounterMetricFamily("ais_target_dl_ns", "total downloading time (nanoseconds)",
                                    labels=("bucket", "node_id"))
        for bucket, b in sorted(buckets.items()):
            dl_bytes.add_metric((bucket, node_id), b.bytes)
            dl_ns.add_metric((bucket, node_id), b.download_ns)
        dl_errors = UnknownMetricFamily("ais_target_err_dl_count",
                                        "downloader: number of download errors",
                                        labels=("node_id",))
        dl_errors.add_metric((node_id,), node.files["error"])
        yield from (dl_bytes, dl_ns, dl_errors)

        # -- the node ------------------------------------------------------------------------
        files = CounterMetricFamily("aisdl_files", "Files done by download jobs since the node"
                                    " started, by outcome", labels=("outcome",))
        for outcome in OUTCOMES:
            files.add_metric((outcome,), node.files.get(outcome, 0))
        yield files
        yield CounterMetricFamily("aisdl_bytes", "Bytes of objects downloaded since the node"
                                  " started", value=node.bytes)
        yield GaugeMetricFamily("aisdl_files_per_second", "Files done per second over the last"
                                " 10 s", value=ledger.files_rate.rate())
        yield GaugeMetricFamily("aisdl_bytes_per_second", "Bytes received per second over the"
                                " last 10 s (transfers in flight included)",
                                value=ledger.bytes_rate.rate())
        retries = CounterMetricFamily("aisdl_retries", "Fetches tried again, by cause",
                                      labels=("cause",))
        for cause in RETRY_CAUSES:
            retries.add_metric((cause,), node.retries.get(cause, 0))
        yield retries
        errors = CounterMetricFamily("aisdl_errors", "Files that failed, by class of error",
                                     labels=("class",))
        for cls in ERROR_CLASSES:
            errors.add_metric((cls,), node.errors.get(cls, 0))
        yield errors

        in_flight = {run.id: len(run.current) for run in running}
        yield GaugeMetricFamily("aisdl_transfers_in_flight", "Objects being fetched now",
                                value=sum(in_flight.values()))
        yield GaugeMetricFamily("aisdl_jobs_running", "Download jobs running",
                                value=len(running))
        yield self._queues(jobs, running)
        yield from ledger.commit_seconds.collect()
        yield CounterMetricFamily("aisdl_database_refused", "Transactions the database refused"
                                  " (a batch tried again, a request answered 503 or 507)",
                                  value=ledger.refused)
        pool = jobs.pool
        yield CounterMetricFamily("aisdl_fetch_worker_restarts", "Fetch worker processes"
                                  " started again after one exited",
                                  value=pool.restarts if pool is not None else 0)
        yield GaugeMetricFamily("aisdl_event_loop_lag_seconds", "The node's event loop: the"
                                " longest it was late to wake over the last 10 s",
                                value=ledger.loop_lag.worst())

        # -- each job (until it is removed) ------------------------------------------------
        job_files = CounterMetricFamily("aisdl_job_files", "A job's files, by outcome",
                                        labels=("job_id", "outcome"))
        job_bytes = CounterMetricFamily("aisdl_job_bytes", "Bytes of a job's objects"
                                        " downloaded (since the node started)",
                                        labels=("job_id",))
        job_files_rate = GaugeMetricFamily("aisdl_job_files_per_second", "A job's files done"
                                           " per second over the last 10 s", labels=("job_id",))
        job_bytes_rate = GaugeMetricFamily("aisdl_job_bytes_per_second", "A job's bytes"
                                           " received per second over the last 10 s",
                                           labels=("job_id",))
        job_retries = CounterMetricFamily("aisdl_job_retries", "A job's fetches tried again,"
                                          " by cause", labels=("job_id", "cause"))
        job_errors = CounterMetricFamily("aisdl_job_errors", "A job's failed files, by class",
                                         labels=("job_id", "class"))
        job_in_flight = GaugeMetricFamily("aisdl_job_transfers_in_flight", "A job's objects"
                                          " being fetched now", labels=("job_id",))
        for job_id, t in sorted(tallies.items()):
            for outcome in OUTCOMES:
                job_files.add_metric((job_id, outcome), t.files.get(outcome, 0))
            job_bytes.add_metric((job_id,), t.bytes)
            if job_id in in_flight:  # running (an ended job's gauges would say 0: left out)
                job_files_rate.add_metric((job_id,), t.files_rate.rate())
                job_bytes_rate.add_metric((job_id,), t.bytes_rate.rate())
                job_in_flight.add_metric((job_id,), in_flight[job_id])
            retried = dict(t.retries)
            _add_all(retried, live_retries.get(job_id, {}))
            for cause, n in sorted(retried.items()):
                job_retries.add_metric((job_id, cause), n)
            for cls, n in sorted(t.errors.items()):
                job_errors.add_metric((job_id, cls), n)
        yield from (job_files, job_bytes, job_files_rate, job_bytes_rate, job_retries,
                    job_errors, job_in_flight)

    def _queues(self, jobs: JobManager, running: list[JobRun]) -> GaugeMetricFamily:
        unrecorded = waiting = 0
        for run in running:
            unrecorded += run.unrecorded
            for watch in list(run.watches):
                unrecorded += len(watch.rows) - watch.taken
                waiting += max(0, len(watch.items) - len(watch.rows) - len(watch.in_flight))
        pool = jobs.pool
        depths = {
            "files_waiting": waiting,  # in chunks handed out, not started yet
            "outcomes_unrecorded": unrecorded,  # done, not yet committed to the database
            "chunks_waiting_for_connections": pool.budget.waiting if pool is not None else 0,
            "database_calls": self.app[DB].waiting,  # handed to its thread, not done yet
        }
        family = GaugeMetricFamily("aisdl_queue_depth", "Work waiting, by queue",
                                   labels=("queue",))
        for queue, depth in depths.items():
            family.add_metric((queue,), depth)
        return family
