"""One place that turns domain errors into AIS error JSON; handlers never build error bodies."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from aisdl.api.accepted import refuse_unsupported
from aisdl.api.keys import NODE_ID
from aisdl.errors import AisdlError

log = logging.getLogger("aisdl.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The most a request body read whole may hold (aiohttp's `client_max_size`): a start request
# with a million links fits; object PUTs stream their bodies and are not bound by it.
MAX_REQUEST_BODY = 64 << 20


def error_response(request: web.Request, status: int, message: str,
                   tcode: str = "") -> web.Response:
    body: dict[str, object] = {}
    if tcode:
        body["tcode"] = tcode
    body.update(
        message=message, method=request.method, url_path=request.path,
        remote_addr=request.remote or "", caller="",
        node=f"t[{request.app[NODE_ID]}]", status=status,
    )
    text = json.dumps(body)
    headers = {"X-Content-Type-Options": "nosniff"}
    if request.method == "HEAD":
        # HEAD has no body: AIS carries the error in a header the Go client reads.
        headers["Hdr-Error"] = text
        return web.Response(status=status, headers=headers)
    return web.Response(status=status, text=text, content_type="application/json",
                        headers=headers)


@web.middleware
async def ais_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AisdlError as exc:
        return error_response(request, exc.status, exc.message, exc.tcode)
    except web.HTTPRequestEntityTooLarge:
        return error_response(request, 413, f"request body is too large: more than"
                              f" {MAX_REQUEST_BODY >> 20} MiB (download a longer object list"
                              " as several jobs)")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request, exc.status, exc.reason)
    except json.JSONDecodeError as exc:
        return error_response(request, 400, f"invalid JSON in request body: {exc}")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(request, 500, "internal server error (see the node log)")


@web.middleware
async def only_what_is_carried_out(request: web.Request,
                                   handler: Handler) -> web.StreamResponse:
    """A query parameter, action or `Ais-*` header its route does not carry out is refused
    before the handler runs (api/accepted.py); inside `ais_errors`, which words the refusal."""
    await refuse_unsupported(request)
    return await handler(request)
