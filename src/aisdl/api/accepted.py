"""What each REST route carries out: its query parameters (and their values), the actions of its
JSON action messages and the `Ais-*` request headers it reads.

Anything else is refused before the handler runs, so nothing changes: 501 when AIStore's API
defines the name (a real AIS request this node does not support, api/ais_names.py), 400 when it
does not. A route never answers 200 to a request of which it ignored a part (an ignored
`?object_to=` had stored an empty body over the source object; an ignored `?archpath=` returned
the whole shard). To accept a name, add it to its route's line below, with its behaviour and a
test of it (tests/test_api_sweep.py asks where that test is).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from aiohttp import web

from aisdl.api import ais_names
from aisdl.api.buckets import read_action
from aisdl.errors import BadRequest, NotSupported


@dataclass(frozen=True)
class Values:
    """The values a query parameter may take: `accepted` (None: any, the handler checks it);
    outside them, `ais` are values AIS defines (501; None: every other value) and the rest 400."""

    accepted: frozenset[str] | None
    ais: frozenset[str] | None = frozenset()


def one_of(*accepted: str, ais: frozenset[str] | None = frozenset()) -> Values:
    return Values(frozenset(accepted), ais)


# AIS reads booleans with cos.ParseBool: Go's strconv.ParseBool and a few words; "" is false.
TRUE_WORDS = frozenset(("true", "1", "t", "T", "TRUE", "True", "y", "yes", "on"))
FALSE_WORDS = frozenset(("", "false", "0", "f", "F", "FALSE", "False", "n", "no", "off"))
ANY = Values(None)
BOOL = Values(TRUE_WORDS | FALSE_WORDS)
FALSE_ONLY = Values(FALSE_WORDS, ais=TRUE_WORDS)  # "true" asks for what we do not do
GLOBAL_NAMESPACE = one_of("", ais=None)  # every named namespace is AIS's, none is ours


def is_true(value: str) -> bool:
    """A boolean query value as AIS reads it (the table admits only AIS's spellings)."""
    return value in TRUE_WORDS


class Body(Enum):
    NONE = "no body"
    ACTION = "an action message"  # {"action", "name", "value"}: its action is checked here
    DATA = "object bytes"
    JSON = "the route's own JSON"  # validated field by field by its handler


@dataclass(frozen=True)
class Accepts:
    params: Mapping[str, Values] = field(default_factory=dict)
    actions: frozenset[str] = frozenset()
    headers: frozenset[str] = frozenset()  # `Ais-*` request headers, as AIS spells them
    body: Body = Body.NONE


def names(*listed: str) -> frozenset[str]:
    return frozenset(listed)


BUCKET = {"provider": ANY, "namespace": GLOBAL_NAMESPACE}
HEALTH = {"prr": BOOL, "readiness": BOOL, "apr": BOOL}  # one node: always ready, and primary
DAEMON_WHAT = one_of("smap", "bmd", ais=ais_names.WHAT_VALUES)
CLUSTER_WHAT = one_of("qryxstats", "status", "status_all", "running_all", "smap", "bmd",
                      ais=ais_names.WHAT_VALUES)
APPEND_TYPE = one_of("append", "flush")
BUCKETS = "/v1/buckets/{bucket}"
OBJECTS = "/v1/objects/{bucket}/{name}"

# (method, route as the router spells it) → what it carries out.
ROUTES: dict[tuple[str, str], Accepts] = {
    ("GET", "/v1/buckets"): Accepts(BUCKET, names("list"), body=Body.ACTION),
    ("GET", BUCKETS): Accepts(BUCKET, names("list"), body=Body.ACTION),
    ("POST", BUCKETS): Accepts(BUCKET, names("create-bck", "prefetch-listrange"),
                               body=Body.ACTION),
    ("DELETE", BUCKETS): Accepts(BUCKET, names("destroy-bck", "delete-listrange",
                                               "evict-listrange"), body=Body.ACTION),
    ("HEAD", BUCKETS): Accepts(BUCKET),
    ("PATCH", BUCKETS): Accepts(BUCKET, names("set-bprops", "reset-bprops"), body=Body.ACTION),
    ("PUT", OBJECTS): Accepts({**BUCKET, "object_to": ANY, "latest-ver": FALSE_ONLY,
                               "synchronize": FALSE_ONLY, "append_type": APPEND_TYPE,
                               "append_handle": ANY},
                              headers=names("Ais-Checksum-Type", "Ais-Checksum-Value",
                                            "Ais-Custom-Md"), body=Body.DATA),
    ("GET", OBJECTS): Accepts({**BUCKET, "archpath": ANY, "archregx": ANY, "archmode": ANY,
                               "archmime": ANY}),
    ("HEAD", OBJECTS): Accepts({**BUCKET, "props": ANY}),
    ("DELETE", OBJECTS): Accepts(BUCKET, names("delete"), body=Body.ACTION),
    ("PATCH", OBJECTS): Accepts({**BUCKET, "set-new-custom": BOOL}, body=Body.ACTION),
    ("GET", "/v1/daemon"): Accepts({"what": DAEMON_WHAT}),
    ("PUT", "/v1/daemon"): Accepts(actions=names("shutdown-node"), body=Body.ACTION),
    ("GET", "/v1/health"): Accepts(HEALTH),
    ("GET", "/v1/cluster"): Accepts({"what": CLUSTER_WHAT}, body=Body.JSON),
    ("PUT", "/v1/cluster"): Accepts(actions=names("stop", "start"), body=Body.ACTION),
    ("POST", "/v1/download"): Accepts(body=Body.JSON),
    ("GET", "/v1/download"): Accepts(body=Body.JSON),
    ("HEAD", "/v1/download"): Accepts(body=Body.JSON),
    ("DELETE", "/v1/download/{action}"): Accepts(body=Body.JSON),
    # the dashboard (api/ui): its page, its files, and one job as the page reads it
    ("GET", "/"): Accepts(),
    ("GET", "/ui"): Accepts(),
    ("GET", "/ui/{file}"): Accepts(),
    ("GET", "/ui/api/jobs/{id}"): Accepts({"errors_after": ANY, "tasks_after": ANY}),
    ("GET", "/metrics"): Accepts(),  # Prometheus sends no parameters
}
NOTHING = Accepts()  # a route missing from the table accepts no name at all
_AIS_HEADERS = {h.lower() for h in ais_names.HEADERS}


def accepts(method: str, route: str) -> Accepts:
    return ROUTES.get((method, route.rstrip("/") or "/"), NOTHING)


async def refuse_unsupported(request: web.Request) -> None:
    """Raise NotSupported (501) or BadRequest (400) for the first thing in `request` that its
    route does not carry out; return when it carries out all of it."""
    resource = request.match_info.route.resource
    if resource is None:
        _refuse_unrouted(request)
        return  # no such route: the router's 404 or 405 says so
    rule = accepts(request.method, resource.canonical)
    where = f"{request.method} {request.path}"
    for name, value in request.query.items():
        if len(set(request.query.getall(name))) > 1:  # which one would it be?
            raise BadRequest(f"query parameter {name[:100]!r} has different values for {where}")
        _check_param(rule, name, value, where)
    own_headers = {h.lower() for h in rule.headers}
    for header in request.headers:
        if header.lower().startswith("ais-") and header.lower() not in own_headers:
            if header.lower() in _AIS_HEADERS:
                raise NotSupported(f"header {header!r} is not supported by this node for {where}")
            raise BadRequest(f"unknown header {header!r} for {where}")
    if rule.body is Body.ACTION:
        msg = await read_action(request)
        action = str(msg.get("action") or "") if msg else ""
        if action and action not in rule.actions:
            if action in ais_names.ACTIONS:
                raise NotSupported(f"action {action!r} is not supported by this node for"
                                   f" {where}{_listed(rule.actions, 'supported')}")
            raise BadRequest(f"invalid action {action[:100]!r} for {where}"
                             f"{_listed(rule.actions, 'supported')}")
    elif rule.body is Body.NONE and request.body_exists and (await request.read()).strip():
        raise BadRequest(f"{where} takes no request body")


def _refuse_unrouted(request: web.Request) -> None:
    """A method and path no route serves is 501 when AIS serves them (a promote is a POST on
    /v1/objects, dsort lives under /v1/sort); anything else is left to the router's 404/405."""
    parts = request.path.split("/")
    if len(parts) > 2 and parts[1] == "v1" and parts[2] in ais_names.ENDPOINTS:
        raise NotSupported(f"{request.method} {request.path[:200]} is not served by this node")


def _check_param(rule: Accepts, name: str, value: str, where: str) -> None:
    values = rule.params.get(name)
    if values is None:
        if name in ais_names.QUERY_PARAMS:
            raise NotSupported(f"query parameter {name!r} is not supported by this node for"
                               f" {where}")
        raise BadRequest(f"unknown query parameter {name[:100]!r} for {where}"
                         f"{_listed(rule.params, 'accepted')}")
    if values.accepted is None or value in values.accepted:
        return
    if values.ais is None or value in values.ais:
        raise NotSupported(f"{name}={value[:100]!r} is not supported by this node for {where}"
                           f"{_listed(values.accepted, 'supported')}")
    raise BadRequest(f"invalid value {value[:100]!r} of query parameter {name!r} for {where}"
                     f"{_listed(values.accepted, 'expected')}")


def _listed(names: Mapping[str, Values] | frozenset[str], what: str) -> str:
    shown = ", ".join(sorted(name or '""' for name in names))
    return f" ({what}: {shown or 'none'})"
