"""Jobs (AIS "xactions") under `/v1/cluster`, in AIS's wire format, as AIS's SDK and CLI ask.

The node runs one kind of job, `download`: each download job is an xaction of its own, its job
id the xaction id. A kind AIS has but this node does not run is refused with 501, a kind AIS
does not know with 400, an id no job has with 404: no answer describes a job that is not there.

    GET  ?what=qryxstats    {TARGET_ID: [snap, ...]}   Job.get_details(), Job.wait()
    GET  ?what=status       {kind, uuid, err, end_time, aborted}   Job.status()
    GET  ?what=status_all   [status, ...], null when none   Cluster.list_jobs_status()
    GET  ?what=running_all  ["download[ID]", ...]       Cluster.list_running_jobs()
    PUT  stop               abort the selected jobs     Job.abort()
    PUT  start              refused: a download starts with POST /v1/download

The query is AIS's `QueryMsg` (`{"id", "kind", "node", "show_active", "bck", "buckets"}`), or,
from the SDK, the `ArgsMsg` spelling (`{"ID", "Kind", "DaemonID", "Bck", "Buckets"}`): like
AIS's JSON decoding, keys match whatever their case.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from aisdl.api.keys import JOBS, NODE_ID
from aisdl.errors import BadRequest, NotFound, NotSupported
from aisdl.jobs.manager import JobState
from aisdl.models import Bucket, normalize_provider

DOWNLOAD = "download"
RUN_KINDS = frozenset({DOWNLOAD, "delete-listrange", "evict-listrange"})  # the kinds it runs
USER_ABORT = "user abort"  # AIS's abort error for a job stopped by request
GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # how AIS writes "not yet" for a time
EMPTY_BCK = {"name": "", "provider": "", "namespace": {"uuid": "", "name": ""}}

# The job kinds AIS has (its xaction table): valid requests, though only `download` runs here.
AIS_JOB_KINDS = frozenset({
    "election", "rebalance", "etl-inline", "lru", "cleanup-store", "summary-bck",
    "summary-shard", "resilver", "rechunk", "index-shard", "ec-get", "ec-put", "ec-resp",
    "put-copies", "archive", "copy-listrange", "etl-listrange", "blob-download", DOWNLOAD,
    "dsort", "promote", "evict-listrange", "evict-remote-bck", "delete-listrange",
    "prefetch-listrange", "ec-encode", "make-n-copies", "move-bck", "copy-bck", "etl-bck",
    "list", "get-batch", "create-inventory", "load-lom-cache",
})

# Query keys (lower case) → what they select. `timeout`, `flags` and `force` come with the
# SDK's `ArgsMsg`; they select nothing, so they are accepted only unset.
_FIELDS = {"id": "id", "kind": "kind", "node": "node", "daemonid": "node",
           "show_active": "only_running", "onlyrunning": "only_running",
           "bck": "bck", "buckets": "buckets"}
_UNSET_ONLY = frozenset({"timeout", "flags", "force"})



@dataclass(frozen=True)
class Query:
    """Which jobs a request selects; empty fields select all."""

    id: str = ""
    kind: str = ""
    node: str = ""
    only_running: bool = False
    buckets: frozenset[Bucket] = frozenset()

    @property
    def name(self) -> str:
        """How AIS names an xaction in messages: `download[ID]`."""
        return f"{self.kind or DOWNLOAD}[{self.id}]"

    def selects(self, job: JobState) -> bool:
        return ((not self.id or job.id == self.id) and (not self.kind or job.kind == self.kind)
                and (not self.only_running or not job.finished_ns)
                and (not self.buckets or job.bucket in self.buckets))


def parse_query(body: dict[str, Any] | None) -> Query:
    """A query message, checked: a key this node would not honour is refused, not ignored."""
    fields: dict[str, Any] = {}
    for key, value in (body or {}).items():
        low = key.lower()
        if low in _UNSET_ONLY:
            if value:
                raise BadRequest(f"{key!r} does not apply to a job query")
            continue
        field = _FIELDS.get(low)
        if field is None:
            raise BadRequest(f"unknown field {key[:100]!r} in the job query (expected some of:"
                             " id, kind, node, show_active, bck, buckets)")
        if value is not None:
            fields[field] = _typed(key, field, value)
    buckets = set(fields.pop("buckets", ()))
    if bck := fields.pop("bck", None):
        buckets.add(bck)
    return Query(**fields, buckets=frozenset(buckets))


def _typed(key: str, field: str, value: Any) -> Any:
    if field == "only_running":
        if not isinstance(value, bool):
            raise BadRequest(f"{key!r} must be a boolean")
        return value
    if field == "bck":
        return _bucket(key, value)
    if field == "buckets":
        if not isinstance(value, list):
            raise BadRequest(f"{key!r} must be a list of buckets")
        return [b for b in (_bucket(key, v) for v in value) if b is not None]
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string")
    return value


def _bucket(key: str, value: Any) -> Bucket | None:
    """AIS's bucket object `{"name", "provider", "namespace"}`; None when it names none."""
    if not isinstance(value, dict):
        raise BadRequest(f"{key!r} must be a bucket object (name, provider, namespace)")
    if unknown := set(value) - {"name", "provider", "namespace"}:
        raise BadRequest(f"unknown field {sorted(unknown)[0][:100]!r} in {key!r}")
    name, provider, ns = value.get("name") or "", value.get("provider"), value.get("namespace")
    if not isinstance(name, str) or not isinstance(provider, str | None):
        raise BadRequest(f"{key!r}: the bucket's name and provider must be strings")
    if ns is not None and (not isinstance(ns, dict) or any(ns.values())):
        raise BadRequest(f"{key!r}: bucket namespaces are not supported")
    return Bucket.of(name, normalize_provider(provider)) if name else None


def check_kind(kind: str) -> None:
    if not kind or kind in RUN_KINDS:
        return
    if kind in AIS_JOB_KINDS:
        raise NotSupported(f"job kind {kind!r} does not run on this node: it runs"
                           f" {', '.join(sorted(RUN_KINDS))} jobs only")
    raise BadRequest(f"invalid xaction (job) kind {kind[:100]!r}")


def _check_node(request: web.Request, node: str) -> None:
    """The node filter names this node (its target or its proxy id) or none."""
    node_id = request.app[NODE_ID]
    if node and node not in (node_id, f"p{node_id}"):
        raise NotFound(f"node {node[:100]!r} is not in this cluster: its only node is"
                       f" t[{node_id}]", tcode="ErrNodeNotFound")


async def _selected(request: web.Request, msg: dict[str, Any] | None) -> tuple[Query,
                                                                                list[JobState]]:
    query = parse_query(msg)
    check_kind(query.kind)
    _check_node(request, query.node)
    return query, [j for j in await request.app[JOBS].states() if query.selects(j)]


def _not_found(query: Query) -> NotFound:
    return NotFound(f"xaction {query.name} not found", tcode="ErrXactNotFound")


# -- wire shapes ----------------------------------------------------------------------------------
def go_time(ns: int) -> str:
    """A time as AIS writes it (RFC 3339, nanoseconds, trailing zeros dropped); 0 is "not yet"."""
    if not ns:
        return GO_ZERO_TIME
    secs, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{frac:09d}".rstrip("0").rstrip(".") + "Z"


def _errors_text(job: JobState) -> str:
    if job.error_text or not job.errors:
        return job.error_text
    return (f"{job.errors} object(s) failed to download"
            f" (see `ais show job download {job.id} --verbose`)")


def snap(job: JobState) -> dict[str, Any]:
    """AIS's xaction snapshot. A job is idle once it has finished: nothing more will happen.
    Bytes are not counted per job, so the snapshot has no `stats` rather than made-up ones."""
    return {
        "ext": None, "start-time": go_time(job.started_ns), "end-time": go_time(job.finished_ns),
        "bck": job.bucket.to_json(), "src-bck": EMPTY_BCK, "dst-bck": EMPTY_BCK,
        "id": job.id, "kind": job.kind, "ctlmsg": job.description,
        "abort-err": USER_ABORT if job.aborted else "", "err": _errors_text(job),
        "glob.id": "0", "aborted": job.aborted, "is_idle": bool(job.finished_ns),
    }


def status(job: JobState) -> dict[str, Any]:
    """AIS's job status: `end_time` (Unix ns) is 0 until the job has finished."""
    err = "; ".join(e for e in (USER_ABORT if job.aborted else "", _errors_text(job)) if e)
    out: dict[str, Any] = {"kind": job.kind, "uuid": job.id, "err": err,
                           "end_time": job.finished_ns, "aborted": job.aborted}
    if job.finished_ns:
        out["is_idle"] = True
    return out


# -- handlers -------------------------------------------------------------------------------------
def _only_params(request: web.Request, allowed: tuple[str, ...]) -> None:
    for name in request.query:
        if name not in allowed:
            raise BadRequest(f"unknown query parameter {name[:100]!r} for GET /v1/cluster"
                             f"?what={request.query.get('what', '')}")


async def query_stats(request: web.Request, msg: dict[str, Any] | None) -> web.Response:
    _only_params(request, ("what",))
    query, jobs = await _selected(request, msg)
    if not jobs:
        raise _not_found(query)
    return web.json_response({request.app[NODE_ID]: [snap(j) for j in jobs]})


async def one_status(request: web.Request, msg: dict[str, Any] | None) -> web.Response:
    _only_params(request, ("what",))
    query, jobs = await _selected(request, msg)
    if not query.id and not query.kind:
        raise BadRequest(f"invalid {query.name}: expecting a job id and/or kind")
    if not jobs:
        raise _not_found(query)
    return web.json_response(status(jobs[-1]))  # by kind alone: the latest job


async def all_status(request: web.Request, msg: dict[str, Any] | None) -> web.Response:
    _only_params(request, ("what", "force"))  # force: a fresh status, which ours always is
    _, jobs = await _selected(request, msg)
    return web.json_response([status(j) for j in jobs] or None)


async def running(request: web.Request, msg: dict[str, Any] | None) -> web.Response:
    _only_params(request, ("what",))
    _, jobs = await _selected(request, msg)
    return web.json_response([f"{j.kind}[{j.id}]" for j in jobs if not j.finished_ns])


Query_ = Callable[[web.Request, dict[str, Any] | None], Awaitable[web.Response]]
GET_QUERIES: dict[str, Query_] = {
    "qryxstats": query_stats, "status": one_status, "status_all": all_status,
    "running_all": running,
}


async def stop(request: web.Request, value: Any) -> web.Response:
    """Abort the selected jobs; a job that has already finished stays as it ended."""
    if not isinstance(value, dict):
        raise BadRequest("stop: 'value' must name the job (ID and/or Kind)")
    query, jobs = await _selected(request, value)
    if not query.id and not query.kind:
        raise BadRequest(f"cannot stop {query.name}: expecting a job id and/or kind")
    if query.id and not jobs:
        raise _not_found(query)
    if kinds := sorted({j.kind for j in jobs if j.kind != DOWNLOAD}):  # before stopping any
        raise NotSupported(f"{', '.join(kinds)} jobs cannot be stopped on this node")
    for job in jobs:
        await request.app[JOBS].abort(job.id)
    return web.Response()


def start(value: Any) -> web.Response:
    given = value.items() if isinstance(value, dict) else ()
    kind = next((v for k, v in given if k.lower() == "kind" and isinstance(v, str)), "")
    check_kind(kind)
    raise BadRequest(f"a {DOWNLOAD} job cannot be started this way: start it with"
                     " POST /v1/download (`ais start download`)")
