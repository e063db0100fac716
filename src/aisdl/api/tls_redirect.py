"""Object PUTs over HTTPS: the 307 that AIS's proxy answers first, which AIStore's SDK waits for.

Over `https://` the SDK sends an object PUT's headers alone (`Content-Length: N`, no body) and
sends the body only to the `Location` of a 301/307; a node that read the body instead would
wait for bytes that never come (docs: the spec's "Redirects"). So a node serving HTTPS answers
every object PUT without the proxy's marker (`pid`) with a 307 to the same URL plus the marker,
reading no body, and serves the marked URL as an ordinary PUT."""

from __future__ import annotations

import time

from aiohttp import web

from aisdl.api.keys import NODE_ID
from aisdl.api.middleware import Handler

MARKS = ("pid", "utm")  # what AIS's proxy adds to the URL it redirects to


@web.middleware
async def redirect_object_puts(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "PUT" or not request.path.startswith("/v1/objects/"):
        return await handler(request)
    if "pid" in request.query:  # the redirected leg: the marks are ours, not the handler's
        unmarked = [(k, v) for k, v in request.query.items() if k not in MARKS]
        return await handler(request.clone(rel_url=request.rel_url.with_query(unmarked)))
    marked = [*request.query.items(), ("pid", f"p{request.app[NODE_ID]}"),
              ("utm", str(time.time_ns()))]
    resp = web.Response(status=307, headers={"Location": str(request.url.with_query(marked))})
    resp.force_close()  # the body (if the client sent one anyway) is not read
    return resp
