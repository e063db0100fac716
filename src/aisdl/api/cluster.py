"""`/v1/daemon` (cluster map, bucket metadata, shutdown) and `/v1/health`.

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

from aisdl.api.buckets import read_action, unknown_action
from aisdl.api.keys import CONFIG, NODE_ID, STORE
from aisdl.errors import BadRequest

STARTED_NS = web.AppKey("started_ns", int)
SHUTDOWN_DELAY = 0.1  # seconds: time for the 200 to reach the client before SIGTERM


def setup(app: web.Application) -> None:
    app[STARTED_NS] = time.time_ns()
    app.router.add_route("GET", "/v1/daemon", get_daemon)
    app.router.add_route("PUT", "/v1/daemon", put_daemon)
    app.router.add_route("GET", "/v1/health", health)


async def get_daemon(request: web.Request) -> web.Response:
    what = request.query.get("what", "")
    if what == "smap":
        return web.json_response(smap(request.app))
    if what == "bmd":
        return web.json_response(await bmd(request.app))
    raise BadRequest(f"invalid what={what!r} (supported: smap, bmd)")


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
