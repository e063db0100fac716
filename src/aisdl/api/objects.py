"""`/v1/objects/<bucket>/<name>`: PUT (plain, copy `object_to`, append and flush), GET (ranges),
HEAD (v1 and v2), DELETE, PATCH custom.

The object name is the rest of the path after the bucket, decoded exactly once by the router
(`%2B` → `+`, a literal `+` stays `+`, `%2F` → `/`), then validated.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import re
from collections.abc import AsyncIterator
from typing import IO, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from aisdl.api.accepted import is_true
from aisdl.api.archive import get_from_archive
from aisdl.api.buckets import read_action, request_bucket, unknown_action
from aisdl.api.keys import CONFIG, NODE_ID, STORE
from aisdl.api.middleware import error_response
from aisdl.api.streaming import send_body
from aisdl.errors import BadRequest, NotSupported
from aisdl.models import Bucket, ObjectAttrs
from aisdl.store.paths import check_object_name
from aisdl.store.store import Store

READ_CHUNK = 1 << 20
# PUT's query parameters that make it something other than a plain PUT (AIS's names)
QPARAM_OBJ_TO = "object_to"
QPARAM_APPEND_TYPE = "append_type"
QPARAM_APPEND_HANDLE = "append_handle"
APPEND_TYPES = ("append", "flush")
HDR_APPEND_HANDLE = "Ais-Append-Handle"
HEAD_V2_PROPS = frozenset((
    "name", "size", "checksum", "atime", "version", "custom", "location", "copies", "ec",
    "chunked", "last-modified", "etag",
))


def setup(app: web.Application) -> None:
    path = "/v1/objects/{bucket}/{name:.*}"
    r = app.router
    r.add_route("PUT", path, put_object)
    r.add_route("GET", path, get_object)
    r.add_route("HEAD", path, head_object)
    r.add_route("DELETE", path, delete_object)
    r.add_route("PATCH", path, patch_object)


def _target(request: web.Request) -> tuple[Store, Bucket, str]:
    bck = request_bucket(request)
    return request.app[STORE], bck, check_object_name(request.match_info["name"])


async def _attrs_or_404(store: Store, bck: Bucket, name: str) -> ObjectAttrs:
    attrs = await store.lookup(bck, name)
    if attrs is None:
        raise store.object_not_found(bck, name)
    return attrs



# -- PUT -----------------------------------------------------------------------------------------
async def put_object(request: web.Request) -> web.Response:
    store, bck, name = _target(request)
    store.require_bucket(bck)  # fail before reading a body that has nowhere to go
    query = request.query
    if QPARAM_OBJ_TO in query:
        return await _copy_object(request, store, bck, name)
    if QPARAM_APPEND_TYPE in query or QPARAM_APPEND_HANDLE in query:
        return await _append_object(request, store, bck, name)
    hdrs = request.headers
    custom = parse_custom_md(hdrs.getall("Ais-Custom-Md", []))
    attrs = await store.put_object(bck, name, _body(request), custom=custom,
                                   expected_size=request.content_length, cksum=_cksum(request))
    return web.Response(headers=_base_headers(attrs))


def _cksum(request: web.Request) -> tuple[str, str] | None:
    hdrs = request.headers
    if hdrs.get("Ais-Checksum-Type"):
        return hdrs["Ais-Checksum-Type"], hdrs.get("Ais-Checksum-Value", "")
    return None


async def _refuse_body(request: web.Request, what: str) -> None:
    """A request whose body would be ignored is refused, not half-done."""
    if await request.content.read(1):
        raise BadRequest(f"{what} takes no request body")


async def _copy_object(request: web.Request, store: Store, bck: Bucket,
                       name: str) -> web.Response:
    """`PUT ?object_to=provider/@#/bucket/name`: copy the object (the SDK's `Object.copy`)."""
    query = request.query
    mixed = [p for p in (QPARAM_APPEND_TYPE, QPARAM_APPEND_HANDLE) if p in query]
    if mixed:
        raise BadRequest(f"{QPARAM_OBJ_TO} (copy) and {mixed[0]} (append) exclude each other")
    for flag in ("latest-ver", "synchronize"):
        value = query.get(flag, "false").lower()
        if value not in ("", "true", "false"):
            raise BadRequest(f"invalid {flag}={query[flag]!r} (expected true or false)")
        if value == "true":
            raise NotSupported(f"copy with {flag}=true (from the latest remote version) is not"
                               " supported by this node")
    etl = sorted(p for p in query if p.startswith("etl_"))
    if etl:
        raise NotSupported(f"copy with a transformation ({etl[0]}) is not supported by this"
                           " node")
    ignored = [h for h in ("Ais-Custom-Md", "Ais-Checksum-Type", "Ais-Checksum-Value")
               if h in request.headers]
    if ignored:
        raise BadRequest(f"a copy keeps the source's metadata and checksum; {ignored[0]} does"
                         " not apply to it")
    dst_bck, dst_name = parse_uname(query[QPARAM_OBJ_TO])
    await _refuse_body(request, "a copy")
    attrs = await store.copy_object(bck, name, dst_bck, dst_name)
    return web.Response(headers=_base_headers(attrs))


def parse_uname(text: str) -> tuple[Bucket, str]:
    """An object's AIS "uname", `provider/@#/bucket/name` (`@#`: the global namespace)."""
    provider, _, rest = text.partition("/")
    namespace, _, rest = rest.partition("/")
    bucket, _, obj = rest.partition("/")
    if not provider or not bucket or not obj:
        raise BadRequest(f"invalid {QPARAM_OBJ_TO}={text[:200]!r}: expected"
                         " provider/@#/bucket/object")
    if namespace != "@#":
        raise BadRequest(f"invalid {QPARAM_OBJ_TO}={text[:200]!r}: bucket namespaces are not"
                         " supported by this node (expected the global namespace '@#')")
    return Bucket.of(bucket, provider), check_object_name(obj)


async def _append_object(request: web.Request, store: Store, bck: Bucket,
                         name: str) -> web.Response:
    """`PUT ?append_type=append|flush&append_handle=H`: the SDK's `append_content` and file
    writer. An append answers the handle to go on with in `Ais-Append-Handle`; its bytes become
    the object only at the flush."""
    query = request.query
    kind = query.get(QPARAM_APPEND_TYPE)
    if kind is None:
        raise BadRequest(f"{QPARAM_APPEND_HANDLE} without {QPARAM_APPEND_TYPE}")
    if kind not in APPEND_TYPES:
        raise BadRequest(f"invalid {QPARAM_APPEND_TYPE}={kind[:64]!r} (expected one of"
                         f" {', '.join(APPEND_TYPES)})")
    if request.headers.getall("Ais-Custom-Md", []):
        raise BadRequest("an append or flush keeps no custom metadata (Ais-Custom-Md):"
                         " set it after the flush")
    handle = query.get(QPARAM_APPEND_HANDLE, "")
    cksum = _cksum(request)
    if kind == "append":
        if cksum is not None and cksum[0].lower() != "none":
            raise BadRequest("an append takes no checksum: send the whole object's checksum"
                             " with its flush")
        limit = request.app[CONFIG].max_object_size
        handle = await store.append(bck, name, handle, _body(request), limit)
        return web.Response(headers={HDR_APPEND_HANDLE: handle})
    await _refuse_body(request, "a flush")
    attrs = await store.flush_append(bck, name, handle, cksum)
    return web.Response(headers=_base_headers(attrs))


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The request body; a body cut short by the client becomes a 400, so nothing commits."""
    try:
        async for chunk in request.content.iter_any():
            yield chunk
    except (aiohttp.ClientPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise BadRequest(f"request body ended early: {exc}") from exc


def parse_custom_md(values: list[str]) -> dict[str, str]:
    """`Ais-Custom-Md: k=v` headers (repeatable; a client may also join them with `, `)."""
    out: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            key, sep, val = item.strip().partition("=")
            if not key or not sep:
                raise BadRequest(f"invalid Ais-Custom-Md entry {item.strip()!r} (expected k=v)")
            out[key] = val
    return out


# -- GET -----------------------------------------------------------------------------------------
async def get_object(request: web.Request) -> web.StreamResponse:
    store, bck, name = _target(request)
    attrs = await _attrs_or_404(store, bck, name)
    if any(request.query.get(k) for k in ("archpath", "archregx", "archmode", "archmime")):
        return await get_from_archive(request, store, bck, name)
    loop = asyncio.get_running_loop()
    try:
        f = await loop.run_in_executor(None, open, store.object_path(bck, name), "rb")
    except FileNotFoundError:
        raise store.object_not_found(bck, name) from None  # deleted since the lookup
    try:
        size = (await loop.run_in_executor(None, os.fstat, f.fileno())).st_size
        return await _send_file(request, f, size, attrs)
    finally:
        await loop.run_in_executor(None, f.close)


async def _send_file(request: web.Request, f: IO[bytes], size: int,
                     attrs: ObjectAttrs) -> web.StreamResponse:
    headers = _base_headers(attrs)
    headers["Content-Type"] = "application/octet-stream"
    headers["Accept-Ranges"] = "bytes"
    status, start, end = 200, 0, size - 1
    range_header = request.headers.get("Range")
    if range_header:
        parsed = parse_range(range_header, size)
        if parsed is None:
            return _not_satisfiable(request, range_header, size)
        status, (start, end) = 206, parsed
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = left = end - start + 1
    await resp.prepare(request)
    await asyncio.get_running_loop().run_in_executor(None, f.seek, start)

    def next_piece() -> bytes:  # b"" at the end, or early where the file shrank under us:
        nonlocal left           # the client sees a short body, not garbage
        data = f.read(min(READ_CHUNK, left))
        left -= len(data)
        return data

    await send_body(request, resp, next_piece, resp.content_length)
    return resp


def _not_satisfiable(request: web.Request, range_header: str, size: int) -> web.Response:
    resp = error_response(request, 416, f"invalid range {range_header!r} for an object of"
                          f" {size} bytes (one satisfiable range is supported)")
    resp.headers["Content-Range"] = f"bytes */{size}"
    return resp


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b` / `a-` / `-n` range → (first, last) inclusive; None if unsatisfiable,
    malformed or multiple."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep or not (first + last).isdigit() or not (first.isdigit() or last.isdigit()):
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start < size and start <= end else None


# -- HEAD ----------------------------------------------------------------------------------------
async def head_object(request: web.Request) -> web.Response:
    store, bck, name = _target(request)
    attrs = await _attrs_or_404(store, bck, name)
    location = f"t[{request.app[NODE_ID]}]:{store.mountpath(bck, name)}"
    if "props" in request.query:
        headers = _head_v2(request.query["props"], attrs, location)
    else:
        headers = _base_headers(attrs)
        headers.update({
            "Ais-Bucket-Name": bck.name, "Ais-Bucket-Provider": bck.provider, "Ais-Name": name,
            "Ais-Location": location, "Ais-Mirror-Copies": "1",
            "Ais-Mirror-Paths": str(store.mountpath(bck, name)), "Ais-Present": "true",
        })
    headers["Content-Length"] = str(attrs.size)
    return web.Response(headers=headers)


def _head_v2(text: str, attrs: ObjectAttrs, location: str) -> CIMultiDict[str]:
    """HEAD v2: only the asked-for items, plus `Content-Length` and `Ais-Present` always."""
    items = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in items if p not in HEAD_V2_PROPS]
    if bad:
        raise BadRequest(f"invalid property {bad[0]!r} in props={text!r}")
    base = _base_headers(attrs)
    h: CIMultiDict[str] = CIMultiDict({"Ais-Present": "true"})
    for item in items:
        if item == "checksum":
            h["Ais-Checksum-Type"], h["Ais-Checksum-Value"] = attrs.cksum_type, attrs.cksum
        elif item in ("atime", "version") and f"Ais-{item.capitalize()}" in base:
            h[f"Ais-{item.capitalize()}"] = base[f"Ais-{item.capitalize()}"]
        elif item == "custom":
            for v in base.getall("Ais-Custom-Md", []):
                h.add("Ais-Custom-Md", v)
        elif item == "location":
            h["Ais-Location"] = location
        elif item == "copies":
            h["Ais-Mirror-Copies"], h["Ais-Mirror-Paths"] = "1", location.split(":", 1)[1]
        elif item == "last-modified":
            h["Last-Modified"] = email.utils.formatdate(attrs.atime_ns / 1e9, usegmt=True)
        elif item == "etag":
            h["ETag"] = '"' + (attrs.custom.get("ETag") or attrs.cksum).strip('"') + '"'
    return h


def _base_headers(attrs: ObjectAttrs) -> CIMultiDict[str]:
    """What PUT, GET and HEAD v1 share: checksum, atime (ns), version, custom metadata."""
    h: CIMultiDict[str] = CIMultiDict()
    if attrs.cksum:
        h["Ais-Checksum-Type"], h["Ais-Checksum-Value"] = attrs.cksum_type, attrs.cksum
    h["Ais-Atime"] = str(attrs.atime_ns)
    if attrs.version:
        h["Ais-Version"] = attrs.version
    for key, value in attrs.custom.items():
        h.add("Ais-Custom-Md", f"{key}={value}")
    if attrs.custom.get("ETag"):
        h["ETag"] = attrs.custom["ETag"]
    return h


# -- DELETE, PATCH -------------------------------------------------------------------------------
async def delete_object(request: web.Request) -> web.Response:
    store, bck, name = _target(request)
    msg = await read_action(request)
    if msg is not None and _action_of(msg) not in ("", "delete"):
        raise unknown_action(msg, request)
    await store.delete_object(bck, name)
    return web.Response()


async def patch_object(request: web.Request) -> web.Response:
    """Custom metadata: merge, or replace with `set-new-custom=true`."""
    store, bck, name = _target(request)
    msg = await read_action(request)
    if msg is None or _action_of(msg) != "":
        raise unknown_action(msg, request)
    custom = _custom_md(msg.get("value"))
    replace = is_true(request.query.get("set-new-custom", ""))
    await store.update_custom(bck, name, custom, replace)
    return web.Response()


_CUSTOM_KEY = re.compile(r"[^\x00-\x20\x7f,=]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _custom_md(value: Any) -> dict[str, str]:
    """Custom metadata goes out as `Ais-Custom-Md: k=v` headers: a key holds no `,` `=` or
    spaces and no text holds a control character (a CR/LF would have broken every later GET and
    HEAD of the object); values are strings, not whatever str() makes of a number or a list."""
    if not isinstance(value, dict):
        raise BadRequest("custom metadata: 'value' must be a JSON object of strings")
    for key, text in value.items():
        if not _CUSTOM_KEY.fullmatch(key):
            raise BadRequest(f"custom metadata: invalid key {key[:100]!r} (no spaces, ',', '='"
                             " or control characters)")
        if not isinstance(text, str):
            raise BadRequest(f"custom metadata: the value of {key!r} must be a string")
        if _CONTROL.search(text):
            raise BadRequest(f"custom metadata: the value of {key!r} contains a control"
                             " character (CR, LF, NUL ...)")
    return value


def _action_of(msg: dict[str, Any]) -> str:
    return str(msg.get("action") or "")

