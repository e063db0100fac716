"""Chunks on a Dask cluster (`ais serve --scheduler tcp://HOST:PORT`): the node submits each
chunk as one task; plain `dask worker` processes on any machine with aisdl installed run them
(the node registers what they need as a worker plugin). Workers fetch and place objects on the
node's mountpaths, which every worker mounts at the same path; the node alone records them.

What Dask does not do for us, done here:
- a future is released as soon as its result is taken (else a chunk whose result lived on a
  worker that died would run again);
- chunks carry priorities (earlier first), so a chunk re-run after its worker died does not
  wait behind every other;
- a running task is not stopped by cancelling its future: a cancel (an abort, the node
  stopping) also goes to the workers, which stop the chunk's transfers themselves;
- the scheduler gone: chunks wait ("waiting for scheduler") and are submitted again once it is
  back; a chunk run twice first takes what its journal shows in place (engine/chunks.py).
- the node gone: the scheduler drops its tasks; the node resumes its jobs from its database.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
from dataclasses import replace
from typing import Any

import msgspec
from distributed import Client, WorkerPlugin, get_worker

from aisdl.config import NodeConfig
from aisdl.engine.chunks import (
    CHUNK_DECODER,
    CHUNK_ENCODER,
    LEASE_CHECK,
    LEASE_STALE,
    PROGRESS_DECODER,
    RESULT_DECODER,
    ChunkProgress,
    ChunkResult,
    ChunkRunner,
    Watch,
    lease_holder,
)
from aisdl.engine.limits import ConnectionBudget, TokenBucket
from aisdl.errors import AisdlError
from aisdl.store.layout import WORK_DIR, Layout

log = logging.getLogger("aisdl.engine")
TOPIC = "aisdl-progress"
PROGRESS_EVERY = 0.25  # seconds between a running chunk's progress events
CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler at start-up
RECONNECT_EVERY = 1.0   # seconds between tries while the scheduler is gone
CANCEL_WAIT = 5.0


class SchedulerUnreachable(AisdlError):
    status = 503


# -- on the workers -------------------------------------------------------------------------
class _WorkerState:
    def __init__(self, config: NodeConfig, mountpaths: list[str]) -> None:
        self.config, self.mountpaths = config, mountpaths
        self.runner: ChunkRunner | None = None
        self.running: dict[tuple[str, int], tuple[asyncio.Task[None], Watch]] = {}

    def chunk_runner(self) -> ChunkRunner:
        if self.runner is None:  # on the worker's event loop: its sources belong to it
            self.runner = ChunkRunner.open(self.config, Layout(self.mountpaths))
        return self.runner


_state: _WorkerState | None = None


class AisdlWorker(WorkerPlugin):
    """Makes a `dask worker` an aisdl fetch worker: the node's settings and mountpaths."""

    name = "aisdl"

    def __init__(self, config: NodeConfig, mountpaths: list[str]) -> None:
        self.config, self.mountpaths = config, mountpaths

    def setup(self, worker: Any) -> None:
        global _state
        _state = _WorkerState(self.config, self.mountpaths)


async def run_chunk_task(data: bytes) -> bytes:
    """A Dask task: run one chunk on this worker; its rows, encoded."""
    worker = get_worker()
    if _state is None:
        raise RuntimeError("this Dask worker has no aisdl plugin: is it a worker of the node's"
                           " scheduler?")
    watch = Watch(CHUNK_DECODER.decode(data))
    key = (watch.chunk.job, watch.chunk.id)
    task = asyncio.create_task(_state.chunk_runner().run(watch))
    _state.running[key] = (task, watch)
    reporter = asyncio.create_task(_report(worker, watch))
    try:
        await asyncio.gather(task, return_exceptions=False)
    except asyncio.CancelledError:
        pass  # the node cancelled it: the rows so far go back all the same
    finally:
        reporter.cancel()
        _state.running.pop(key, None)
    return CHUNK_ENCODER.encode(ChunkResult(watch.chunk.id, watch.rows,
                                            watch.unreported_retries()))


async def _report(worker: Any, watch: Watch) -> None:
    name = worker.name if isinstance(worker.name, str) else worker.address
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        if watch.changed:
            watch.changed = False
            for f in watch.in_flight.values():
                f.worker = name
            progress = ChunkProgress(watch.chunk.id, list(watch.in_flight.values()), [],
                                     watch.unreported_retries())
            worker.log_event(TOPIC, {"job": watch.chunk.job,
                                     "progress": CHUNK_ENCODER.encode(progress)})


async def cancel_chunk(job: str, chunk_id: int, discard: bool) -> None:
    """Run on every worker by the node: stop that chunk's transfers, if it runs here."""
    if _state is None:
        return
    entry = _state.running.get((job, chunk_id))
    if entry is not None:
        task, watch = entry
        watch.discard = discard
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def read_probe(path: str, content: bytes) -> str:
    """Run on every worker at start-up: "" when it reads the node's probe file as written."""
    try:
        with open(path, "rb") as f:
            got = f.read()
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}"
    return "" if got == content else f"{path} holds other bytes than the node wrote"


# -- on the node -----------------------------------------------------------------------------
class DaskPool:
    """Runs chunks as Dask tasks; the same interface as FetchPool for a job."""

    def __init__(self, config: NodeConfig, address: str, layout: Layout) -> None:
        self.config, self.address, self.layout = config, address, layout
        self.runner = ChunkRunner.open(config, layout)  # throttled jobs
        self.sources = self.runner.fetcher.sources
        self.budget = ConnectionBudget(config.max_connections)
        self.client: Any = None
        self.waiting = ""  # the scheduler is gone: chunks wait for it
        self.restarts = 0  # (Dask's nanny restarts its workers; the node sees none)
        self.workers: list[str] = []
        self._connected = asyncio.Event()
        self._watches: dict[tuple[str, int], Watch] = {}
        self._order = itertools.count()
        self._reconnecting: asyncio.Task[None] | None = None
        self._renewing: asyncio.Task[None] | None = None
        self.owner = secrets.token_hex(8)
        self.lease = os.path.join(layout.mountpaths[0], WORK_DIR, "dask.lease")
        # Workers get what they need to fetch and place, never the node's token key.
        self._plugin_config = replace(config, auth_key=b"", auth_algorithm="")

    @property
    def parallelism(self) -> int:
        return max(1, len(self.workers))

    async def start(self) -> None:
        try:
            try:
                await self._connect(CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as err:
                raise SchedulerUnreachable(
                    f"cannot reach the Dask scheduler at {self.address}: {err}") from err
            await self._check_mountpaths()
            await self._take_lease()
        except BaseException:
            await self.aclose()  # the node does not start: nothing may be left open
            raise

    async def _take_lease(self) -> None:
        """Chunks run only while this node renews its lease (engine/chunks.py). A node that
        ran before (killed) may have left chunks running: once the lease is ours they stop
        within LEASE_CHECK, so wait that out before any job resumes and reconciles."""
        before, age = lease_holder(self.lease)
        self._renew()
        self._renewing = asyncio.create_task(self._renew_forever())
        if before and age < LEASE_STALE + LEASE_CHECK:
            await asyncio.sleep(2 * LEASE_CHECK)

    def _renew(self) -> None:
        tmp = f"{self.lease}.{self.owner}"
        with open(tmp, "w") as f:
            f.write(self.owner)
        os.replace(tmp, self.lease)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE_CHECK)
            try:
                self._renew()
            except OSError as err:  # a full disk: chunks stop after LEASE_STALE; say why
                log.error("cannot renew %s: %s", self.lease, err.strerror or err)

    async def _connect(self, timeout: float) -> None:
        client = await Client(  # type: ignore[no-untyped-call]
            self.address, asynchronous=True, timeout=f"{timeout}s", set_as_default=False)
        await client.register_plugin(AisdlWorker(self._plugin_config,
                                                 list(self.layout.mountpaths)))
        client.subscribe_topic(TOPIC, self._on_progress)
        self.client = client
        self.workers = list(client.scheduler_info().get("workers", {}))
        self.waiting = ""
        self._connected.set()
        log.info("sending chunks to the Dask scheduler at %s (%d workers)", self.address,
                 len(self.workers))

    async def _check_mountpaths(self) -> None:
        """Every worker must see the node's mountpaths: the node writes a probe file in each,
        every worker reads it back."""
        await self.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        problems = []
        for mp in self.layout.mountpaths:
            path = os.path.join(mp, WORK_DIR, f"probe-{secrets.token_hex(8)}")
            content = secrets.token_bytes(32)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content)
            try:
                answers = await self.client.run(read_probe, path, content)
            finally:
                os.unlink(path)
            problems += [f"worker {self._name(w)}: {why}" for w, why in answers.items() if why]
        self.workers = list(self.client.scheduler_info().get("workers", {}))
        if problems:
            raise AisdlError("Dask workers must see the node's mountpaths at the same paths "
                             "(a shared filesystem): " + "; ".join(problems))

    def _name(self, address: str) -> str:
        info = self.client.scheduler_info().get("workers", {}).get(address, {})
        return str(info.get("name") or address)

    def _on_progress(self, event: Any) -> None:
        _, message = event
        progress = PROGRESS_DECODER.decode(message["progress"])
        watch = self._watches.get((message["job"], progress.id))
        if watch is not None:
            watch.in_flight = {f.index: f for f in progress.in_flight}
            watch.retried(progress.retries)

    async def run_chunk(self, watch: Watch, throttle: TokenBucket | None = None) -> None:
        if throttle is not None:
            await self.runner.run(watch, throttle)
            return
        chunk = watch.chunk = msgspec.structs.replace(watch.chunk, lease=self.lease,
                                                      owner=self.owner)
        key = (chunk.job, chunk.id)
        self._watches[key] = watch
        priority = -next(self._order)  # earlier chunks first, also when run again
        try:
            while True:
                await self._connected.wait()
                try:
                    data = await self._submit(watch, priority)
                except _SchedulerLost:
                    continue
                result = RESULT_DECODER.decode(data)
                watch.rows.extend(result.rows)
                watch.retried(result.retries)
                return
        finally:
            self._watches.pop(key, None)
            watch.in_flight = {}

    async def _submit(self, watch: Watch, priority: int) -> bytes:
        from distributed.client import FutureCancelledError

        chunk = watch.chunk
        client = self.client
        future = client.submit(run_chunk_task, CHUNK_ENCODER.encode(chunk), pure=False,
                               priority=priority, key=f"aisdl-{chunk.job}-{chunk.id}-"
                               f"{secrets.token_hex(4)}")
        try:
            data: bytes = await future
            return data
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.run(cancel_chunk, chunk.job, chunk.id,
                                                  watch.discard), CANCEL_WAIT)
            raise
        except Exception as err:
            if client.status == "running" and not isinstance(err, (FutureCancelledError,
                                                                   OSError)):
                raise  # the task's own failure: the job makes its files errors
            self._lost(client, err)
            raise _SchedulerLost from err
        finally:
            with contextlib.suppress(Exception):
                future.release()

    def _lost(self, client: Any, err: BaseException) -> None:
        if self.client is not client or self.waiting:
            return
        log.error("the Dask scheduler at %s is gone (%s); jobs wait for it", self.address, err)
        self.waiting = f"for the Dask scheduler at {self.address} (gone; retried every " \
            f"{RECONNECT_EVERY:.0f} s)"
        self._connected.clear()
        self._reconnecting = asyncio.create_task(self._reconnect(client))

    async def _reconnect(self, old: Any) -> None:
        with contextlib.suppress(Exception):
            await old.close()
        while True:
            try:
                await self._connect(RECONNECT_EVERY * 5)
                return
            except Exception:  # still gone
                await asyncio.sleep(RECONNECT_EVERY)

    async def aclose(self) -> None:
        for task in (self._reconnecting, self._renewing):
            if task is not None:
                task.cancel()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 10)
        await self.sources.aclose()


class _SchedulerLost(Exception):
    pass

