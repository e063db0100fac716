"""Token checking: AIStore AuthN's JWTs, so an AIS AuthN server can issue this node's tokens.

With a key configured (`ais serve --auth-secret` for HS256, `--auth-public-key` for RS256),
every request but `/v1/health` carries `Authorization: Bearer <JWT>`. Only the configured
algorithm is accepted (no `alg: none`, no HS256 signed with an RS256 node's public key). The
claims are AuthN's: `sub` (older tokens: `username`), `exp`, `admin`, `clusters` (`[{id, perm}]`)
and `buckets` (`[{bck, perm}]`), `perm` being AIS's access bits as a decimal string.

No token, or one that does not hold (signature, expiry, `nbf`, another cluster): 401 with the
reason; a token that holds but does not grant what the route needs: 403. Both are answered
before anything is read or changed, and both, with every admin action, leave one audit line.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntFlag
from typing import Any

import jwt
from aiohttp import web
from jwt.warnings import InsecureKeyLengthWarning

from aisdl.api.buckets import read_action
from aisdl.api.cluster import _cluster_uuid as cluster_uuid
from aisdl.api.download import BIG_REQUESTS, INLINE_BODY
from aisdl.api.keys import DB, NODE_ID
from aisdl.api.middleware import Handler, error_response
from aisdl.api.objects import parse_uname
from aisdl.errors import AisdlError, parse_json
from aisdl.models import Bucket

audit = logging.getLogger("aisdl.audit")


class Access(IntFlag):
    """AIS's access bits (api/apc/access.go), in AIS's order: a token's `perm` uses them."""

    GET = 1 << 0
    OBJ_HEAD = 1 << 1
    PUT = 1 << 2
    APPEND = 1 << 3
    OBJ_DELETE = 1 << 4
    OBJ_MOVE = 1 << 5
    PROMOTE = 1 << 6
    OBJ_UPDATE = 1 << 7
    BCK_HEAD = 1 << 8
    OBJ_LIST = 1 << 9
    PATCH = 1 << 10
    BCK_SET_ACL = 1 << 11
    LIST_BUCKETS = 1 << 12
    SHOW_CLUSTER = 1 << 13
    CREATE_BUCKET = 1 << 14
    DESTROY_BUCKET = 1 << 15
    MOVE_BUCKET = 1 << 16
    ADMIN = 1 << 17


RO = Access.GET | Access.OBJ_HEAD | Access.BCK_HEAD | Access.OBJ_LIST
RW = RO | Access.PUT | Access.APPEND | Access.OBJ_DELETE | Access.OBJ_MOVE
BUCKET_ADMIN = Access.PATCH | Access.BCK_SET_ACL | Access.OBJ_UPDATE
CLUSTER_RO = Access.LIST_BUCKETS | Access.SHOW_CLUSTER
CLUSTER_RW = CLUSTER_RO | Access.CREATE_BUCKET | Access.DESTROY_BUCKET | Access.MOVE_BUCKET
CLUSTER_BITS = CLUSTER_RW | Access.ADMIN  # granted cluster-wide only, never per bucket
# What changes the node beyond one bucket's objects: each such request leaves an audit line.
ADMIN_ACTIONS = Access.ADMIN | Access.CREATE_BUCKET | Access.DESTROY_BUCKET | BUCKET_ADMIN
PERMS = {"ro": RO, "rw": RW, "su": Access(~0 & ((1 << 18) - 1))}

# AIS AuthN's own secrets may be short: `ais serve` and `ais auth token create` say so once
# (short_secret_warning), rather than PyJWT on every token.
MIN_SECRET_BYTES = 32
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)


def short_secret_warning(secret: bytes) -> str | None:
    if len(secret) >= MIN_SECRET_BYTES:
        return None
    return (f"Warning: the secret is {len(secret)} bytes; HS256 wants {MIN_SECRET_BYTES} or more"
            " (e.g. `openssl rand -hex 32`)")


# The dashboard's page and files hold no data (it asks for a token, then reads /ui/api/...).
OPEN_ROUTES = frozenset({("GET", "/v1/health"), ("GET", "/"), ("GET", "/ui"),
                         ("GET", "/ui/{file}")})


@dataclass(frozen=True)
class Verifier:
    """The node's key and its one algorithm."""

    algorithm: str  # "HS256" or "RS256"
    key: bytes


class Unauthorized(AisdlError):
    status = 401


class Forbidden(AisdlError):
    status = 403


@dataclass(frozen=True)
class Claims:
    subject: str
    admin: bool
    clusters: tuple[tuple[str, int], ...]  # (cluster id, "" for every cluster; access bits)
    buckets: tuple[tuple[str, Bucket, int], ...]  # (cluster id, bucket, access bits)

    def grants(self, cluster: str, bucket: Bucket | None, need: Access) -> bool:
        """AIS's rule: admin has all; a bucket's own grant overrides the cluster's; this
        cluster's grant overrides the default one (id "")."""
        if self.admin:
            return True
        cluster_acl = self._cluster_acl(cluster)
        cluster_need = need & CLUSTER_BITS
        if cluster_need and (cluster_acl is None or cluster_acl & cluster_need != cluster_need):
            return False
        object_need = need & ~CLUSTER_BITS
        if not object_need:
            return True
        if bucket is not None:
            for acl_cluster, acl_bucket, perm in self.buckets:
                if acl_cluster in (cluster, "") and acl_bucket == bucket:
                    return perm & object_need == object_need
        return cluster_acl is not None and cluster_acl & object_need == object_need

    def is_for(self, cluster: str) -> bool:
        """Whether the token names this cluster at all (admin tokens hold everywhere)."""
        return (self.admin or self._cluster_acl(cluster) is not None
                or any(c in (cluster, "") for c, _, _ in self.buckets))

    def _cluster_acl(self, cluster: str) -> int | None:
        default = None
        for acl_cluster, perm in self.clusters:
            if acl_cluster == cluster:
                return perm
            if acl_cluster == "":
                default = perm
        return default


def verify(verifier: Verifier, token: str) -> Claims:
    """The claims of a token whose signature, `exp` and `nbf` hold; Unauthorized otherwise."""
    try:
        raw = jwt.decode(token, verifier.key, algorithms=[verifier.algorithm],
                         options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.ImmatureSignatureError:
        raise Unauthorized("token not yet valid (nbf is in the future)") from None
    except jwt.InvalidAlgorithmError:
        raise Unauthorized(f"token is not signed with {verifier.algorithm}") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("invalid token signature") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"invalid token: {exc}") from None
    except (jwt.InvalidTokenError, jwt.InvalidKeyError) as exc:
        raise Unauthorized(f"invalid token: {str(exc)[:200]}") from None
    return parse_claims(raw)


def parse_claims(raw: Mapping[str, Any]) -> Claims:
    subject = raw.get("sub") or raw.get("username")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("invalid token: no subject (sub)")
    try:
        clusters = tuple((str(c.get("id") or ""), _perm(c.get("perm")))
                         for c in raw.get("clusters") or ())
        buckets = tuple(_bucket_acl(b) for b in raw.get("buckets") or ())
    except (AttributeError, TypeError, ValueError, AisdlError) as exc:
        raise Unauthorized(f"invalid token: malformed ACL ({str(exc)[:200]})") from None
    return Claims(subject, raw.get("admin") is True, clusters, buckets)


def _perm(value: Any) -> int:
    """AuthN writes `perm` as a decimal string (Go's `json:",string"`); a number reads too."""
    if isinstance(value, bool):
        raise ValueError("perm is not a number")
    return int(value or 0)


def _bucket_acl(acl: Mapping[str, Any]) -> tuple[str, Bucket, int]:
    bck = acl["bck"]
    namespace = bck.get("namespace") or {}
    return (str(namespace.get("uuid") or ""), Bucket.of(bck["name"], bck.get("provider")),
            _perm(acl.get("perm")))


# -- what each route needs ------------------------------------------------------------------------
BUCKETS = "/v1/buckets/{bucket}"
OBJECTS = "/v1/objects/{bucket}/{name}"
UI_JOB = "/ui/api/jobs/{id}"  # one job, as the dashboard reads it (api/ui)
ByAction = Mapping[str, Access]
# (method, route) → the access it needs: one value, or one per action of its action message.
NEEDS: dict[tuple[str, str], Access | ByAction] = {
    ("GET", "/v1/buckets"): Access.LIST_BUCKETS,
    ("GET", BUCKETS): Access.OBJ_LIST,
    ("POST", BUCKETS): {"create-bck": Access.CREATE_BUCKET, "prefetch-listrange": Access.PUT},
    ("DELETE", BUCKETS): {"destroy-bck": Access.DESTROY_BUCKET,
                          "delete-listrange": Access.OBJ_DELETE,
                          "evict-listrange": Access.OBJ_DELETE},
    ("HEAD", BUCKETS): Access.BCK_HEAD,
    ("PATCH", BUCKETS): Access.PATCH,
    ("PUT", OBJECTS): Access.PUT,  # an append, or a copy's source: see _needs
    ("GET", OBJECTS): Access.GET,
    ("HEAD", OBJECTS): Access.OBJ_HEAD,
    ("DELETE", OBJECTS): Access.OBJ_DELETE,
    ("PATCH", OBJECTS): Access.OBJ_UPDATE,
    ("GET", "/v1/daemon"): Access.SHOW_CLUSTER,
    ("PUT", "/v1/daemon"): Access.ADMIN,
    ("GET", "/v1/cluster"): Access.SHOW_CLUSTER,
    ("PUT", "/v1/cluster"): Access.ADMIN,
    ("POST", "/v1/download"): Access.PUT,  # on the job's destination bucket
    ("GET", "/v1/download"): Access.SHOW_CLUSTER,  # one job's status: list on its bucket
    ("HEAD", "/v1/download"): Access.SHOW_CLUSTER,
    ("DELETE", "/v1/download/{action}"): Access.PUT,  # on the job's bucket
    ("GET", UI_JOB): Access.OBJ_LIST,  # on the job's bucket, as its AIS status
    ("GET", "/metrics"): Access.SHOW_CLUSTER,  # the node's figures (api/metrics.py)
}
JOB_ROUTES = frozenset({("GET", "/v1/download"), ("HEAD", "/v1/download"),
                        ("DELETE", "/v1/download/{action}")})


async def _needs(request: web.Request, route: str) -> list[tuple[Bucket | None, Access]]:
    """What `request` needs, bucket by bucket (None: cluster-wide)."""
    need = NEEDS.get((request.method, route), Access.ADMIN)  # a new route: admin until listed
    if not isinstance(need, Access):
        msg = await read_action(request)
        action = str(msg.get("action") or "") if msg else ""
        need = need.get(action, Access.ADMIN)
    bucket = _bucket_of(request, route)
    if route == OBJECTS and request.method == "PUT":
        if "append_type" in request.query:
            need = Access.APPEND
        elif "object_to" in request.query:  # a copy: read here, put there
            try:
                target, _ = parse_uname(request.query["object_to"])
            except AisdlError:
                target = None  # refused by the handler; cluster-wide put meanwhile
            return [(bucket, Access.GET), (target, Access.PUT)]
    if (request.method, route) in JOB_ROUTES:
        job_id = (await _json_body(request)).get("id")
        if job_id:  # one job: its bucket's grant (an unknown job: cluster-wide, then 404)
            bucket = await _job_bucket(request, str(job_id))
            need = Access.OBJ_LIST if request.method != "DELETE" else need
    if route == UI_JOB:  # an unknown job: cluster-wide, then 404
        bucket = await _job_bucket(request, request.match_info["id"])
    if route == "/v1/download" and request.method == "POST":
        spec = (await _json_body(request)).get("bucket")
        try:
            bucket = Bucket.of(spec["name"], spec.get("provider")) if spec else None
        except (AisdlError, KeyError, TypeError, AttributeError):
            bucket = None  # the handler says what is wrong; cluster-wide put meanwhile
    return [(bucket, need)]


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; {} for anything else (its handler says what is wrong).
    Parsed as the start handler parses it: bounded (errors.parse_json), and on a thread, two
    at a time, when it is big, so the event loop is not held."""
    if not request.body_exists:
        return {}
    raw = await request.read()
    try:
        if len(raw) <= INLINE_BODY:
            body = parse_json(raw, "request body")
        else:
            async with request.app[BIG_REQUESTS]:
                body = await asyncio.get_running_loop().run_in_executor(
                    None, parse_json, raw, "request body")
    except AisdlError:
        return {}
    return body if isinstance(body, dict) else {}


async def _job_bucket(request: web.Request, job_id: str) -> Bucket | None:
    """A download job's destination bucket, without reading its spec's object list."""
    def query(conn: sqlite3.Connection) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(
            "SELECT json_extract(spec, '$.bucket.provider') AS provider,"
            " json_extract(spec, '$.bucket.name') AS bucket FROM jobs WHERE id = ?",
            (job_id,)).fetchone()
        return row

    row = await request.app[DB].run(query)
    try:
        return Bucket.of(row["bucket"], row["provider"]) if row is not None else None
    except AisdlError:
        return None


def _bucket_of(request: web.Request, route: str) -> Bucket | None:
    name = request.match_info.get("bucket")
    if name is None or route not in (BUCKETS, OBJECTS):
        return None
    try:
        return Bucket.of(name, request.query.get("provider") or "ais")
    except AisdlError:
        return None


def _token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing token: send Authorization: Bearer <token>")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected Bearer <token>")
    return token.strip()


def checking(verifier: Verifier) -> Any:
    """The middleware that lets a request through only with a token that grants its route."""

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = (resource.canonical.rstrip("/") or "/") if resource is not None else request.path
        if (request.method, route) in OPEN_ROUTES:
            return await handler(request)
        subject = "-"
        try:
            claims = verify(verifier, _token(request))
            subject = claims.subject
            cluster = cluster_uuid(request.app[NODE_ID])
            if not claims.is_for(cluster):
                raise Unauthorized(f"token is not valid for cluster {cluster}")
            if resource is None:  # no such route: the router's 404 or 405 says so
                return await handler(request)
            needs = await _needs(request, route)
            for bucket, need in needs:
                if not claims.grants(cluster, bucket, need):
                    where = f" on bucket {bucket.cname}" if bucket else ""
                    raise Forbidden(f"user {subject!r} has no {_describe(need)} access{where}")
        except AisdlError as exc:
            if exc.status not in (401, 403):
                raise
            audit.warning("refused %d: sub=%s %s %s: %s", exc.status, subject, request.method,
                          request.path, exc.message)
            response = error_response(request, exc.status, exc.message)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="aisdl"'
            return response
        if any(need & ADMIN_ACTIONS for _, need in needs):
            audit.warning("admin action: sub=%s %s %s", subject, request.method, request.path)
        return await handler(request)

    return check_token


def _describe(need: Access) -> str:
    return "|".join(flag.name or "" for flag in Access if flag & need).lower()

