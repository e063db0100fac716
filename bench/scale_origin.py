#!/usr/bin/env python3
"""The source server of bench/scale.py: `/f/<i>` answers SIZE bytes after sleeping LATENCY.

    .venv/bin/python bench/scale_origin.py --host 10.77.0.1 --port P --size 1048576 --latency 0.02

The body of `/f/<i>` is `content(i, SIZE)`: the file number, zero-padded to 16 bytes, then the
same random block (seeded, so the harness can check any object without a manifest). The block
is built once and written from memory, so the per-request cost is a sleep timer, a header and
two writes: the origin stays cheap on a 2-core machine that also runs the node and the workers.
The per-request sleep stands in for a remote server's latency (this kernel has no netem).
Prints `ready` on stdout once it accepts connections; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
from typing import Any

from aiohttp import web

HEAD = 16   # bytes of the per-file prefix (the file number)


def block(size: int) -> bytes:
    """The shared random tail of every file (fixed seed: the harness recomputes it)."""
    return random.Random(0x5CA1E).randbytes(max(0, size - HEAD))


def content(i: int, size: int, tail: bytes | None = None) -> bytes:
    """The full body of file `i` (the harness's check; the server never joins it)."""
    head = f"{i:0{HEAD}d}".encode()[-HEAD:]
    return (head + (tail if tail is not None else block(size)))[:size]


def make_app(size: int, latency: float) -> web.Application:
    tail = memoryview(block(size))

    async def get_file(request: web.Request) -> web.StreamResponse:
        try:
            i = int(request.match_info["i"])
        except ValueError:
            raise web.HTTPNotFound() from None
        if latency > 0:
            await asyncio.sleep(latency)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        if request.method != "HEAD":
            await resp.write(f"{i:0{HEAD}d}".encode()[-HEAD:][:size])
            if len(tail):
                await resp.write(tail)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/f/{i}", get_file)   # add_get also answers HEAD
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve `app`, print `ready` once it accepts connections, stop on SIGTERM or SIGINT."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


def run_server(app: web.Application, host: str, port: int) -> None:
    """`serve` on uvloop where it is installed (a cheaper origin), else asyncio."""
    run: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop
        run = uvloop.run
    run(serve(app, host, port))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--size", type=int, required=True, help="bytes of every file")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds slept per request")
    args = ap.parse_args()
    run_server(make_app(args.size, args.latency), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
