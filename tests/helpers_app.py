"""A node's web app served in-process, on its own event loop in a thread, on 127.0.0.1.

Synchronous clients (the `aistore` SDK, `requests`, `aisdl.client`) can then call it from the
test thread. It is the real `create_app`, so what these tests see is what a node serves.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from aisdl.api.app import create_app
from aisdl.config import NodeConfig


class InProcessNode:
    def __init__(self, home: Path, mountpaths: tuple[Path, ...] = ()) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound now: the port cannot be taken by another
        port = self.sock.getsockname()[1]
        self.config = NodeConfig(home=home, port=port, mountpaths=mountpaths)
        self.endpoint = self.config.endpoint
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="node", daemon=True)

    def start(self) -> InProcessNode:
        self._thread.start()
        if not self._ready.wait(20) or self._error:
            raise RuntimeError(f"in-process node did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        runner = web.AppRunner(create_app(self.config), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, self.sock).start()
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


@contextmanager
def running_node(home: Path, mountpaths: tuple[Path, ...] = ()) -> Iterator[InProcessNode]:
    node = InProcessNode(home, mountpaths).start()
    try:
        yield node
    finally:
        node.stop()
