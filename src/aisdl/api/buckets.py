"""`/v1/buckets`: list, create, destroy, HEAD (props), PATCH (set/reset props), list objects.

Wire formats follow AIStore (spec/ais-rest-api.md sections 5 and 7) so the official SDK and the
Go CLI work unchanged: list pages are msgpack when asked for, with a non-empty UUID.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from aisdl.api.download import BIG_REQUESTS
from aisdl.api.keys import CONFIG, JOBS, NODE_ID, STORE
from aisdl.api.remote import known_bucket, list_remote
from aisdl.errors import BadRequest, NotSupported, TooLarge, parse_json
from aisdl.jobs.multiobj import (
    ACT_DELETE,
    ACT_EVICT,
    ACT_PREFETCH,
    parse_selection,
    prefetch_spec,
)
from aisdl.jobs.request import JobSpec
from aisdl.models import Bucket, ObjectAttrs, normalize_provider
from aisdl.store.store import ARCHIVE, DIR, MEMBER, OBJECT

T = TypeVar("T")

MAX_ACTION_BODY = 1 << 20
# Where a request keeps its parsed action message
ACTION_MSG = web.RequestKey[dict[str, Any] | None]("action_message")
MAX_PAGE_SIZE = 10000  # AIS's page size for ais buckets, also the default
# LsoMsg flags (AIS api/apc/lsmsg.go; spec/ais-rest-api.md 7.3)
FLAG_CACHED, FLAG_MISSING, FLAG_DELETED, FLAG_ARCH_DIR = 1, 1 << 1, 1 << 2, 1 << 3
FLAG_NAME_ONLY, FLAG_NAME_SIZE, FLAG_BCK_PRESENT, FLAG_DONT_HEAD_REMOTE = (
    1 << 4, 1 << 5, 1 << 6, 1 << 7)
FLAG_DONT_ADD_REMOTE, FLAG_NOT_CACHED, FLAG_ONLY_REMOTE_PROPS, FLAG_NO_RECURSION = (
    1 << 8, 1 << 9, 1 << 10, 1 << 11)
FLAG_DIFF, FLAG_NO_DIRS, FLAG_IS_S3, FLAG_INVENTORY = 1 << 12, 1 << 13, 1 << 14, 1 << 15
# Flags honoured by doing nothing different: one copy per object (none is ever missing), no
# objects marked for deletion, a bucket we list is always present, AIS itself does not use the
# only-remote-props optimization yet, and a cloud bucket's HEAD either succeeds or fails the
# listing (dont-head-remote). no-dirs: our cloud listings have no directory entries, and AIS
# itself still lists directories of a non-recursive listing of its own buckets with it (the
# SDK's tests assert that).
FLAGS_NO_EFFECT = (FLAG_MISSING | FLAG_DELETED | FLAG_BCK_PRESENT | FLAG_DONT_HEAD_REMOTE
                   | FLAG_ONLY_REMOTE_PROPS | FLAG_NO_DIRS)
FLAGS_CARRIED_OUT = (FLAG_CACHED | FLAG_ARCH_DIR | FLAG_NAME_ONLY | FLAG_NAME_SIZE
                     | FLAG_NO_RECURSION)
FLAGS_UNSUPPORTED = {FLAG_DIFF: "diff", FLAG_IS_S3: "s3", FLAG_INVENTORY: "inventory"}
# ... and two checked case by case (_check_flags); any other bit is refused as unknown
FLAGS_KNOWN = (FLAGS_NO_EFFECT | FLAGS_CARRIED_OUT | FLAG_DONT_ADD_REMOTE | FLAG_NOT_CACHED
               | sum(FLAGS_UNSUPPORTED))
# Entry flags (spec 7.4)
ENTRY_PRESENT = 64  # a copy is stored here (SDK `is_cached()`)
ENTRY_IN_ARCHIVE, ENTRY_IS_DIR, ENTRY_IS_ARCHIVE = 128, 256, 512
LIST_PROPS = frozenset((
    "name", "size", "version", "checksum", "atime", "cached", "status", "copies", "ec",
    "custom", "location", "chunked", "last-modified", "etag",
))


def setup(app: web.Application) -> None:
    r = app.router
    for path in ("/v1/buckets", "/v1/buckets/"):
        r.add_route("GET", path, list_buckets)
    r.add_route("GET", "/v1/buckets/{bucket}", get_bucket)
    r.add_route("POST", "/v1/buckets/{bucket}", post_bucket)
    r.add_route("DELETE", "/v1/buckets/{bucket}", delete_bucket)
    r.add_route("HEAD", "/v1/buckets/{bucket}", head_bucket)
    r.add_route("PATCH", "/v1/buckets/{bucket}", patch_bucket)


# -- request helpers (also used by api/objects.py) -------------------------------------------------
def request_bucket(request: web.Request) -> Bucket:
    """The bucket a request names: path segment + `provider` query (missing/empty = ais)."""
    return Bucket.of(request.match_info["bucket"], request.query.get("provider") or "ais")


async def read_action(request: web.Request) -> dict[str, Any] | None:
    """The action message `{"action", "name", "value"}` of a request, None when it has no body;
    read once per request (the route check of api/accepted.py reads it before the handler).
    A message is bounded well below the node's body limit, unless it lists object names (up to
    a million): such a message is parsed on a thread, two at a time, so the node keeps
    answering meanwhile."""
    if ACTION_MSG in request:
        return request[ACTION_MSG]
    body = await request.read()
    if len(body) <= MAX_ACTION_BODY:
        msg = parse_json(body, "request body") if body.strip() else None
    else:
        msg = await _off_loop(request, parse_json, body, "request body")
        if not isinstance(msg, dict) or _action(msg) not in LISTRANGE_ACTIONS:
            raise TooLarge(f"request body is too large for {request.method} {request.path}:"
                           f" {len(body)} bytes (an action message holds at most"
                           f" {MAX_ACTION_BODY}, unless it lists object names)")
    if msg is not None and not isinstance(msg, dict):
        raise BadRequest("request body must be a JSON object (an action message)")
    request[ACTION_MSG] = msg
    return msg


def _action(msg: dict[str, Any] | None) -> str:
    return str(msg.get("action") or "") if msg else ""


def unknown_action(msg: dict[str, Any] | None, request: web.Request) -> BadRequest:
    return BadRequest(f"invalid action {_action(msg)!r} for {request.method} {request.path}")


# -- bucket handlers -----------------------------------------------------------------------------
async def list_buckets(request: web.Request) -> web.Response:
    msg = await read_action(request)
    if msg is not None and _action(msg) != "list":
        raise unknown_action(msg, request)
    return await _buckets_response(request, name="")


async def _buckets_response(request: web.Request, name: str) -> web.Response:
    """The buckets of the `provider` query (empty = all), sorted; `[]` when none."""
    provider = request.query.get("provider") or ""
    found = await request.app[STORE].list_buckets(normalize_provider(provider) if provider else "")
    return web.json_response([b.to_json() for b in found if not name or b.name == name])


async def get_bucket(request: web.Request) -> web.Response:
    """`value: null` lists buckets named so (Go api.ListBuckets); otherwise list objects."""
    msg = await read_action(request)
    if msg is not None and _action(msg) != "list":
        raise unknown_action(msg, request)
    if msg is None or msg.get("value") is None:
        request_bucket(request)  # still validate the name
        return await _buckets_response(request, name=request.match_info["bucket"])
    lso = msg["value"]
    if not isinstance(lso, dict):
        raise BadRequest("list objects: 'value' must be a JSON object (LsoMsg)")
    return await _list_objects(request, request_bucket(request), lso)


async def post_bucket(request: web.Request) -> web.Response:
    bck, msg = request_bucket(request), await read_action(request)
    if _action(msg) == ACT_PREFETCH:
        assert msg is not None
        return await _prefetch(request, bck, msg)
    if _action(msg) != "create-bck":
        raise unknown_action(msg, request)
    value = msg.get("value") if msg else None
    if value is not None and not isinstance(value, dict):
        raise BadRequest("create-bck: 'value' must be a JSON object of bucket props (or null)")
    await request.app[STORE].create_bucket(bck, value)
    return web.Response()


async def delete_bucket(request: web.Request) -> web.Response:
    bck, msg = request_bucket(request), await read_action(request)
    if _action(msg) in (ACT_DELETE, ACT_EVICT):
        assert msg is not None
        return await _delete_or_evict(request, bck, msg)
    if msg is not None and _action(msg) != "destroy-bck":
        raise unknown_action(msg, request)
    await request.app[STORE].destroy_bucket(bck)
    return web.Response()


async def head_bucket(request: web.Request) -> web.Response:
    bck = request_bucket(request)
    await known_bucket(request.app, bck)
    props = await request.app[STORE].bucket_props(bck)
    return web.Response(headers={"Ais-Bucket-Props": json.dumps(props, separators=(",", ":"))})


async def patch_bucket(request: web.Request) -> web.Response:
    bck, msg = request_bucket(request), await read_action(request)
    store = request.app[STORE]
    if _action(msg) == "set-bprops":
        value = msg.get("value") if msg else None
        if not isinstance(value, dict):
            raise BadRequest("set-bprops: 'value' must be a JSON object of bucket props")
        backend = value.get("backend_bck")
        if isinstance(backend, dict) and backend.get("name") and backend.get("provider"):
            remote = Bucket.of(str(backend["name"]), str(backend["provider"]))
            if remote.is_remote:  # as AIS does: the backend must exist
                await known_bucket(request.app, remote)
        await store.set_bucket_props(bck, value)
    elif _action(msg) == "reset-bprops":
        await store.reset_bucket_props(bck)
    else:
        raise unknown_action(msg, request)
    return web.Response()


# -- multi-object: delete, evict, prefetch a list or a template of names -------------------------
LISTRANGE_ACTIONS = (ACT_DELETE, ACT_EVICT, ACT_PREFETCH)
INLINE_ACTION = 64 << 10  # a bigger message (a long list of names) is handled on a thread


async def _off_loop(request: web.Request, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` inline for a small request, on a thread for a big one."""
    if (request.content_length or 0) <= INLINE_ACTION:
        return fn(*args)
    async with request.app[BIG_REQUESTS]:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _delete_or_evict(request: web.Request, bck: Bucket, msg: dict[str, Any]) -> web.Response:
    """AIS's answer is the id of the operation, which goes on in the background."""
    action, store = _action(msg), request.app[STORE]
    await known_bucket(request.app, bck)
    remote = store.remote_of(bck)
    if action == ACT_EVICT and remote is None:
        raise BadRequest(f"{action}: expecting remote bucket (have {bck.cname}): only the"
                         " copies of a remote bucket's objects can be evicted; to remove"
                         " objects use delete-listrange (`ais object rm`)")
    if action == ACT_DELETE and remote is not None:
        raise NotSupported(f"{action}: {bck.cname} has a remote backend ({remote.cname}), and"
                           " this node does not delete objects from remote buckets; to drop"
                           " the copies stored here use evict-listrange (`ais evict`)")
    selection, _ = await _off_loop(request, parse_selection, action, msg.get("value"))
    op_id = request.app[JOBS].multiobj.start(action, bck, selection)
    return web.Response(text=op_id)


async def _prefetch(request: web.Request, bck: Bucket, msg: dict[str, Any]) -> web.Response:
    """A download job from the bucket's backend; its id is the answer."""
    await known_bucket(request.app, bck)
    remote = request.app[STORE].remote_of(bck)
    if remote is None:
        raise BadRequest(f"{ACT_PREFETCH}: expecting remote bucket (have {bck.cname}): a"
                         " bucket with no remote backend has nothing to prefetch")
    max_connections = request.app[CONFIG].max_connections

    def spec_of(value: Any) -> JobSpec:
        selection, options = parse_selection(ACT_PREFETCH, value)
        return prefetch_spec(bck, remote, selection, options, max_connections)

    spec = await _off_loop(request, spec_of, msg.get("value"))
    return web.Response(text=await request.app[JOBS].create(spec))


# -- list objects --------------------------------------------------------------------------------
async def _list_objects(request: web.Request, bck: Bucket, lso: dict[str, Any]) -> web.Response:
    store = request.app[STORE]
    flags = _uint(lso.get("flags"), "flags")
    page_size = _uint(lso.get("pagesize"), "pagesize")
    page_size = MAX_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
    props = _list_props(_lso_text(lso, "props"), flags)
    uuid = _lso_text(lso, "uuid") or secrets.token_urlsafe(8)  # never empty: see 7.5
    after = max(_lso_text(lso, "continuation_token"), _lso_text(lso, "start_after"))
    prefix = _lso_text(lso, "prefix")
    remote = store.remote_of(bck)  # (a cloud bucket is its own remote, known or not yet)
    lists_remote = remote is not None and not flags & FLAG_CACHED
    _check_flags(bck, flags, lists_remote, store.has_bucket(bck))
    await known_bucket(request.app, bck)  # a cloud bucket becomes known: only once all is checked
    if lists_remote:
        assert remote is not None
        objs, held = await list_remote(request.app, bck, remote, prefix, after, page_size)
        entries = [(o, ENTRY_PRESENT if o.name in held else 0) for o in objs]
    else:
        found = await store.list_entries(bck, prefix, after, page_size,
                                         recursive=not flags & FLAG_NO_RECURSION,
                                         arch_dir=bool(flags & FLAG_ARCH_DIR))
        entries = [(e.attrs, _ENTRY_FLAGS[e.kind]) for e in found]
    token = entries[-1][0].name if len(entries) >= page_size else ""
    node = f"t[{request.app[NODE_ID]}]"

    def location(o: ObjectAttrs) -> str:
        return f"{node}:{store.mountpath(bck, o.name)}"

    if "application/msgpack" in request.headers.get("Accept", ""):
        page = {"UUID": uuid, "ContinuationToken": token, "Flags": 0,
                "Entries": [_msgpack_entry(o, props, location, f) for o, f in entries]}
        return web.Response(body=msgspec.msgpack.encode(page),
                            headers={"Content-Type": "application/msgpack"})
    return web.json_response({"uuid": uuid, "continuation_token": token, "flags": 0,
                              "entries": [_json_entry(o, props, location, f)
                                          for o, f in entries]})


# AIS's entry flags by kind: a directory is only a name; a file in an archive is stored here
# as its archive is.
_ENTRY_FLAGS = {OBJECT: ENTRY_PRESENT, ARCHIVE: ENTRY_PRESENT | ENTRY_IS_ARCHIVE,
                MEMBER: ENTRY_PRESENT | ENTRY_IN_ARCHIVE, DIR: ENTRY_IS_DIR}


def _check_flags(bck: Bucket, flags: int, lists_remote: bool, known: bool) -> None:
    """Refuse the flags this listing would not honour, before anything is listed or a cloud
    bucket becomes known."""
    def refuse(what: str, why: str) -> NotSupported:
        return NotSupported(f"listing {bck.cname}: flag {what!r} {why}")

    if flags & ~FLAGS_KNOWN:
        raise BadRequest(f"listing {bck.cname}: invalid flags {flags} (unknown bits"
                         f" {flags & ~FLAGS_KNOWN:#x})")
    for bit, name in FLAGS_UNSUPPORTED.items():
        if flags & bit:
            raise refuse(name, "is not supported by this node")
    if flags & FLAG_CACHED and flags & FLAG_NOT_CACHED:
        raise BadRequest(f"listing {bck.cname}: flags 'cached' and 'not-cached' are"
                         " mutually exclusive")
    if flags & FLAG_NOT_CACHED:
        if not lists_remote:
            raise BadRequest(f"listing {bck.cname}: 'not-cached' requires a remote bucket")
        raise refuse("not-cached", "is not supported by this node")
    if flags & FLAG_DONT_ADD_REMOTE and bck.is_remote and not known:
        raise refuse("dont-add-remote", "is not supported: a cloud bucket this node lists"
                     " becomes one of its buckets")
    if lists_remote:
        for bit, name in ((FLAG_NO_RECURSION, "no-recursion"), (FLAG_ARCH_DIR, "arch-dir")):
            if flags & bit:
                raise refuse(name, "is supported for objects stored here only (add 'cached')")


def _uint(value: Any, what: str) -> int:
    """An unsigned int that clients send as a JSON string (`flags`) or a number."""
    if isinstance(value, bool) or not isinstance(value, int | str | None):
        raise BadRequest(f"list objects: invalid {what} {str(value)[:100]!r} (expected an"
                         " unsigned integer)")
    try:
        n = int(value or 0)
    except ValueError:
        raise BadRequest(f"list objects: invalid {what} {str(value)[:100]!r}") from None
    if n < 0:
        raise BadRequest(f"list objects: invalid {what} {value!r}")
    return n


def _lso_text(lso: dict[str, Any], key: str) -> str:
    """A string field of a list-objects message; absent or null is ""."""
    value = lso.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"list objects: '{key}' must be a string")
    return value


def _list_props(text: str, flags: int) -> frozenset[str]:
    """The entry fields to fill; AIS's defaults for an empty `props`."""
    if flags & FLAG_NAME_ONLY:
        return frozenset(("name",))
    if flags & FLAG_NAME_SIZE:
        return frozenset(("name", "size"))
    items = frozenset(p.strip() for p in text.split(",") if p.strip())
    if not items:
        if flags & FLAG_CACHED:
            return frozenset(("name", "size", "checksum", "atime"))
        return frozenset(("name", "size", "cached"))
    bad = sorted(items - LIST_PROPS)
    if bad:
        raise BadRequest(f"list objects: invalid property {bad[0]!r}"
                         f" (expected some of {', '.join(sorted(LIST_PROPS))})")
    return items


def _msgpack_entry(o: ObjectAttrs, props: frozenset[str], location: Any,
                   flags: int) -> dict[str, Any]:
    e: dict[str, Any] = {"n": o.name}
    if flags & ENTRY_IS_DIR:  # AIS: a directory is a name and its flag
        return {"n": o.name, "f": flags}
    if flags & ENTRY_IN_ARCHIVE:  # a file in an archive: its name, (uncompressed) size, flags
        return {"n": o.name, "s": o.size, "f": flags} if o.size else {"n": o.name, "f": flags}
    present = flags & ENTRY_PRESENT
    if "size" in props and o.size:
        e["s"] = o.size
    if "checksum" in props and o.cksum:
        e["cs"] = o.cksum
    if "atime" in props and o.atime_ns:
        e["a"] = _rfc822(o.atime_ns)
    if "version" in props and o.version:
        e["v"] = o.version
    if "location" in props and present:
        e["t"] = location(o)
    if "custom" in props and o.custom:
        e["m"] = "[" + " ".join(f"{k}:{v}" for k, v in sorted(o.custom.items())) + "]"
    if "copies" in props:
        e["c"] = 1
    e["f"] = flags
    return e


def _json_entry(o: ObjectAttrs, props: frozenset[str], location: Any,
                flags: int) -> dict[str, Any]:
    """AIS's JSON entry form; Go encodes `size` as a string."""
    short = _msgpack_entry(o, props, location, flags)
    names = {"n": "name", "cs": "checksum", "a": "atime", "v": "version", "t": "location",
             "m": "custom-md", "c": "copies", "f": "flags"}
    out: dict[str, Any] = {names[k]: v for k, v in short.items() if k != "s"}
    if "s" in short:
        out["size"] = str(short["s"])
    return out


def _rfc822(ns: int) -> str:
    """Go's RFC822 layout (`02 Jan 06 15:04 MST`), the AIS default for list atimes."""
    return time.strftime("%d %b %y %H:%M UTC", time.gmtime(ns / 1e9))
