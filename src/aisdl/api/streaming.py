"""A response body sent piece by piece to a client that may leave before its end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)


async def send_body(request: web.Request, resp: web.StreamResponse,
                    next_piece: Callable[[], bytes], size: int | None = None) -> None:
    """Write a prepared response's body, each piece read off the event loop (`next_piece`
    blocks; b"" ends the body), then its end. A client that closes the connection first made
    its own choice, not an error of the node's: one INFO line. aiohttp words that as a reset,
    a broken pipe, or a plain "Connection lost" when the writes were waiting for the client to
    read; all are ConnectionError."""
    loop = asyncio.get_running_loop()
    sent = 0
    try:
        while data := await loop.run_in_executor(None, next_piece):
            await resp.write(data)
            sent += len(data)
        await resp.write_eof()
    except ConnectionError:
        of = "" if size is None else f" of {size}"
        log.info("%s %s: the client closed the connection after %d%s bytes",
                 request.method, request.path, sent, of)
