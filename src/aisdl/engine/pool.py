"""Fetching on worker processes, so that a node uses more than one core: one event loop per
worker, each with its share of the node's connections. The job runner sees the same interface
as a Fetcher. Throttled requests (their token bucket lives here) and nodes configured with no
workers fetch in this process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Hashable
from typing import Any

from aisdl.config import NodeConfig
from aisdl.engine.fetch import Fetched, Fetcher, FetchEvents, FetchRequest, TaskEvents
from aisdl.engine.hostlimit import host_of
from aisdl.engine.ipc import Outbox, receive
from aisdl.engine.limits import FairSlots, Ticket
from aisdl.errors import SourceError
from aisdl.sources.registry import Sources

log = logging.getLogger("aisdl.engine")
CANCEL_WAIT = 5.0  # seconds a cancelled fetch waits for its worker to let go of the work file
RESUBMITS = 2      # times a fetch moves to a new worker after its worker died
YOUNG = 10.0       # seconds: a worker that dies this young counts towards giving up on workers
GIVE_UP_AFTER = 3
READY_WAIT = 30.0  # seconds a new worker gets to open its sources before the node goes on
# glibc malloc: socket reads allocate 256 KiB buffers; with the default thresholds each one is
# a fresh mmap (page faults and zeroing in the kernel). Keeping them on the heap cut a worker's
# page faults on 4 x 512 MiB from ~70,000 to ~11,000 and its system time by ~15%.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 20), "MALLOC_TRIM_THRESHOLD_": str(32 << 20)}


class WorkerLost(Exception):
    pass


class _Worker:
    """One worker process and the fetches it runs for us."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.outbox = Outbox(proc.stdin.write)
        self.calls: dict[int, tuple[asyncio.Future[Any], FetchEvents]] = {}
        self.alive = True
        self.stopping = False  # asked to exit: it does so on its own
        self.started = time.monotonic()
        self.ready = asyncio.get_running_loop().create_future()  # its sources are open
        self._ids = itertools.count()
        self._reader = asyncio.create_task(self._read(proc.stdout))

    @classmethod
    async def spawn(cls, config: NodeConfig, connections: int) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aisdl.engine.worker", env={**os.environ, **MALLOC_ENV},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        worker = cls(proc)
        worker.outbox.put((config, connections))
        # A node is ready when its workers are (no job waits on their imports); a worker that
        # is merely slow to start on a loaded machine is used when it gets there.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(worker.ready), READY_WAIT)
        return worker

    async def fetch(self, req: FetchRequest, events: FetchEvents) -> Fetched:
        if not self.alive:  # died since it was picked: no reader is left to answer
            raise WorkerLost
        rid = next(self._ids)
        done = asyncio.get_running_loop().create_future()
        self.calls[rid] = (done, events)
        self.outbox.put(("fetch", rid, req))
        try:
            outcome = await done
        except asyncio.CancelledError:
            await self._cancel(rid, events)
            raise
        kind, *args = outcome
        if kind == "done":
            fetched: Fetched = args[0]
            return fetched
        if kind == "source_error":
            raise SourceError(args[0], transient=args[1], retry_after=args[2])
        if kind == "os_error":
            raise OSError(*args)
        raise asyncio.CancelledError  # "cancelled": only ever after our own cancel

    async def _cancel(self, rid: int, events: FetchEvents) -> None:
        """Stop the worker's transfer and wait until it no longer touches the work file."""
        if not self.alive:
            return
        released = asyncio.get_running_loop().create_future()
        self.calls[rid] = (released, events)
        self.outbox.put(("cancel", rid))
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
        if kind == "progress":
            call = self.calls.get(rid)
            if call:
                call[1].started(message[2], message[3])  # sets the absolute position
            return
        if kind == "strained":
            call = self.calls.get(rid)
            if call:
                call[1].strained()
            return
        call = self.calls.pop(rid, None)
        if call is None:  # a cancelled fetch that stopped waiting for its worker
            return
        fut, events = call
        events.started(message[3], message[4])
        if not fut.done():
            fut.set_result(message[2])

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


class _Watched:
    """The events of one fetch, passed on; a sign of overload goes to its host's limit at once
    (not when the fetch ends after its retries: by then the limit would have grown on the
    successes of others)."""

    def __init__(self, events: TaskEvents, slots: FairSlots, ticket: Ticket) -> None:
        self.events, self.slots, self.ticket = events, slots, ticket

    def started(self, offset: int, total: int | None) -> None:
        self.events.started(offset, total)

    def advanced(self, nbytes: int) -> None:
        self.events.advanced(nbytes)

    def strained(self) -> None:
        self.slots.strained(self.ticket)


class FetchPool:
    def __init__(self, config: NodeConfig, procs: int) -> None:
        self.config, self.procs = config, procs
        self.local = Fetcher(Sources.open(config, config.max_connections), config.retry)
        self.sources = self.local.sources
        self.workers: list[_Worker] = []
        self._share = math.ceil(config.max_connections / max(1, procs))
        self.slots = FairSlots(config.max_connections,
                               config.max_per_host or config.max_connections)
        self._respawn = asyncio.Lock()
        self._early_deaths = 0

    async def start(self) -> None:
        self.workers = list(await asyncio.gather(
            *(_Worker.spawn(self.config, self._share) for _ in range(self.procs))))

    async def fetch(self, req: FetchRequest, events: TaskEvents,
                    job: Hashable = None) -> Fetched:
        """Fetch for `job` once it has its turn. Every fetch of the node passes here, wherever
        it runs: one budget of --max-conns for all jobs, workers and the node's own pool (so
        that few transfers wait inside a worker's connection pool), shared fairly by jobs, and
        an adaptive limit per source host."""
        async with self.slots.take(job, host_of(req.link)) as ticket:
            try:
                got = await self._fetch(req, _Watched(events, self.slots, ticket))
            except SourceError:  # the host answered (a 404 too): it kept up, or said it did not
                ticket.answered()
                raise
            ticket.answered()
            return got

    async def _fetch(self, req: FetchRequest, events: FetchEvents) -> Fetched:
        if req.throttle is not None or not self.workers:
            return await self.local.fetch(req, events)
        for _ in range(RESUBMITS):
            worker = await self._pick()
            if worker is None:
                break
            try:
                return await worker.fetch(req, events)
            except WorkerLost:
                log.warning("fetch worker %d exited; %s moves to another",
                            worker.proc.pid, req.link)
        return await self.local.fetch(req, events)

    async def _pick(self) -> _Worker | None:
        """The worker with the fewest fetches in flight; a worker that died is replaced, unless
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
                        self.workers[i] = await _Worker.spawn(self.config, self._share)
        return min(self.workers, key=lambda w: len(w.calls)) if self.workers else None

    async def aclose(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))
        await self.sources.aclose()
