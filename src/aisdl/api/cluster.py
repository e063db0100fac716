"""`/v1/daemon` (cluster map, bucket metadata, shutdown), `/v1/cluster` (the same maps, and the
job queries and control of `xactions`) and `/v1/health`.

A node is a one-node AIS cluster: it lists itself as both the proxy and the target, with the
endpoint clients reach it at, so the SDK's `is_ready()` and direct reads come back to us.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any
from urllib.parse import urlsplit

import xxhash
from aiohttp import web

from aisdl.api import xactions
from aisdl.api.buckets import read_action, unknown_action
from aisdl.api.keys import CONFIG, NODE_ID, STORE
from aisdl.errors import BadRequest, NotSupported

# What AIS's `GET /v1/cluster?what=` and `PUT /v1/cluster` actions offer beyond what a node
# serves: valid requests, refused with 501 rather than as unknown.
AIS_CLUSTER_WHATS = frozenset({
    "config", "cluster_config", "backends", "node_stats", "node_status", "software_version",
    "disk", "metrics", "mountpaths", "remote", "smapvote", "sysinfo", "target_ips", "log",
    "getxstats", "snode", "ic_bundle", "tls_certificate"})
AIS_CLUSTER_ACTIONS = frozenset({
    "set-config", "reset-config", "reset-stats", "rotate-logs", "reload-creds", "clear-lcache",
    "shutdown", "decommission", "attach", "detach", "enable-bend", "disable-bend",
    "start-maintenance", "stop-maintenance", "shutdown-node", "decommission-node",
    "rm-unsafe", "new-primary", "primary-force", "bump-metasync", "attach-mp", "enable-mp",
    "detach-mp", "disable-mp", "rescan-mp", "fshc-mp", "start-gfn", "stop-gfn"})

STARTED_NS = web.AppKey("started_ns", int)
SHUTDOWN_DELAY = 0.1  # seconds: time for the 200 to reach the client before SIGTERM


def setup(app: web.Application) -> None:
    app[STARTED_NS] = time.time_ns()
    app.router.add_route("GET", "/v1/daemon", get_daemon)
    app.router.add_route("PUT", "/v1/daemon", put_daemon)
    app.router.add_route("GET", "/v1/cluster", get_cluster)
    app.router.add_route("PUT", "/v1/cluster", put_cluster)
    app.router.add_route("GET", "/v1/health", health)


async def get_daemon(request: web.Request) -> web.Response:
    what = request.query.get("what", "")
    if what == "smap":
        return web.json_response(smap(request.app))
    if what == "bmd":
        return web.json_response(await bmd(request.app))
    raise BadRequest(f"invalid what={what!r} (supported: smap, bmd)")


async def get_cluster(request: web.Request) -> web.Response:
    what = request.query.get("what", "")
    msg = await read_action(request)  # the job queries' JSON body
    job_query = xactions.GET_QUERIES.get(what)
    if job_query is not None:
        return await job_query(request, msg)
    if what in ("smap", "bmd"):
        return await get_daemon(request)
    if what in AIS_CLUSTER_WHATS:
        raise NotSupported(f"what={what!r} is not served by this node")
    raise BadRequest(f"invalid what={what[:100]!r} for GET /v1/cluster (supported: smap, bmd,"
                     f" {', '.join(xactions.GET_QUERIES)})")


async def put_cluster(request: web.Request) -> web.Response:
    """Job control: `stop` aborts download jobs; `start` starts none of ours."""
    msg = await read_action(request)
    action = str(msg.get("action") or "") if msg else ""
    if request.query:
        raise BadRequest(f"unknown query parameter {next(iter(request.query))[:100]!r} for"
                         f" PUT /v1/cluster (action {action!r})")
    if msg is not None and action == "stop":
        return await xactions.stop(request, msg.get("value"))
    if msg is not None and action == "start":
        return xactions.start(msg.get("value"))
    if action in AIS_CLUSTER_ACTIONS:
        raise NotSupported(f"action {action!r} is not carried out by this node")
    raise unknown_action(msg, request)


async def put_daemon(request: web.Request) -> web.Response:
    msg = await read_action(request)
    if not msg or msg.get("action") != "shutdown-node":
        raise unknown_action(msg, request)
    # SIGTERM takes the same graceful path as Ctrl+C: jobs stop, the database closes.
    asyncio.get_running_loop().call_later(SHUTDOWN_DELAY, os.kill, os.getpid(), signal.SIGTERM)
    resp = web.Response()
    resp.force_close()
    return resp


async def health(request: web.Request) -> web.Response:
    """Liveness, `prr` and `readiness`: once the app serves, the node is ready."""
    uptime = str(time.time_ns() - request.app[STARTED_NS])
    return web.Response(headers={"Ais-Cluster-Uptime": uptime, "Ais-Node-Uptime": uptime})


def smap(app: web.Application) -> dict[str, Any]:
    node_id = app[NODE_ID]
    proxy, target = _snode(app, f"p{node_id}", "proxy"), _snode(app, node_id, "target")
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(app[STARTED_NS] / 1e9))
    return {"pmap": {proxy["daemon_id"]: proxy}, "proxy_si": proxy,
            "tmap": {target["daemon_id"]: target},
            "uuid": _cluster_uuid(node_id), "creation_time": created, "version": "3"}


def _snode(app: web.Application, daemon_id: str, daemon_type: str) -> dict[str, Any]:
    endpoint = app[CONFIG].endpoint
    url = urlsplit(endpoint)
    net = {"node_ip_addr": url.hostname or "", "daemon_port": str(url.port or ""),
           "direct_url": endpoint}
    return {"public_net": net, "intra_data_net": net, "intra_control_net": net,
            "daemon_type": daemon_type, "daemon_id": daemon_id, "flags": 0,
            "id_digest": xxhash.xxh64_intdigest(daemon_id.encode())}


async def bmd(app: web.Application) -> dict[str, Any]:
    """Bucket metadata as `ais ls` reads it: provider → namespace `@#` → bucket → props."""
    store = app[STORE]
    providers: dict[str, dict[str, dict[str, Any]]] = {}
    buckets = await store.list_buckets()
    for bck in buckets:
        props = await store.bucket_props(bck)
        providers.setdefault(bck.provider, {"@#": {}})["@#"][bck.name] = props
    return {"providers": providers, "uuid": _cluster_uuid(app[NODE_ID]),
            "version": str(len(buckets) + 1)}


def _cluster_uuid(node_id: str) -> str:
    """Stable per node, AIS-shaped (letters and digits)."""
    return f"C{xxhash.xxh64_hexdigest(node_id.encode())[:9]}"
