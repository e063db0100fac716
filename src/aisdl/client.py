"""Typed client of a node's REST API, used by the CLI, the tests and users' scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote

import msgspec
import requests

from aisdl.errors import AisdlError, BadRequest, Conflict, NotFound
from aisdl.models import Bucket

__all__ = ["Client", "NodeUnreachable"]


class NodeUnreachable(AisdlError):
    status = 503


def _raise_for(resp: requests.Response) -> None:
    if resp.status_code < 400:
        return
    text = resp.headers.get("Hdr-Error") or resp.text
    try:
        message = json.loads(text)["message"]
    except (ValueError, KeyError, TypeError):
        message = text.strip() or f"{resp.status_code} {resp.reason}"
    kind = {400: BadRequest, 404: NotFound, 409: Conflict}.get(resp.status_code, AisdlError)
    err = kind(message)
    err.status = resp.status_code
    raise err


class Client:
    def __init__(self, endpoint: str, timeout: float = 30.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", None) or {})
        if json_body is not None:
            headers.setdefault("Content-Type", "application/json")
        try:
            resp = self.session.request(
                method, f"{self.endpoint}/v1/{path}", params=params,
                data=kw.pop("data", None) if json_body is None else json.dumps(json_body),
                headers=headers, timeout=kw.pop("timeout", self.timeout), **kw)
        except requests.ConnectionError as exc:
            raise NodeUnreachable(f"cannot reach the node at {self.endpoint}: {exc}") from exc
        _raise_for(resp)
        return resp

    # -- node -------------------------------------------------------------------------------
    def health(self, timeout: float = 2.0) -> bool:
        try:
            return self.session.get(f"{self.endpoint}/v1/health", timeout=timeout).ok
        except requests.RequestException:
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

    def get_object(self, bck: Bucket, name: str) -> requests.Response:
        """A streaming response; read `.iter_content()` or `.content`."""
        return self.request("GET", self._obj_path(bck, name), params={"provider": bck.provider},
                            stream=True, timeout=None)

    def head_object(self, bck: Bucket, name: str) -> dict[str, str]:
        resp = self.request("HEAD", self._obj_path(bck, name), params={"provider": bck.provider})
        return dict(resp.headers)

    def delete_object(self, bck: Bucket, name: str) -> None:
        self.request("DELETE", self._obj_path(bck, name), params={"provider": bck.provider})

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
