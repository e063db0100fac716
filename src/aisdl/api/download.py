"""/v1/download: start, status and list, abort, remove (AIS wire format)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from aisdl.api.keys import JOBS
from aisdl.api.remote import known_bucket
from aisdl.errors import BadRequest
from aisdl.jobs.request import parse_start_request


async def _admin_body(request: web.Request) -> dict[str, Any]:
    """The admin JSON body; unlike upstream, a missing body means `{}` (list everything)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if body.get("id") and body.get("regex"):
        raise BadRequest(f'regex "{body["regex"]}" and job ID "{body["id"]}" cannot be defined'
                         " together (choose one or the other)")
    return body


async def start(request: web.Request) -> web.Response:
    spec = parse_start_request(await request.read())
    await known_bucket(request.app, spec.bucket)  # a cloud DEST must exist: we cannot make it
    job_id = await request.app[JOBS].create(spec)
    return web.json_response({"id": job_id})


async def status(request: web.Request) -> web.Response:
    body = await _admin_body(request)
    jobs = request.app[JOBS]
    only_active = bool(body.get("only_active_tasks"))
    if body.get("id"):
        return web.json_response(await jobs.status(str(body["id"]), only_active))
    return web.json_response(await jobs.list(str(body.get("regex") or ""), only_active))


async def admin(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in ("abort", "remove"):
        raise BadRequest(f'invalid action "{action}"')
    body = await _admin_body(request)
    if not body.get("id"):
        raise BadRequest("UUID not specified")
    jobs = request.app[JOBS]
    await (jobs.abort if action == "abort" else jobs.remove)(str(body["id"]))
    return web.Response()


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/download", start)
    app.router.add_get("/v1/download", status)
    app.router.add_delete("/v1/download/{action}", admin)
