"""/v1/download: start, status and list, abort, remove (AIS wire format)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from aiohttp import web

from aisdl.api.keys import CONFIG, JOBS
from aisdl.api.remote import known_bucket
from aisdl.errors import BadRequest, parse_json
from aisdl.jobs.request import JobSpec, parse_start_request
from aisdl.sources import hf

# A body this small parses in well under a millisecond; a bigger one (an object list) is parsed
# and validated on a thread, so the node keeps answering while it is (10M names took minutes).
INLINE_BODY = 64 << 10
# Big start requests are read and parsed two at a time: each may cost a few hundred MB.
BIG_REQUESTS = web.AppKey("big_start_requests", asyncio.Semaphore)
ADMIN_FIELDS = {"id": str, "regex": str, "only_active_tasks": bool}
ADMIN_BODY_MAX = 64 << 10


def _no_query(request: web.Request) -> None:
    """/v1/download takes everything in its JSON body: a query parameter would be ignored."""
    if request.query:
        name = next(iter(request.query))
        raise BadRequest(f"unknown query parameter {name!r} for {request.method}"
                         f" {request.path} (this API takes its parameters in the JSON body)")


async def _admin_body(request: web.Request) -> dict[str, Any]:
    """The admin JSON body; unlike upstream, a missing body means `{}` (list everything)."""
    _no_query(request)
    raw = await request.read()
    if len(raw) > ADMIN_BODY_MAX:
        raise BadRequest(f"request body is too large for {request.method} {request.path}:"
                         f" {len(raw)} bytes (at most {ADMIN_BODY_MAX})")
    if not raw.strip():
        return {}
    body = parse_json(raw, "request body")
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    for key, value in body.items():
        kind = ADMIN_FIELDS.get(key)
        if kind is None:
            raise BadRequest(f"unknown field {key[:100]!r} in the request body (expected some"
                             f" of: {', '.join(ADMIN_FIELDS)})")
        if value is not None and not isinstance(value, kind):
            raise BadRequest(f"'{key}' must be a {'string' if kind is str else 'boolean'}")
    if body.get("id") and body.get("regex"):
        raise BadRequest(f'regex "{body["regex"]}" and job ID "{body["id"]}" cannot be defined'
                         " together (choose one or the other)")
    return body


async def _start_request(request: web.Request) -> JobSpec:
    max_connections = request.app[CONFIG].max_connections
    size = request.content_length
    if size is not None and size <= INLINE_BODY:
        return parse_start_request(await request.read(), max_connections)
    async with request.app[BIG_REQUESTS]:
        raw = await request.read()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, parse_start_request, raw, max_connections)


async def start(request: web.Request) -> web.Response:
    _no_query(request)
    spec = await _start_request(request)
    await known_bucket(request.app, spec.bucket)  # a cloud DEST must exist: we cannot make it
    if spec.hf is not None:
        spec = await _hub_checked(request, spec)
    job_id = await request.app[JOBS].create(spec)
    return web.json_response({"id": job_id})


async def _hub_checked(request: web.Request, spec: JobSpec) -> JobSpec:
    """A Hugging Face job asks the Hub (HF_ENDPOINT, read now) before it starts: the commit its
    revision names, and whether the token may read the repository. A missing or gated
    repository, a bad revision or a refused token is this request's one error."""
    assert spec.hf is not None
    repo = replace(spec.hf, endpoint=hf.hub_endpoint())
    allow_private = request.app[CONFIG].may_fetch_private
    async with hf.open_session(allow_private) as session:
        repo = await hf.prepare(repo, spec.hf_token or hf.hub_token(), session, allow_private)
    return replace(spec, hf=repo)


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
        raise BadRequest(f'invalid action "{action[:100]}"')
    body = await _admin_body(request)
    if not body.get("id"):
        raise BadRequest("UUID not specified")
    jobs = request.app[JOBS]
    await (jobs.abort if action == "abort" else jobs.remove)(str(body["id"]))
    return web.Response()


def setup(app: web.Application) -> None:
    app[BIG_REQUESTS] = asyncio.Semaphore(2)
    app.router.add_post("/v1/download", start)
    app.router.add_get("/v1/download", status)
    app.router.add_delete("/v1/download/{action}", admin)
