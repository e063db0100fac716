"""A fetch worker process: the node's Fetcher on an event loop (and a core) of its own. Requests
arrive on stdin; outcomes and progress leave on the pipe that was stdout. When the node goes
away (stdin closes, even after a kill -9) the worker exits at once: whatever it was writing
stays as a partial work file, which the node resumes from."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable
from typing import Any

from aisdl.engine.fetch import Fetcher, FetchRequest
from aisdl.engine.ipc import Outbox, receive
from aisdl.errors import SourceError
from aisdl.node import setup_logging
from aisdl.sources.registry import Sources

log = logging.getLogger("aisdl.worker")
PROGRESS_EVERY = 0.25  # seconds between progress reports of long transfers


class Progress:
    """FetchEvents of one transfer: progress reported to the node in batches, signs of an
    overloaded source at once (`tell`)."""

    def __init__(self, tell: Callable[[], None]) -> None:
        self.downloaded, self.total, self.changed = 0, 0, False
        self.strained = tell

    def started(self, offset: int, total: int | None) -> None:
        self.downloaded, self.total, self.changed = offset, total or 0, True

    def advanced(self, nbytes: int) -> None:
        self.downloaded += nbytes
        self.changed = True


class Worker:
    def __init__(self, fetcher: Fetcher, outbox: Outbox) -> None:
        self.fetcher, self.outbox = fetcher, outbox
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.progress: dict[int, Progress] = {}

    def handle(self, message: tuple[Any, ...]) -> None:
        kind, rid = message[0], message[1]
        if kind == "fetch":
            self.tasks[rid] = asyncio.create_task(self._fetch(rid, message[2]))
        elif kind == "cancel" and rid in self.tasks:
            self.tasks[rid].cancel()

    async def _fetch(self, rid: int, req: FetchRequest) -> None:
        events = self.progress[rid] = Progress(lambda: self.outbox.put(("strained", rid)))
        outcome: tuple[Any, ...]
        try:
            outcome = ("done", await self.fetcher.fetch(req, events))
        except asyncio.CancelledError:
            outcome = ("cancelled",)
        except SourceError as err:
            outcome = ("source_error", err.message, err.transient, err.retry_after)
        except OSError as err:
            outcome = ("os_error", err.errno, err.strerror, err.filename)
        except Exception as err:  # a bug: the node records one failed file, the log says why
            log.exception("fetching %s", req.link)
            outcome = ("source_error", f"internal error: {err!r}", False, None)
        finally:
            del self.tasks[rid], self.progress[rid]
        self.outbox.put(("result", rid, outcome, events.downloaded, events.total))

    async def report_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            for rid, p in self.progress.items():
                if p.changed:
                    p.changed = False
                    self.outbox.put(("progress", rid, p.downloaded, p.total))


async def serve(channel: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(channel, "wb"))
    outbox = Outbox(transport.write)
    first = await receive(reader)
    config, connections = first[0]  # the node's settings come first, requests may follow
    worker = Worker(Fetcher(Sources.open(config, connections), config.retry), outbox)
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
