"""Typed client of a node's REST API, used by the CLI, the tests and users' scripts. Built on
the standard library's http.client: every `ais` command imports this module, and `requests`
alone took 40% of a command's start-up."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import ssl
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

from aisdl.errors import AisdlError, BadRequest, Conflict, NotFound
from aisdl.models import Bucket

__all__ = ["Client", "NodeUnreachable", "Response"]
BODY_BLOCK = 1 << 20  # bytes of a file body sent at once (http.client's default is 8 KiB)
_CLIENT_TIMEOUT: Any = object()
# AIS names the node that answers at the head of some messages (`t[Xq5...]: ais://b/o does not
# exist`); the error JSON carries it as `node` too. A user has no use for the id.
_NODE_PREFIX = re.compile(r"^(?:[tp]\[[^\]\s]*\]:\s*)+")


class NodeUnreachable(AisdlError):
    status = 503


TRUTHY = ("1", "t", "true", "y", "yes", "on")  # what AIS's CLI takes for "true"


def tls_from_env(environ: Mapping[str, str] = os.environ) -> ssl.SSLContext:
    """How the client checks an HTTPS node, from AIS's CLI variables: `AIS_CLIENT_CA` (a PEM
    bundle of the CAs to trust instead of the system's), `AIS_SKIP_VERIFY_CRT=true` (trust any
    certificate: for a test node only)."""
    if environ.get("AIS_SKIP_VERIFY_CRT", "").strip().lower() in TRUTHY:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    ca = environ.get("AIS_CLIENT_CA", "")
    try:
        return ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise AisdlError(f"cannot use AIS_CLIENT_CA={ca}: {reason}") from None


def _unreachable(endpoint: str, exc: Exception) -> NodeUnreachable:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return NodeUnreachable(
            f"the node at {endpoint} has a certificate this client does not trust"
            f" ({exc.verify_message}); set AIS_CLIENT_CA to the file of its CA's certificate,"
            " or AIS_SKIP_VERIFY_CRT=true to skip the check")
    return NodeUnreachable(f"cannot reach the node at {endpoint}: {exc}")


class Response:
    """What a call returned. Its body is read on first use; `iter_content` streams it."""

    def __init__(self, raw: http.client.HTTPResponse) -> None:
        self.raw = raw
        self.status_code, self.reason = raw.status, raw.reason
        self.headers = raw.headers  # an email.message.Message: case-insensitive lookups
        self._content: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = self.raw.read()
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def iter_content(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        if self._content is not None:
            yield self._content
            return
        while chunk := self.raw.read(chunk_size):
            yield chunk


def _raise_for(resp: Response) -> None:
    if resp.status_code < 400:
        return
    text = resp.headers.get("Hdr-Error") or resp.text
    try:
        message = json.loads(text)["message"]
    except (ValueError, KeyError, TypeError):
        message = text.strip() or f"{resp.status_code} {resp.reason}"
    message = _NODE_PREFIX.sub("", str(message))
    kind = {400: BadRequest, 404: NotFound, 409: Conflict}.get(resp.status_code, AisdlError)
    err = kind(message)
    err.status = resp.status_code
    raise err


def _body_size(data: Any) -> int | None:
    if isinstance(data, bytes | bytearray):
        return len(data)
    try:
        return int(os.fstat(data.fileno()).st_size - data.tell())
    except (AttributeError, OSError, ValueError):
        return None  # a stream of unknown length goes chunked


class Client:
    def __init__(self, endpoint: str, timeout: float = 30.0,
                 tls: ssl.SSLContext | None = None, token: str | None = None) -> None:
        """`tls`: how an `https://` endpoint's certificate is checked [default: as AIS's CLI
        does, from $AIS_CLIENT_CA and $AIS_SKIP_VERIFY_CRT (`tls_from_env`)]; `token`: an AIS
        AuthN token, sent with every request."""
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}  # AIS AuthN token
        url = urlsplit(self.endpoint)
        self._https = url.scheme == "https"
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (443 if self._https else 80)
        self._tls = (tls or tls_from_env()) if self._https else None
        self._conn: http.client.HTTPConnection | None = None  # kept alive between calls

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._tls is not None:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               blocksize=BODY_BLOCK, context=self._tls)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout,
                                          blocksize=BODY_BLOCK)

    def _pooled(self, timeout: float | None) -> http.client.HTTPConnection:
        """The kept-alive connection, unless the node closed it while we were idle."""
        conn = self._conn
        if conn is not None and conn.sock is not None and \
                select.select([conn.sock], [], [], 0)[0]:  # readable when idle: closed
            conn.close()
        if conn is None:
            conn = self._conn = self._connect(timeout)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                data: Any = None, timeout: Any = _CLIENT_TIMEOUT,
                stream: bool = False) -> Response:
        """One call; `stream` leaves the body unread (on a connection of its own). `timeout`:
        seconds, None to wait as long as it takes, or by default the client's."""
        wait: float | None = self.timeout if timeout is _CLIENT_TIMEOUT else timeout
        headers = {**self._auth, **(headers or {})}
        if json_body is not None:
            headers.setdefault("Content-Type", "application/json")
            data = json.dumps(json_body).encode()
        size = _body_size(data) if data is not None else 0
        if size is not None:
            headers["Content-Length"] = str(size)
        url = f"/v1/{path}" + (f"?{urlencode(params)}" if params else "")
        if self._https and method == "PUT" and path.startswith("objects/"):
            # Over HTTPS a node (as AIS's proxy) answers an object PUT's headers with a 307 to
            # the URL that takes the body, reading no body first: ask, then send it there.
            probe = self._exchange(self._connect(wait), method, url, None,
                                   {**headers, "Connection": "close"}, stream=False)
            location = probe.headers.get("Location")
            if probe.status_code not in (301, 307) or not location:
                _raise_for(probe)
                return probe
            target = urlsplit(location)
            url = target.path + (f"?{target.query}" if target.query else "")
        conn = self._connect(wait) if stream else self._pooled(wait)
        resp = self._exchange(conn, method, url, data, headers, stream=stream,
                              chunked=size is None)
        _raise_for(resp)
        return resp

    def _exchange(self, conn: http.client.HTTPConnection, method: str, url: str, data: Any,
                  headers: dict[str, str], *, stream: bool, chunked: bool = False) -> Response:
        try:
            conn.request(method, url, body=data, headers=headers, encode_chunked=chunked)
            resp = Response(conn.getresponse())
            if not stream:
                resp.content  # noqa: B018 - read now: the connection serves the next call
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _unreachable(self.endpoint, exc) from exc
        return resp

    # -- node -------------------------------------------------------------------------------
    def health(self, timeout: float = 2.0) -> bool:
        try:
            return self.request("GET", "health", timeout=timeout).ok
        except AisdlError:
            return False

    def shutdown(self) -> None:
        self.request("PUT", "daemon",
                     json_body={"action": "shutdown-node", "name": "", "value": None})

    # -- buckets ----------------------------------------------------------------------------
    def create_bucket(self, bck: Bucket) -> None:
        self.request("POST", f"buckets/{bck.name}", params={"provider": bck.provider},
                     json_body={"action": "create-bck", "name": "", "value": None})

    def destroy_bucket(self, bck: Bucket) -> None:
        self.request("DELETE", f"buckets/{bck.name}", params={"provider": bck.provider},
                     json_body={"action": "destroy-bck", "name": "", "value": None})

    def list_buckets(self, provider: str = "") -> list[Bucket]:
        resp = self.request("GET", "buckets", params={"provider": provider},
                            json_body={"action": "list", "name": "", "value": None})
        return [Bucket(b["provider"], b["name"]) for b in resp.json()]

    def bucket_props(self, bck: Bucket) -> dict[str, Any]:
        resp = self.request("HEAD", f"buckets/{bck.name}", params={"provider": bck.provider})
        props: dict[str, Any] = json.loads(resp.headers["Ais-Bucket-Props"])
        return props

    def bucket_exists(self, bck: Bucket) -> bool:
        try:
            self.bucket_props(bck)
        except NotFound:
            return False
        return True

    def set_bucket_props(self, bck: Bucket, value: dict[str, Any]) -> None:
        self.request("PATCH", f"buckets/{bck.name}", params={"provider": bck.provider},
                     json_body={"action": "set-bprops", "name": "", "value": value})

    def list_objects(self, bck: Bucket, prefix: str = "", cached: bool = False,
                     page_size: int = 0,
                     props: str = "name,size,version") -> Iterator[dict[str, Any]]:
        """Every object of the bucket, page by page: dicts with `n` (name), `s`, `v`, `f`
        (keys of empty values are left out, as AIS does)."""
        import msgspec  # only listings need it: every `ais` command starts faster without

        token, uuid = "", ""
        while True:
            msg = {"prefix": prefix, "pagesize": page_size, "uuid": uuid, "props": props,
                   "continuation_token": token, "flags": "1" if cached else "0", "target": ""}
            resp = self.request("GET", f"buckets/{bck.name}", params={"provider": bck.provider},
                                json_body={"action": "list", "name": "", "value": msg},
                                headers={"Accept": "application/msgpack"})
            page = msgspec.msgpack.decode(resp.content)
            yield from page.get("Entries") or []
            token, uuid = page.get("ContinuationToken", ""), page.get("UUID", "")
            if not token:
                return

    # -- objects ----------------------------------------------------------------------------
    def _obj_path(self, bck: Bucket, name: str) -> str:
        return f"objects/{bck.name}/{quote(name, safe='/')}"

    def put_object(self, bck: Bucket, name: str, data: bytes | BinaryIO) -> dict[str, str]:
        resp = self.request("PUT", self._obj_path(bck, name), params={"provider": bck.provider},
                            data=data, timeout=None)
        return dict(resp.headers)

    def get_object(self, bck: Bucket, name: str) -> Response:
        """A streaming response; read `.iter_content()` or `.content`."""
        return self.request("GET", self._obj_path(bck, name), params={"provider": bck.provider},
                            stream=True, timeout=None)

    def head_object(self, bck: Bucket, name: str) -> dict[str, str]:
        resp = self.request("HEAD", self._obj_path(bck, name), params={"provider": bck.provider})
        return dict(resp.headers)

    def delete_object(self, bck: Bucket, name: str) -> None:
        self.request("DELETE", self._obj_path(bck, name), params={"provider": bck.provider})

    def copy_object(self, bck: Bucket, name: str, to_bck: Bucket, to_name: str) -> None:
        """Copy an object on the node (AIS's `PUT ?object_to=`: the destination's uname)."""
        self.request("PUT", self._obj_path(bck, name),
                     params={"provider": bck.provider,
                             "object_to": f"{to_bck.provider}/@#/{to_bck.name}/{to_name}"},
                     timeout=None)

    # -- many objects: a list of names or a template (AIS `ListRange`) -----------------------
    def delete_objects(self, bck: Bucket, names: list[str] | None = None,
                       template: str = "") -> str:
        """Start removing the objects (ais buckets); returns the operation's id."""
        return self._listrange("DELETE", "delete-listrange", bck, names, template)

    def evict_objects(self, bck: Bucket, names: list[str] | None = None,
                      template: str = "") -> str:
        """Start dropping the stored copies of a remote-backed bucket's objects."""
        return self._listrange("DELETE", "evict-listrange", bck, names, template)

    def prefetch_objects(self, bck: Bucket, names: list[str] | None = None,
                         template: str = "", workers: int = 0) -> str:
        """Start a download job of the objects from the bucket's backend; returns its id."""
        extra = {"num-workers": workers} if workers else {}
        return self._listrange("POST", "prefetch-listrange", bck, names, template, extra)

    def _listrange(self, method: str, action: str, bck: Bucket, names: list[str] | None,
                   template: str, extra: dict[str, Any] | None = None) -> str:
        value = {"objnames": names} if names else {"template": template}
        resp = self.request(method, f"buckets/{bck.name}", params={"provider": bck.provider},
                            json_body={"action": action, "name": "",
                                       "value": {**value, **(extra or {})}})
        return resp.text.strip()

    # -- download jobs ----------------------------------------------------------------------
    def start_download(self, body: dict[str, Any]) -> str:
        job_id: str = self.request("POST", "download", json_body=body).json()["id"]
        return job_id

    def download_status(self, job_id: str, only_active: bool = False) -> dict[str, Any]:
        resp = self.request("GET", "download",
                            json_body={"id": job_id, "only_active_tasks": only_active})
        status: dict[str, Any] = resp.json()
        return status

    def list_downloads(self, regex: str = "", only_active: bool = False) -> list[dict[str, Any]]:
        resp = self.request("GET", "download",
                            json_body={"regex": regex, "only_active_tasks": only_active})
        jobs: list[dict[str, Any]] = resp.json()
        return jobs

    def abort_download(self, job_id: str) -> None:
        self.request("DELETE", "download/abort", json_body={"id": job_id})

    def remove_download(self, job_id: str) -> None:
        self.request("DELETE", "download/remove", json_body={"id": job_id})
