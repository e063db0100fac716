"""Web pages and DNS rebinding: a page the user opens in a browser must not drive the node.

A browser lets any page send some requests to any address without asking the server first (no
CORS preflight): GET, HEAD and POST with a form content type (`text/plain`,
`application/x-www-form-urlencoded`, `multipart/form-data`). And a page whose name the
attacker re-points at 127.0.0.1 after loading it (DNS rebinding) is same-origin with the node
and reads its answers. Three rules close both, before any handler runs:

- `Host` must be one of the node's own names (rebinding needs a name the attacker controls),
  or an address literal (an address cannot be re-pointed: it is what the browser dialled). Any
  port: port forwards, proxies and containers change the port, and the name alone is what
  defeats rebinding; the port is compared where it matters, in the `Origin` rule.
- A state-changing request (any method but GET, HEAD, OPTIONS) that carries an `Origin` must
  come from the node's own origin: the scheme and `Host` of the request itself, port included
  (`http://localhost:3000`, a local dev server's page, is another origin). `Sec-Fetch-Site:
  cross-site` or `same-site` is refused likewise; `null` is never the node's own.
- A route that reads JSON (action messages, a download start, cluster and daemon actions) takes
  `application/json` or no `Content-Type` at all, so the form types an older browser sends
  without `Origin` are refused. AIStore's SDK, its Go client and our client send JSON as
  `application/json`; object bytes (PUT) are bytes under any type.

The node never answers with CORS headers, so no page of another origin reads an answer either.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from aiohttp import web
from aiohttp.typedefs import Middleware

from aisdl.api.accepted import Body, accepts
from aisdl.api.middleware import Handler
from aisdl.config import NodeConfig
from aisdl.errors import AisdlError

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
JSON_BODIES = (Body.ACTION, Body.JSON)
LOOPBACK_NAMES = frozenset(("localhost",))
WILDCARD_HOSTS = frozenset(("0.0.0.0", "::", ""))
DEFAULT_PORTS = {"http": 80, "https": 443}
# A DNS name: dot-separated labels of letters, digits and hyphens, not starting with a hyphen.
_DNS_NAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(\.(?!-)[a-z0-9_-]{1,63})*$")


class RefusedForBrowsers(AisdlError):
    status = 403


class NotJson(AisdlError):
    status = 415


def normalize_allowed_host(text: str) -> str:
    """A name or address users reach the node by, as `--allowed-host` gives it: lower case,
    no trailing dot, an IPv6 address without brackets. ValueError for anything else (a URL,
    a port, a pattern)."""
    name = text.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if _is_address(name) or (_DNS_NAME.match(name) and len(name) <= 253):
        return name
    raise ValueError(f"{text!r} is not a host name or address (no scheme, port or path)")


def own_names(config: NodeConfig) -> frozenset[str]:
    """The names (lower case, no trailing dot) under which `Host` is accepted; address literals
    are accepted whatever they are (see the module's docstring)."""
    names = {normalize_allowed_host(h) for h in config.allowed_hosts}
    host = config.host.strip().lower().rstrip(".")
    if config.loopback_only:
        names |= LOOPBACK_NAMES
    if host in WILDCARD_HOSTS:
        names |= LOOPBACK_NAMES
        for name in (socket.gethostname(), socket.getfqdn()):
            if name:
                names.add(name.lower().rstrip("."))
    elif not _is_address(host.strip("[]")):
        names.add(host)
    return frozenset(names)


def host_refusal(host_header: str | None, peer: str | None,
                 names: frozenset[str]) -> str | None:
    """Why a request with this `Host` from this peer address is refused; None: it is not."""
    if host_header is None:
        if peer is not None and _is_loopback(peer):
            return None  # HTTP/1.0 from this machine: no browser sends a request without Host
        return "a request without a Host header is accepted only from this machine"
    split = _split_host(host_header)
    if split is not None and (_is_address(split[0]) or split[0] in names):
        return None
    shown = host_header[:100]
    return (f"Host {shown!r} is not a name of this node (its names: "
            f"{', '.join(sorted(names)) or 'none'}, and its addresses); a web page under a "
            "re-pointed name must not reach it. If users reach the node by this name, start it"
            f" with `ais serve --allowed-host {_host_part(shown)}`")


def origin_refusal(method: str, origin: str | None, fetch_site: str | None, scheme: str,
                   host_header: str | None) -> str | None:
    """Why a request is refused as coming from another origin's page; None: it is not."""
    if method.upper() in SAFE_METHODS:
        return None
    if origin is not None:
        own = _origin_of(f"{scheme}://{host_header}") if host_header else None
        if own is None or _origin_of(origin) != own:
            return (f"a {method} from a web page of another origin ({origin[:100]!r}) is"
                    " refused: only the node's own origin may change anything")
    if fetch_site is not None and fetch_site.strip().lower() in ("cross-site", "same-site"):
        return (f"a {method} from a web page of another site is refused "
                f"(Sec-Fetch-Site: {fetch_site[:20]})")
    return None


def content_type_refusal(method: str, route: str, content_type: str | None) -> str | None:
    """Why a request to a route that reads JSON is refused for its Content-Type; None: it is
    not (no Content-Type at all is fine: only a script, which sends Origin, can send that)."""
    if method.upper() in SAFE_METHODS or content_type is None:
        return None
    if accepts(method.upper(), route).body not in JSON_BODIES:
        return None
    essence = content_type.split(";", 1)[0].strip().lower()
    if essence == "application/json" or essence.endswith("+json"):
        return None
    return (f"{method} {route} takes a JSON body sent with Content-Type: application/json, not"
            f" {content_type[:100]!r}")


def guard_browsers(config: NodeConfig) -> Middleware:
    """The middleware that applies the three rules; inside `ais_errors`, which words refusals."""
    names = own_names(config)

    @web.middleware
    async def refuse_other_sites(request: web.Request, handler: Handler) -> web.StreamResponse:
        hosts = request.headers.getall("Host", [])
        if len(hosts) > 1:
            raise RefusedForBrowsers("a request with more than one Host header is refused")
        host = hosts[0] if hosts else None
        why = host_refusal(host, request.remote, names)
        if why is None:
            why = origin_refusal(request.method, request.headers.get("Origin"),
                                 request.headers.get("Sec-Fetch-Site"), request.scheme, host)
        if why is not None:
            raise RefusedForBrowsers(why)
        resource = request.match_info.route.resource
        if resource is not None:
            why = content_type_refusal(request.method, resource.canonical,
                                       request.headers.get("Content-Type"))
            if why is not None:
                raise NotJson(why)
        return await handler(request)

    return refuse_other_sites


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_loopback(peer: str) -> bool:
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def _split_host(value: str) -> tuple[str, int | None] | None:
    """`host[:port]` or `[v6][:port]` → (host lower case without trailing dot, port); None for
    anything else."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        if not _is_address(host):
            return None
    else:
        host, _, port_text = value.partition(":")
        rest = f":{port_text}" if _ else ""
    port: int | None = None
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or int(rest[1:]) > 65535:
            return None
        port = int(rest[1:])
    host = host.rstrip(".")
    return (host, port) if host else None


def _host_part(value: str) -> str:
    split = _split_host(value)
    return split[0] if split else "NAME"


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of `scheme://host[:port]`, the port filled in for the scheme."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS or "/" in rest:
        return None
    split = _split_host(rest)
    if split is None:
        return None
    host, port = split
    return scheme, host, DEFAULT_PORTS[scheme] if port is None else port
