"""A fetch worker process: the node's chunks run on an event loop (and a core) of its own.
Chunks arrive on stdin; their rows and progress leave on the pipe that was stdout. When the node
goes away (stdin closes, even after a kill -9) the worker exits at once: whatever it was writing
stays as a partial work file, which the node resumes from."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys
from typing import Any

from aisdl.engine.chunks import (
    CHUNK_DECODER,
    CHUNK_ENCODER,
    ChunkProgress,
    ChunkResult,
    ChunkRunner,
    Watch,
    describe,
)
from aisdl.engine.ipc import Outbox, receive
from aisdl.node import setup_logging
from aisdl.store.layout import Layout

log = logging.getLogger("aisdl.worker")
PROGRESS_EVERY = 0.25  # seconds between progress reports of a chunk's transfers


class Worker:
    """Runs the node's chunks; reports each chunk's transfers in flight every 0.25 s and its
    rows once, when it ends or is cancelled."""

    def __init__(self, runner: ChunkRunner, outbox: Outbox) -> None:
        self.runner, self.outbox = runner, outbox
        self.tasks: dict[int, tuple[asyncio.Task[None], Watch]] = {}

    def handle(self, message: tuple[Any, ...]) -> None:
        kind, rid = message[0], message[1]
        if kind == "chunk":
            watch = Watch(CHUNK_DECODER.decode(message[2]))
            self.tasks[rid] = (asyncio.create_task(self._run(rid, watch)), watch)
        elif kind == "back_off":  # another worker saw this host overloaded
            self.runner.slots.back_off_host(message[2])
        elif kind == "cancel" and rid in self.tasks:
            task, watch = self.tasks[rid]
            watch.discard = message[2]
            task.cancel()

    async def _run(self, rid: int, watch: Watch) -> None:
        problem = ""
        try:
            await self.runner.run(watch)
        except asyncio.CancelledError:
            pass
        except Exception as err:  # a bug: the node makes the chunk's missing rows errors
            log.exception("chunk %d of job %s", watch.chunk.id, watch.chunk.job)
            problem = f"internal error: {describe(err)}"
        finally:
            del self.tasks[rid]
        result = ChunkResult(watch.chunk.id, watch.rows[watch.sent:], watch.unreported_retries())
        self.outbox.put(("done", rid, CHUNK_ENCODER.encode(result), problem))

    async def report_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            for rid, (_, watch) in self.tasks.items():
                if watch.changed:
                    watch.changed = False
                    rows, watch.sent = watch.rows[watch.sent:], len(watch.rows)
                    progress = ChunkProgress(watch.chunk.id, list(watch.in_flight.values()),
                                             rows, watch.unreported_retries())
                    self.outbox.put(("progress", rid, CHUNK_ENCODER.encode(progress)))


async def serve(channel: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(channel, "wb"))
    outbox = Outbox(transport.write)
    first = await receive(reader)
    config, settings = first[0]  # the node's settings come first, chunks may follow
    runner = ChunkRunner.open(config, Layout(settings.mountpaths), settings.per_host,
                              settings.host_start)
    runner.slots.on_back_off = lambda host: outbox.put(("strained", None, host))
    worker = Worker(runner, outbox)
    outbox.put(("ready", None))
    ticker = asyncio.create_task(worker.report_progress())
    messages = first[1:]
    try:
        while True:
            for message in messages:
                worker.handle(message)
            messages = await receive(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        os._exit(0)  # the node has gone or asked us to stop: nothing to clean up for it
    finally:
        ticker.cancel()


def main() -> None:
    mode = os.fstat(0).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        sys.exit("aisdl.engine.worker is started by the node (`ais serve`), not by hand")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C stops the node; the node stops us
    channel = os.dup(1)
    os.dup2(2, 1)  # a stray print lands in the node's log, never inside a frame
    setup_logging()
    asyncio.run(serve(channel))


if __name__ == "__main__":
    main()
