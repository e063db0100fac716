"""Running chunks on worker processes, so that a node uses more than one core: one event loop
per worker, each with its share of the node's connections and its own per-host limits. A worker
fetches and places a chunk's objects and answers once per chunk (engine/chunks.py). Throttled
jobs (their token bucket lives here) and nodes configured with no workers run chunks in this
process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from aisdl.config import NodeConfig
from aisdl.engine.chunks import (
    CHUNK_ENCODER,
    PROGRESS_DECODER,
    RESULT_DECODER,
    ChunkRunner,
    Watch,
)
from aisdl.engine.hostlimit import START
from aisdl.engine.ipc import Outbox, receive
from aisdl.engine.limits import ConnectionBudget, TokenBucket
from aisdl.sources.registry import Sources
from aisdl.store.layout import Layout

log = logging.getLogger("aisdl.engine")
CANCEL_WAIT = 5.0  # seconds a cancelled chunk waits for its worker to let go of its work files
RESUBMITS = 2      # times a chunk moves to a new worker after its worker died
YOUNG = 10.0       # seconds: a worker that dies this young counts towards giving up on workers
GIVE_UP_AFTER = 3
READY_WAIT = 30.0  # seconds a new worker gets to open its sources before the node goes on
# glibc malloc: socket reads allocate 256 KiB buffers; with the default thresholds each one is
# a fresh mmap (page faults and zeroing in the kernel). Keeping them on the heap cut a worker's
# page faults on 4 x 512 MiB from ~70,000 to ~11,000 and its system time by ~15%.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 20), "MALLOC_TRIM_THRESHOLD_": str(32 << 20)}


class WorkerLost(Exception):
    pass


class ChunkPool(Protocol):
    """Where a job's chunks run: fetch worker processes (FetchPool) or a Dask cluster."""

    budget: ConnectionBudget
    sources: Sources
    waiting: str  # what every job waits for ("": nothing), as the status says it
    restarts: int  # fetch workers started again after one exited

    @property
    def parallelism(self) -> int:
        """How many runners take chunks at once (a job keeps two chunks in flight each)."""

    async def start(self) -> None: ...
    async def run_chunk(self, watch: Watch, throttle: TokenBucket | None = None) -> None: ...
    async def aclose(self) -> None: ...


class WorkerSettings(msgspec.Struct, frozen=True):
    """What a worker process is told first: the node's settings and its share of them."""

    per_host: int       # its share of the per-host cap
    host_start: int     # its share of the transfers a new host starts with
    mountpaths: list[str]


class _Worker:
    """One worker process and the chunks it runs for us."""

    def __init__(self, proc: asyncio.subprocess.Process,
                 on_strained: Callable[[_Worker, str], None]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.on_strained = on_strained  # it halved its limit of a host: the others should too
        self.outbox = Outbox(proc.stdin.write)
        self.calls: dict[int, tuple[asyncio.Future[Any], Watch]] = {}
        self.items = 0  # items of the chunks it runs: its load
        self.alive = True
        self.stopping = False  # asked to exit: it does so on its own
        self.started = time.monotonic()
        self.ready = asyncio.get_running_loop().create_future()  # its sources are open
        self._ids = itertools.count()
        self._reader = asyncio.create_task(self._read(proc.stdout))

    @classmethod
    async def spawn(cls, config: NodeConfig, settings: WorkerSettings,
                    on_strained: Callable[[_Worker, str], None]) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aisdl.engine.worker", env={**os.environ, **MALLOC_ENV},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        worker = cls(proc, on_strained)
        worker.outbox.put((config, settings))
        # A node is ready when its workers are (no job waits on their imports); a worker that
        # is merely slow to start on a loaded machine is used when it gets there.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(worker.ready), READY_WAIT)
        return worker

    async def run(self, watch: Watch) -> None:
        """Run the chunk; its rows are added to `watch.rows` (also those done before a cancel)."""
        if not self.alive:  # died since it was picked: no reader is left to answer
            raise WorkerLost
        rid = next(self._ids)
        done = asyncio.get_running_loop().create_future()
        self.calls[rid] = (done, watch)
        size = len(watch.chunk.items)
        self.items += size
        self.outbox.put(("chunk", rid, CHUNK_ENCODER.encode(watch.chunk)))
        try:
            try:
                await done
            except asyncio.CancelledError:
                await self._cancel(rid, watch)
                raise
        finally:
            self.items -= size

    async def _cancel(self, rid: int, watch: Watch) -> None:
        """Stop the chunk and wait (bounded) until the worker no longer touches its work files;
        the rows it finished before come back with its answer."""
        if not self.alive:
            return
        released = asyncio.get_running_loop().create_future()
        self.calls[rid] = (released, watch)
        self.outbox.put(("cancel", rid, watch.discard))
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(released, CANCEL_WAIT)

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        try:
            while True:
                for message in await receive(stdout):
                    self._on(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:  # also after a frame we cannot read: that worker is of no further use
            self.alive = False
            if not self.ready.done():
                self.ready.set_result(None)
            # Not after a stop: kill() polls the process first, which can reap it before
            # asyncio's child watcher does (it then logs an "unknown child", exit code 255).
            if self.proc.returncode is None and not self.stopping:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
            for fut, _ in self.calls.values():
                if not fut.done():
                    fut.set_exception(WorkerLost())
            self.calls.clear()

    def _on(self, message: tuple[Any, ...]) -> None:
        kind, rid = message[0], message[1]
        if kind == "ready":
            self.ready.set_result(None)
            return
        if kind == "strained":
            self.on_strained(self, message[2])
            return
        if kind == "progress":
            call = self.calls.get(rid)
            if call:
                progress = PROGRESS_DECODER.decode(message[2])
                call[1].in_flight = {f.index: f for f in progress.in_flight}
                call[1].rows.extend(progress.rows)
                call[1].retried(progress.retries)
            return
        call = self.calls.pop(rid, None)  # "done"
        if call is None:
            return
        fut, watch = call
        result = RESULT_DECODER.decode(message[2])
        watch.rows.extend(result.rows)
        watch.retried(result.retries)
        watch.in_flight = {}
        if message[3]:
            watch.problem = message[3]
            log.error("fetch worker %d: chunk %d of job %s: %s", self.proc.pid, watch.chunk.id,
                      watch.chunk.job, message[3])
        if not fut.done():
            fut.set_result(None)

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.stopping = True
        self.proc.stdin.close()  # the worker exits when its input ends
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await self._reader


class FetchPool:
    def __init__(self, config: NodeConfig, procs: int, layout: Layout) -> None:
        self.config, self.procs, self.layout = config, procs, layout
        self.runner = ChunkRunner.open(config, layout)  # throttled jobs, or no workers
        self.sources = self.runner.fetcher.sources
        self.workers: list[_Worker] = []
        self.waiting = ""
        self.restarts = 0
        per_host = config.max_per_host or config.max_connections
        # The node's connections go to chunks (`budget`); per-host caps and the transfers a
        # new host starts with are shared by the workers (each adapts its own: a chunk runs
        # where its fetches happen).
        n = max(1, procs)
        self.budget = ConnectionBudget(config.max_connections)
        self._settings = WorkerSettings(
            math.ceil(per_host / n), math.ceil(START / n), list(layout.mountpaths))
        self._respawn = asyncio.Lock()
        self._early_deaths = 0

    @property
    def parallelism(self) -> int:
        return max(1, len(self.workers))

    async def start(self) -> None:
        self.workers = list(await asyncio.gather(
            *(_Worker.spawn(self.config, self._settings, self._relay) for _ in range(self.procs))))

    def _relay(self, source: _Worker, host: str) -> None:
        for w in self.workers:
            if w is not source and w.alive:
                w.outbox.put(("back_off", None, host))

    async def run_chunk(self, watch: Watch, throttle: TokenBucket | None = None) -> None:
        """Run a chunk on a worker (in this process when throttled or without workers); its
        rows end up in `watch.rows`. A chunk whose worker died has what the worker placed
        recorded from its journal, and the rest moves to another worker."""
        if throttle is not None or not self.workers:
            await self.runner.run(watch, throttle)
            return
        for _ in range(RESUBMITS):
            worker = await self._pick()
            if worker is None:
                break
            try:
                await worker.run(watch)
                return
            except WorkerLost:
                self._recover(watch, worker.proc.pid)
                if not watch.chunk.items:
                    return
        await self.runner.run(watch)

    def _recover(self, watch: Watch, pid: int) -> None:
        """What the worker reported stays done; the rest moves on (whoever runs it next first
        takes what the journal shows in place: engine/chunks.py)."""
        done = {r.index for r in watch.rows}
        left = [i for i in watch.chunk.items if i.index not in done]
        log.warning("fetch worker %d exited; %d file(s) of its chunk move to another", pid,
                    len(left))
        watch.chunk = msgspec.structs.replace(watch.chunk, items=left)
        watch.in_flight = {}

    async def _pick(self) -> _Worker | None:
        """The worker with the fewest items in flight; a worker that died is replaced, unless
        workers keep dying young (then this process fetches)."""
        if not all(w.alive for w in self.workers):  # rare: the usual pick takes no lock
            async with self._respawn:
                for i, w in enumerate(self.workers):
                    if not w.alive:
                        if time.monotonic() - w.started < YOUNG:
                            self._early_deaths += 1
                        if self._early_deaths >= GIVE_UP_AFTER:
                            log.error("fetch workers keep exiting (see above); "
                                      "fetching in the node process from now on")
                            self.workers = []
                            break
                        self.workers[i] = await _Worker.spawn(self.config, self._settings,
                                                              self._relay)
                        self.restarts += 1
        return min(self.workers, key=lambda w: w.items) if self.workers else None

    async def aclose(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))
        await self.sources.aclose()
