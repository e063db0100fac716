"""The node process: settings from flags and environment, logging, the web app, a clean stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

from aisdl.config import NodeConfig

if TYPE_CHECKING:  # the web stack loads only in the node process, not in every `ais` command
    from aiohttp import web


def setup_logging() -> None:
    """The node's log on stderr; its fetch workers write the same lines into the same log."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_node(config: NodeConfig) -> None:
    """Serve until SIGTERM/SIGINT; the app's cleanup contexts stop jobs and close the database."""
    from aisdl.api.app import create_app

    config.home.mkdir(parents=True, exist_ok=True)
    setup_logging()
    runner = asyncio.run
    if config.event_loop == "uvloop":
        import uvloop

        runner = uvloop.run
    try:
        runner(_serve(create_app(config), config))
    except KeyboardInterrupt:
        pass


async def _serve(app: web.Application, config: NodeConfig) -> None:
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    logging.getLogger("aisdl").info(
        "node listening on %s (home %s)", config.endpoint, config.home)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
