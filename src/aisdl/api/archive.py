"""GET inside a stored archive: one member (`archpath`), or a tar of the members that match
(`archregx` + `archmode`), as AIS serves them (spec/ais-rest-api.md 6.2)."""

from __future__ import annotations

import asyncio
import functools
import itertools

from aiohttp import web

from aisdl.api.streaming import send_body
from aisdl.errors import BadRequest, NotSupported
from aisdl.models import Bucket
from aisdl.store import archive
from aisdl.store.store import Store

_CHUNK = 1 << 20


async def get_from_archive(request: web.Request, store: Store, bck: Bucket,
                           name: str) -> web.StreamResponse:
    q = request.query
    path, label = store.object_file(bck, name), f"{bck.cname}/{name}"
    member, regex, mode = q.get("archpath", ""), q.get("archregx", ""), q.get("archmode", "")
    if member and (regex or mode):
        raise BadRequest("archpath (one file) and archregx/archmode (many files) are mutually"
                         " exclusive")
    if regex and not mode:
        raise BadRequest("archregx needs archmode (one of"
                         f" {', '.join(archive.MATCH_MODES)})")
    if not member and not mode:
        raise BadRequest("archmime needs archpath, or archregx with archmode")
    if request.headers.get("Range"):
        raise NotSupported(f"cannot range-read archived content (range:"
                           f" {request.headers['Range']}, {label}) - operation not supported")
    if member.startswith(name + "/"):  # AIS takes `shard.tar/file` as the listing shows it
        member = member[len(name) + 1:]
    loop = asyncio.get_running_loop()
    kind = await loop.run_in_executor(None, _kind, path, name, q.get("archmime", ""), label)
    if member:
        member = archive.check_member_name(member)
        f, size = await loop.run_in_executor(
            None, functools.partial(archive.open_member, path, kind, member, label))
        try:
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            resp.content_length = size
            await resp.prepare(request)
            await send_body(request, resp, functools.partial(f.read, _CHUNK), size)
        finally:
            await loop.run_in_executor(None, f.close)
        return resp
    chunks = archive.tar_of_matches(path, kind, archive.matcher(regex, mode), label)
    try:
        first = await loop.run_in_executor(None, next, chunks, b"")  # a 404 before any byte is sent
        pieces = itertools.chain([first], chunks)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await resp.prepare(request)
        await send_body(request, resp, lambda: next(pieces, b""))
    finally:  # its open members, also where the client left early
        await loop.run_in_executor(None, chunks.close)
    return resp


def _kind(path: str, name: str, mime: str, label: str) -> str:
    """The archive kind: `archmime`, else the name's extension, else the file's first bytes."""
    kind = archive.kind_by_mime(mime) if mime else archive.kind_by_name(name)
    if kind is None:
        try:
            kind = archive.detect_kind(path)
        except FileNotFoundError:
            kind = None
    if kind is None:
        raise BadRequest(f"{label} is not an archive this node reads (tar, tgz, tar.gz, zip)")
    return kind
