"""Operations on many objects of one bucket at once, as AIStore's API has them: the objects are
a list of names, a range template, or every object under a prefix (AIS `ListRange`).

- `delete-listrange` removes the objects of an ais bucket; `evict-listrange` drops the copies
  this node holds of a bucket with a remote backend (the remote keeps them). Both run in the
  background, a batch of names per database transaction, and are kept as records (AIS calls
  them xactions) that status queries read: what was removed, and which listed names were not
  there — an error, as in AIS, for a list; for a range or a prefix a name that matches nothing
  is simply not there.
- `prefetch-listrange` is a download job from the bucket's backend (`prefetch_spec`), so it is
  shown, counted, resumed and stopped like any download job.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from aisdl.errors import AisdlError, BadRequest, NotSupported
from aisdl.jobs.listing import source_link
from aisdl.jobs.request import MAX_DESCRIPTION, MAX_LINK, MAX_OBJECTS, JobSpec, range_name
from aisdl.jobs.template import RangeTemplate
from aisdl.models import Bucket
from aisdl.store.paths import check_object_name
from aisdl.store.store import Store

log = logging.getLogger("aisdl.jobs")

ACT_DELETE = "delete-listrange"
ACT_EVICT = "evict-listrange"
ACT_PREFETCH = "prefetch-listrange"

BATCH = 1000          # names per transaction: one commit per thousand objects, not per object
RECORDS_KEPT = 1000   # finished operations a status query can still find (newest kept)
ERRORS_KEPT = 5       # error messages kept per operation; the rest are counted (as AIS does)

# The fields of AIS's `EvdMsg` and `PrefetchMsg` (api/apc/multiobj.go), with their JSON types.
_EVD_FIELDS: dict[str, type] = {
    "template": str, "objnames": list, "num-workers": int, "coer": bool, "non-recurs": bool}
_PREFETCH_FIELDS: dict[str, type] = {
    **_EVD_FIELDS, "latest-ver": bool, "blob-threshold": int, "blob-chunk-size": int,
    "blob-num-workers": int}
_TYPE_NAMES: dict[type, str] = {str: "a string", list: "an array of strings", int: "an integer",
               bool: "true or false"}



@dataclass(frozen=True)
class Selection:
    """Which objects: a list of names, a range template, or every name under `prefix`."""

    names: tuple[str, ...] = ()
    template: RangeTemplate | None = None
    prefix: str = ""
    non_recursive: bool = False  # prefix only: not the objects of its virtual subdirectories

    def describe(self) -> str:
        """As AIS prints a ListRange: `list(3 names):[a, ...]`, `template:t`, `prefix:p`."""
        if self.names:
            if len(self.names) > 3:
                return f"list({len(self.names)} names):[{self.names[0]}, ...]"
            return f"list:[{' '.join(self.names)}]"
        if self.template is not None:
            return f"template:{self.template.template}"
        return f"prefix:{self.prefix}" if self.prefix else "all objects"


def parse_selection(action: str, value: Any) -> tuple[Selection, dict[str, Any]]:
    """The objects an action message's `value` selects, and its other fields (validated)."""
    if not isinstance(value, dict):
        raise BadRequest(f"{action}: 'value' must be a JSON object (a list or a template of"
                         " object names)")
    fields = _PREFETCH_FIELDS if action == ACT_PREFETCH else _EVD_FIELDS
    for key, val in value.items():
        kind = fields.get(key)
        if kind is None:
            raise BadRequest(f"{action}: unknown field {key[:100]!r} in 'value' (expected some"
                             f" of: {', '.join(fields)})")
        if val is not None and not _of_type(val, kind):
            raise BadRequest(f"{action}: '{key}' must be {_TYPE_NAMES[kind]}")
    for key in ("num-workers", "blob-threshold", "blob-chunk-size", "blob-num-workers"):
        if (value.get(key) or 0) < (-1 if key == "num-workers" else 0):
            raise BadRequest(f"{action}: '{key}' must not be negative (got {value[key]})")
    names = value.get("objnames") or []
    template = value.get("template") or ""
    if names and template:
        raise BadRequest(f"{action}: 'objnames' and 'template' are mutually exclusive"
                         " (give one or the other)")
    non_recursive = bool(value.get("non-recurs"))
    if names:
        return Selection(names=_names(action, names)), value
    if len(template) > MAX_LINK:
        raise BadRequest(f"{action}: template is too long: {len(template)} characters (at"
                         f" most {MAX_LINK})")
    if "\x00" in template:
        raise BadRequest(f"{action}: template contains a NUL character")
    if "{" in template or "}" in template:
        return Selection(template=RangeTemplate(template)), value  # parsed and capped
    return Selection(prefix="" if template == "*" else template,
                     non_recursive=non_recursive), value


def _of_type(value: Any, kind: type) -> bool:
    """JSON types: `true` is no integer here (Python's bool is an int)."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _names(action: str, names: list[Any]) -> tuple[str, ...]:
    if len(names) > MAX_OBJECTS:
        raise BadRequest(f"{action}: too many object names: {len(names)} (at most"
                         f" {MAX_OBJECTS} in one request)")
    seen: set[str] = set()
    for name in names:  # one Python loop, not C calls over all names: a thread that runs
        # this gives the event loop its turns (a dict.fromkeys of 1M names held it for 0.8 s)
        if not isinstance(name, str):
            raise BadRequest(f"{action}: 'objnames' must be an array of strings")
        check_object_name(name)
        seen.add(name)
    if len(seen) == len(names):
        return tuple(names)
    unique: list[str] = []
    for name in names:  # each name once, in the order given
        if name in seen:
            seen.discard(name)
            unique.append(name)
    return tuple(unique)


# -- delete and evict ----------------------------------------------------------------------------
@dataclass
class OpRecord:
    """One delete or evict: what it was asked, what it did so far, how it ended."""

    id: str
    kind: str
    bucket: Bucket
    what: str
    started_ns: int
    ended_ns: int = 0
    objects: int = 0
    bytes: int = 0
    error_count: int = 0
    errors: list[str] = field(default_factory=list)
    aborted: bool = False

    def add_error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(message)

    @property
    def error(self) -> str:
        """AIS's form of many errors: the first, and how many more."""
        if not self.error_count:
            return ""
        more = self.error_count - 1
        return self.errors[0] + (f" (and {more} more error{'s' if more > 1 else ''})"
                                 if more else "")

    def status_json(self) -> dict[str, Any]:
        """AIS's job status (`what=status`): `end_time` 0 while it runs."""
        return {"uuid": self.id, "err": self.error, "end_time": self.ended_ns,
                "aborted": self.aborted}

    def snap_json(self) -> dict[str, Any]:
        """AIS's xaction snapshot (core.Snap) as this node's target reports it; a
        `what=qryxstats` answer is `{"t[NODE_ID]": [snap, ...]}`. Counters go as strings."""
        empty = {"name": "", "provider": "", "namespace": {"uuid": "", "name": ""}}
        return {
            "id": self.id, "kind": self.kind, "bck": self.bucket.to_json(),
            "src-bck": empty, "dst-bck": empty,
            "start-time": _rfc3339(self.started_ns), "end-time": _rfc3339(self.ended_ns),
            "ctlmsg": self.what, "abort-err": "", "err": self.error, "glob.id": "0",
            "stats": {"loc-objs": str(self.objects), "loc-bytes": str(self.bytes),
                      "out-objs": "0", "out-bytes": "0", "in-objs": "0", "in-bytes": "0"},
            "aborted": self.aborted, "is_idle": bool(self.ended_ns),
        }


def _rfc3339(ns: int) -> str:
    if not ns:
        return "0001-01-01T00:00:00Z"  # Go's zero time: not finished
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + \
        f".{ns % 10**9:09d}Z"


def new_op_id() -> str:
    """An xaction id, AIS style (short, letters and digits)."""
    return secrets.token_urlsafe(8).replace("-", "x").replace("_", "y")


class MultiObjOps:
    """The node's deletes and evictions: started in the background, kept after they end."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.records: OrderedDict[str, OpRecord] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def get(self, op_id: str) -> OpRecord | None:
        return self.records.get(op_id)

    def start(self, kind: str, bck: Bucket, selection: Selection) -> str:
        """Start removing the selected objects of `bck` (the caller has checked that `kind`
        applies to it); returns the operation's id at once."""
        self.store.require_bucket(bck)
        op = OpRecord(new_op_id(), kind, bck, selection.describe(), time.time_ns())
        self.records[op.id] = op
        while len(self.records) > RECORDS_KEPT:
            oldest = next(iter(self.records))
            if oldest in self._tasks:
                break  # never forget one that runs
            del self.records[oldest]
        task = asyncio.create_task(self._run(op, selection), name=f"{kind} {op.id}")
        self._tasks[op.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(op.id, None))
        log.info("%s[%s] started: %s %s", kind, op.id, bck.cname, op.what)
        return op.id

    async def _run(self, op: OpRecord, selection: Selection) -> None:
        try:
            async for batch in self._batches(op.bucket, selection):
                removed, size, missing = await self.store.delete_objects(op.bucket, batch)
                op.objects += removed
                op.bytes += size
                if selection.names:  # a listed name that is not there is an error (AIS)
                    for name in missing:
                        op.add_error(f"{op.bucket.cname}/{name} does not exist")
        except asyncio.CancelledError:
            op.aborted = True
            raise
        except AisdlError as exc:  # the database refused, a disk error: the op ends with it
            op.add_error(exc.message)
        except Exception as exc:  # noqa: BLE001 - recorded as the op's error, not lost
            log.exception("%s[%s] failed", op.kind, op.id)
            op.add_error(f"internal error: {type(exc).__name__}: {exc} (see the node log)")
        finally:
            op.ended_ns = time.time_ns()
            log.info("%s[%s] done: %d objects (%d bytes)%s", op.kind, op.id, op.objects,
                     op.bytes, f", {op.error}" if op.error else "")

    async def _batches(self, bck: Bucket, selection: Selection) -> AsyncIterator[list[str]]:
        if selection.names:
            for i in range(0, len(selection.names), BATCH):
                yield list(selection.names[i:i + BATCH])
        elif selection.template is not None:
            batch: list[str] = []
            for name in _valid(iter(selection.template)):
                batch.append(name)
                if len(batch) == BATCH:
                    yield batch
                    batch = []
            if batch:
                yield batch
        else:
            after = ""
            while page := await self.store.list_objects(bck, selection.prefix, after, BATCH):
                after = page[-1].name
                names = [o.name for o in page]
                if selection.non_recursive:
                    names = [n for n in names if "/" not in n[len(selection.prefix):]]
                yield names

    async def close(self) -> None:
        """Node shutdown: what still runs stops between two batches, recorded as aborted."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _valid(names: Iterator[str]) -> Iterator[str]:
    """The names of a range that can be objects (one that cannot is not there to remove)."""
    for name in names:
        try:
            yield check_object_name(name)
        except BadRequest:
            continue


# -- prefetch ------------------------------------------------------------------------------------
def prefetch_spec(bck: Bucket, remote: Bucket, selection: Selection,
                  options: dict[str, Any], max_connections: int) -> JobSpec:
    """The download job that fetches the selected objects of `remote` into `bck`: a multi job
    for a list, a range job for a template, a backend job (the listing) for a prefix."""
    if selection.non_recursive and selection.template is None and not selection.names:
        raise NotSupported(f"{ACT_PREFETCH}: 'non-recurs' is not supported by this node")
    workers = options.get("num-workers") or 0
    description = f"prefetch {bck.cname}: {selection.describe()}"
    if len(description) > MAX_DESCRIPTION:
        description = description[:MAX_DESCRIPTION - 1] + "\N{HORIZONTAL ELLIPSIS}"
    base: dict[str, Any] = {  # `source`: the objects come from the remote, not go to it
        "bucket": bck, "source": remote, "description": description,
        "connections": min(workers, max_connections) if workers > 0 else 0}
    if selection.names:
        return JobSpec(kind="multi", objects=tuple(
            (name, source_link(remote, name)) for name in selection.names), **base)
    if selection.template is None:
        return JobSpec(kind="backend", prefix=selection.prefix, **base)
    return _range_spec(remote, selection.template, base)


def _range_spec(remote: Bucket, template: RangeTemplate, base: dict[str, Any]) -> JobSpec:
    """A range job names each object after the link's last element in `subdir`: right when
    every range sits in that last element and names come out as written; otherwise the names
    are listed (up to the list's bound)."""
    text = template.template
    subdir, _, last = text.rpartition("/")
    first = template.name_at(0) if len(template) else ""
    link = source_link(remote, text)
    if "{" not in subdir and first and _same_name(subdir, source_link(remote, first), first):
        return JobSpec(kind="range", template=link, subdir=subdir, **base)
    if len(template) > MAX_OBJECTS:
        raise BadRequest(f"{ACT_PREFETCH}: template {text!r} names {len(template)} objects"
                         f" with ranges in a directory part: at most {MAX_OBJECTS} such names"
                         " in one request")
    names = list(dict.fromkeys(_valid(iter(template))))
    return JobSpec(kind="multi", objects=tuple((n, source_link(remote, n)) for n in names),
                   **base)


def _same_name(subdir: str, link: str, name: str) -> bool:
    """Whether a range job would store `link` as `name` (names are normalized as URLs: one
    with `%`, `?` or `#` would not keep its text)."""
    try:
        return range_name(subdir, link) == name
    except BadRequest:
        return False
