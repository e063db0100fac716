"""The REST API of buckets, objects and the cluster map, on the wire (spec/ais-rest-api.md),
against the real app served in-process on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import requests

from aisdl.client import Client
from aisdl.models import Bucket
from helpers_app import InProcessNode

LIST = {"action": "list", "name": "", "value": None}


@pytest.fixture
def http(inproc: InProcessNode) -> Iterator[Session]:
    with Session(inproc.endpoint) as s:
        yield s


@pytest.fixture
def bucket(http: Session, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh ais bucket named after the test."""
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    http.call("POST", f"buckets/{name}", {"action": "create-bck", "name": "", "value": None})
    yield name
    http.call("DELETE", f"buckets/{name}", {"action": "destroy-bck", "name": "", "value": None})


class Session(requests.Session):
    """`requests` as the SDK uses it: JSON bodies on every verb, `provider=ais`."""

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.trust_env = False
        self.base = endpoint + "/v1/"

    def call(self, method: str, path: str, body: Any = None, *, query: str = "provider=ais",
             **kw: Any) -> requests.Response:
        url = self.base + path + (("&" if "?" in path else "?") + query if query else "")
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        data = json.dumps(body) if body is not None else kw.pop("data", None)
        return self.request(method, url, data=data, headers=headers, timeout=10, **kw)


def lso(**kw: Any) -> dict[str, Any]:
    value = {"prefix": "", "pagesize": 0, "uuid": "", "props": "", "continuation_token": "",
             "flags": "0", "target": ""}
    return {"action": "list", "name": "", "value": {**value, **kw}}


def list_page(http: Session, bck: str, **kw: Any) -> dict[str, Any]:
    r = http.call("GET", f"buckets/{bck}", lso(**kw), headers={"Accept": "application/msgpack"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/msgpack"
    page: dict[str, Any] = msgspec.msgpack.decode(r.content)
    return page


def raw_request(endpoint: str, data: bytes, cut: bool = False) -> bytes:
    """Send raw bytes (an un-normalized path, or with `cut` a body cut short by closing our
    side) and read the answer."""
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        if cut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


# -- cluster -------------------------------------------------------------------------------------
def test_smap_bmd_health(http: Session, inproc: InProcessNode, bucket: str) -> None:
    smap = http.call("GET", "daemon?what=smap", query="").json()
    assert smap["proxy_si"]["public_net"]["direct_url"] == inproc.endpoint
    assert smap["tmap"] and isinstance(smap["version"], str)
    (target,) = smap["tmap"].values()
    assert target["daemon_type"] == "target" and target["public_net"]["daemon_port"].isdigit()
    bmd = http.call("GET", "daemon?what=bmd", query="").json()
    assert bmd["providers"]["ais"]["@#"][bucket]["checksum"]["type"] == "xxhash2"
    for query in ("", "prr=true", "readiness=true"):
        r = http.call("GET", "health", query=query)
        assert r.status_code == 200 and r.content == b""
        assert int(r.headers["Ais-Node-Uptime"]) > 0
    assert http.call("GET", "daemon?what=nope", query="").status_code == 400


# -- buckets -------------------------------------------------------------------------------------
def test_bucket_create_list_head_destroy(http: Session) -> None:
    for path in ("buckets", "buckets/"):
        r = http.call("GET", path, LIST, query="provider=")
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
        assert r.json() == []
    create = {"action": "create-bck", "name": "", "value": None}
    assert http.call("POST", "buckets/b1", create).status_code == 200
    r = http.call("POST", "buckets/b1", create)
    err = r.json()
    assert r.status_code == 409 and err["status"] == 409
    assert err["message"] == 'bucket "ais://b1" already exists'
    assert err["tcode"] == "ErrBucketAlreadyExists"
    assert {"method", "url_path", "remote_addr", "caller", "node"} <= set(err)
    assert http.call("POST", "buckets/.bad", create).status_code == 400
    listed = http.call("GET", "buckets", LIST, query="provider=ais&provider=ais").json()
    assert listed == [{"name": "b1", "provider": "ais", "namespace": {"uuid": "", "name": ""}}]
    assert http.call("GET", "buckets", LIST, query="provider=gcp").json() == []
    head = http.call("HEAD", "buckets/b1")
    props = json.loads(head.headers["Ais-Bucket-Props"])
    assert props["provider"] == "ais" and props["versioning"]["enabled"] is True
    assert all(isinstance(props[k], str) for k in ("access", "features", "bid", "created"))
    destroy = {"action": "destroy-bck", "name": "", "value": None}
    assert http.call("DELETE", "buckets/b1", destroy).status_code == 200
    r = http.call("DELETE", "buckets/b1", destroy)
    assert r.status_code == 404 and r.json()["message"] == 'bucket "ais://b1" does not exist'
    head = http.call("HEAD", "buckets/b1")
    assert head.status_code == 404 and head.content == b""
    assert json.loads(head.headers["Hdr-Error"])["tcode"] == "ErrBckNotFound"


def test_set_and_reset_bucket_props(http: Session, bucket: str) -> None:
    def patch(value: Any, action: str = "set-bprops") -> requests.Response:
        return http.call("PATCH", f"buckets/{bucket}",
                         {"value": value, "action": action, "name": ""})

    # As in AIS, a backend must exist: this node has no cloud it can reach, so nothing changes.
    r = patch({"backend_bck": {"name": "x", "provider": "gs",
                               "namespace": {"uuid": "", "name": ""}}})
    assert r.status_code == 424 and "gs://x" in r.json()["message"]
    props = Client(http.base[:-4]).bucket_props(Bucket("ais", bucket))
    assert props["backend_bck"]["name"] == "" and props["provider"] == "ais"
    r = patch({"backend_bck": {"name": "y", "provider": "ais"}})
    assert r.status_code == 400
    assert r.json()["message"] == 'Backend bucket "ais://y" must be remote'
    assert patch({"versioning": {"enabled": False}}).status_code == 200
    assert patch(None, "reset-bprops").status_code == 200
    props = json.loads(http.call("HEAD", f"buckets/{bucket}").headers["Ais-Bucket-Props"])
    assert props["versioning"]["enabled"] is True
    assert patch({}, "nonsense").status_code == 400
    assert http.call("PATCH", "buckets/missing", {"value": {}, "action": "set-bprops",
                                                   "name": ""}).status_code == 404


# -- objects -------------------------------------------------------------------------------------
def test_put_get_head_delete(http: Session, bucket: str) -> None:
    path = f"objects/{bucket}/dir/a%20b%2Bc.txt"
    r = http.call("PUT", path, data=b"hello world")
    assert r.status_code == 200, r.text
    assert r.headers["Ais-Checksum-Type"] == "xxhash2"
    assert r.headers["Ais-Checksum-Value"] == "45ab6734b21e6968"
    assert r.headers["Ais-Version"] == "1" and int(r.headers["Ais-Atime"]) > 1e18
    r = http.call("GET", path)
    assert r.content == b"hello world"
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Length"] == "11" and "Content-Encoding" not in r.headers
    v1 = http.call("HEAD", path).headers
    assert v1["Ais-Name"] == "dir/a b+c.txt" and v1["Ais-Present"] == "true"
    assert v1["Content-Length"] == "11" and v1["Ais-Bucket-Name"] == bucket
    v2 = http.call("HEAD", path + "?props=name%2Csize").headers
    assert v2["Content-Length"] == "11" and "Ais-Checksum-Value" not in v2
    v2 = http.call("HEAD", path + "?props=checksum,atime,version,copies,custom,location").headers
    assert v2["Ais-Version"] == "1" and v2["Ais-Mirror-Copies"] == "1"
    assert v2["Ais-Location"].startswith("t[")
    assert http.call("HEAD", path + "?props=cached").status_code == 400
    # a literal `+` stays a `+`
    assert http.call("GET", f"objects/{bucket}/dir/a%20b+c.txt").content == b"hello world"
    assert http.call("PUT", path, data=b"v2").headers["Ais-Version"] == "2"
    assert http.call("DELETE", path, headers={"Content-Length": "0"}).status_code == 200
    r = http.call("DELETE", path)
    assert r.status_code == 404
    assert r.json()["message"] == f"ais://{bucket}/dir/a b+c.txt doesn't exist"


def test_missing_object_and_bucket(http: Session, inproc: InProcessNode, bucket: str) -> None:
    r = http.call("GET", f"objects/{bucket}/nope")
    node_id = http.call("GET", "daemon?what=smap", query="").json()["tmap"]
    assert r.status_code == 404 and r.json()["tcode"] == "ErrNotFound"
    assert r.json()["message"] == f"t[{next(iter(node_id))}]: ais://{bucket}/nope does not exist"
    r = http.call("HEAD", f"objects/{bucket}/nope?props=name,size")
    assert r.status_code == 404 and "Hdr-Error" in r.headers
    r = http.call("PUT", "objects/nobck/o", data=b"x")
    assert r.status_code == 404 and r.json()["message"] == 'bucket "ais://nobck" does not exist'
    r = http.call("GET", "buckets/nobck", lso(), headers={"Accept": "application/msgpack"})
    assert r.status_code == 404 and r.json()["tcode"] == "ErrBckNotFound"


def test_chunked_put_and_custom_metadata(http: Session, bucket: str) -> None:
    path = f"objects/{bucket}/chunked"
    r = http.call("PUT", path, data=iter([b"abc", b"def"]),
                  headers={"Ais-Custom-Md": "k1=v1"})
    assert r.status_code == 200 and "chunked" in r.request.headers.get("Transfer-Encoding", "")
    assert http.call("GET", path).content == b"abcdef"
    patch = {"action": "", "name": "", "value": {"k2": "v2", "ETag": "e1"}}
    assert http.call("PATCH", path, patch).status_code == 200
    h = http.call("HEAD", path).headers
    assert sorted(h["Ais-Custom-Md"].split(", ")) == ["ETag=e1", "k1=v1", "k2=v2"]
    assert h["ETag"] == "e1"
    patch["value"] = {"only": "this"}
    assert http.call("PATCH", path + "?set-new-custom=true", patch).status_code == 200
    assert http.call("GET", path).headers["Ais-Custom-Md"] == "only=this"


def test_ranges(http: Session, bucket: str) -> None:
    path = f"objects/{bucket}/r"
    http.call("PUT", path, data=b"hello world")
    cases = {"bytes=1-3": (b"ell", "bytes 1-3/11"), "bytes=-5": (b"world", "bytes 6-10/11"),
             "bytes=6-": (b"world", "bytes 6-10/11"), "bytes=0-100": (b"hello world",
                                                                      "bytes 0-10/11")}
    for rng, (body, content_range) in cases.items():
        r = http.call("GET", path, headers={"Range": rng})
        assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, body,
                                                                          content_range)
        assert r.headers["Accept-Ranges"] == "bytes"
    for rng in ("bytes=11-", "bytes=0-1,3-4", "bytes=-0"):
        r = http.call("GET", path, headers={"Range": rng})
        assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */11"


def test_invalid_object_names(inproc: InProcessNode, bucket: str) -> None:
    for name in ("a/../b", "%2E%2E/x", "dir/", "~/x", "a//b"):
        req = (f"GET /v1/objects/{bucket}/{name}?provider=ais HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Connection: close\r\n\r\n")
        answer = raw_request(inproc.endpoint, req.encode())
        assert answer.startswith(b"HTTP/1.1 400"), (name, answer[:200])
        assert b"invalid object name" in answer


def test_short_body_is_not_committed(http: Session, inproc: InProcessNode, bucket: str) -> None:
    req = (f"PUT /v1/objects/{bucket}/short?provider=ais HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    raw_request(inproc.endpoint, req + b"only ten b", cut=True)
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:  # the node notices the cut asynchronously
        assert http.call("HEAD", f"objects/{bucket}/short").status_code == 404
        time.sleep(0.1)
    put_dir = Path(inproc.config.home / "data" / ".work" / "put")
    assert not [p for p in put_dir.rglob("*") if p.is_file()] if put_dir.exists() else True


def test_name_conflict_with_directory(http: Session, bucket: str) -> None:
    assert http.call("PUT", f"objects/{bucket}/a", data=b"1").status_code == 200
    r = http.call("PUT", f"objects/{bucket}/a/b", data=b"2")
    assert r.status_code == 409 and "cannot also be a directory" in r.json()["message"]


# -- list objects --------------------------------------------------------------------------------
def test_list_objects_pages(http: Session, bucket: str) -> None:
    for i in range(5):
        http.call("PUT", f"objects/{bucket}/p/obj{i}", data=b"x" * i)
    http.call("PUT", f"objects/{bucket}/other", data=b"o")
    first = list_page(http, bucket, prefix="p/", pagesize=2)
    assert first["UUID"] and first["Flags"] == 0 and first["ContinuationToken"] == "p/obj1"
    assert first["Entries"] == [{"n": "p/obj0", "f": 64}, {"n": "p/obj1", "s": 1, "f": 64}]
    second = list_page(http, bucket, prefix="p/", pagesize=2, uuid=first["UUID"],
                       continuation_token="p/obj1")
    assert second["UUID"] == first["UUID"] and second["ContinuationToken"] == "p/obj3"
    third = list_page(http, bucket, prefix="p/", pagesize=2, uuid=first["UUID"],
                      continuation_token="p/obj3")
    assert [e["n"] for e in third["Entries"]] == ["p/obj4"] and third["ContinuationToken"] == ""
    full = list_page(http, bucket, props="name,size,version,checksum,atime,custom,location",
                     flags="1")
    assert [e["n"] for e in full["Entries"]] == ["other", *(f"p/obj{i}" for i in range(5))]
    entry = full["Entries"][0]
    assert entry["v"] == "1" and entry["cs"] and entry["a"].endswith("UTC") and entry["t"]
    names_only = list_page(http, bucket, props="name", start_after="p/obj3")
    assert names_only["Entries"] == [{"n": "p/obj4", "f": 64}]
    r = http.call("GET", f"buckets/{bucket}", lso(prefix="p/", pagesize=2))
    as_json = r.json()
    assert r.headers["Content-Type"].startswith("application/json")
    assert as_json["entries"][1] == {"name": "p/obj1", "size": "1", "flags": 64}
    r = http.call("GET", f"buckets/{bucket}", lso(props="bogus"))
    assert r.status_code == 400


def test_client_round_trip(inproc: InProcessNode, tmp_path: Path) -> None:
    client = Client(inproc.endpoint)
    bck = Bucket("ais", "viaclient")
    client.create_bucket(bck)
    client.put_object(bck, "x/y z", b"data")
    assert client.get_object(bck, "x/y z").content == b"data"
    assert [e["n"] for e in client.list_objects(bck, page_size=1)] == ["x/y z"]
    assert client.head_object(bck, "x/y z")["Content-Length"] == "4"
    client.delete_object(bck, "x/y z")
    client.destroy_bucket(bck)
    assert bck not in client.list_buckets()
