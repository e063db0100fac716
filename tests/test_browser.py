"""Web pages and DNS rebinding: a page the user opens must not drive the node.

Each attack is what a browser can send without a CORS preflight (a cross-origin `POST` with a
form content type, any request under a rebound name); the node refuses it and nothing changes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from aisdl.api.browser import (
    content_type_refusal,
    host_refusal,
    normalize_allowed_host,
    origin_refusal,
    own_names,
)
from aisdl.config import NodeConfig
from conftest import Node
from helpers import free_port, wait_job
from origin import Origin

EVIL = "http://evil.example"


def _start_body(origin: Origin, obj: str = "a.bin") -> bytes:
    return json.dumps({"type": "single", "bucket": {"name": "b", "provider": "ais"},
                       "link": origin.url_for(f"/{obj}"), "object_name": obj}).encode()


def _jobs(node: Any) -> list[Any]:
    r = requests.get(f"{node.endpoint}/v1/download", json={}, timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json())


def _assert_refused(r: requests.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()  # AIS error JSON, as every other refusal
    assert err["status"] == status
    for word in words:
        assert word in err["message"], err["message"]
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cross_origin_text_plain_download_start_is_refused(node, origin) -> None:
    origin.add("/a.bin", b"secret intranet bytes")
    url = f"{node.endpoint}/v1/download"
    form = {"Content-Type": "text/plain;charset=UTF-8"}
    # what fetch(url, {method: "POST", mode: "no-cors", body}) sends from another site
    r = requests.post(url, data=_start_body(origin), timeout=10,
                      headers={**form, "Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
    _assert_refused(r, 403, "evil.example")
    # a form of an older browser that sends no Origin: its content type gives it away
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x"):
        r = requests.post(url, data=_start_body(origin), headers={"Content-Type": content_type},
                          timeout=10)
        _assert_refused(r, 415, "application/json")
    r = requests.post(url, data=_start_body(origin), timeout=10,
                      headers={"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"})
    _assert_refused(r, 403)
    assert _jobs(node) == []
    assert origin.requests("/a.bin") == []


def test_rebound_name_is_refused(node, origin) -> None:
    origin.add("/a.bin", b"secret intranet bytes")
    rebound = {"Host": f"evil.example:{node.port}"}
    r = requests.get(f"{node.endpoint}/v1/buckets", headers=rebound, timeout=10)
    _assert_refused(r, 403, "evil.example", "--allowed-host")
    # the page's own origin is the rebound name: same-origin in the browser's eyes
    r = requests.post(f"{node.endpoint}/v1/download", data=_start_body(origin), timeout=10,
                      headers={**rebound, "Origin": f"http://evil.example:{node.port}",
                               "Content-Type": "application/json"})
    _assert_refused(r, 403, "--allowed-host")
    r = requests.head(f"{node.endpoint}/v1/buckets/b", headers=rebound, timeout=10)
    assert r.status_code == 403 and "--allowed-host" in r.headers["Hdr-Error"]
    assert _jobs(node) == []
    assert origin.requests("/a.bin") == []


def test_a_page_cannot_stop_the_node(node) -> None:
    url = f"{node.endpoint}/v1/daemon"
    body = json.dumps({"action": "shutdown-node"})
    r = requests.put(url, data=body, timeout=10,
                     headers={"Origin": EVIL, "Content-Type": "application/json"})
    _assert_refused(r, 403)
    r = requests.put(url, data=body, headers={"Origin": "null"}, timeout=10)
    _assert_refused(r, 403)
    r = requests.put(url, data=body, headers={"Host": "evil.example"}, timeout=10)
    _assert_refused(r, 403)
    # another port of the same host is another origin (a dev server's page, say)
    r = requests.put(url, data=body, timeout=10, headers={
        "Origin": "http://127.0.0.1:3000", "Sec-Fetch-Site": "same-site"})
    _assert_refused(r, 403)
    assert node.running()
    assert requests.get(f"{node.endpoint}/v1/health", timeout=5).status_code == 200


def test_no_cors_headers_even_on_a_preflight(node) -> None:
    r = requests.options(f"{node.endpoint}/v1/download", timeout=10, headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert r.status_code >= 400
    assert not any(h.lower().startswith("access-control-") for h in r.headers)
    r = requests.get(f"{node.endpoint}/v1/buckets", headers={"Origin": EVIL}, timeout=10)
    assert r.status_code == 200  # reads are not refused: the page cannot see the answer
    assert not any(h.lower().startswith("access-control-") for h in r.headers)


def test_own_names_and_clients_keep_working(node, origin) -> None:
    origin.add("/a.bin", b"abc")
    url = f"{node.endpoint}/v1/download"
    for host in (f"127.0.0.1:{node.port}", f"localhost:{node.port}", f"[::1]:{node.port}",
                 "localhost", "LOCALHOST.", "127.0.0.1:1"):
        r = requests.get(f"{node.endpoint}/v1/buckets", headers={"Host": host}, timeout=10)
        assert r.status_code == 200, (host, r.text)
    # a same-origin request (the node's own origin) with JSON starts a job
    r = requests.post(url, data=_start_body(origin), timeout=10, headers={
        "Origin": f"http://localhost:{node.port}", "Host": f"localhost:{node.port}",
        "Content-Type": "application/json; charset=utf-8", "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200, r.text
    assert wait_job(node.client(), r.json()["id"])["finished_cnt"] == 1
    # object bytes are bytes, whatever type they are sent with
    requests.post(f"{node.endpoint}/v1/buckets/c", json={"action": "create-bck"}, timeout=10)
    for i, content_type in enumerate(("text/plain", "application/json", "")):
        r = requests.put(f"{node.endpoint}/v1/objects/c/o{i}", data=b"x", timeout=10,
                         headers={"Content-Type": content_type} if content_type else {})
        assert r.status_code == 200, (content_type, r.text)


def test_http10_without_host_from_loopback(node) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(b"GET /v1/health HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n")[0]


def test_allowed_host_lets_a_name_through(tmp_path: Path, origin) -> None:
    origin.add("/a.bin", b"abc")
    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--allowed-host", "AIS.Team.Example", "--allowed-host", "10.9.8.7"))
    n.start()
    try:
        name = f"ais.team.example:{n.port}"
        r = requests.get(f"{n.endpoint}/v1/buckets", headers={"Host": name}, timeout=10)
        assert r.status_code == 200, r.text
        r = requests.post(f"{n.endpoint}/v1/download", data=_start_body(origin), timeout=10,
                          headers={"Host": name, "Origin": f"http://{name}",
                                   "Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        r = requests.get(f"{n.endpoint}/v1/buckets", headers={"Host": "other.example"},
                         timeout=10)
        _assert_refused(r, 403, "--allowed-host")
    finally:
        n.stop()


def test_allowed_host_must_be_a_name(tmp_path: Path) -> None:
    for bad in ("http://x.example", "x.example:8080"):
        r = subprocess.run([sys.executable, "-m", "aisdl", "serve", "--port", str(free_port()),
                            "--home", str(tmp_path / "home"), "--allowed-host", bad],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "--allowed-host" in r.stderr and "Traceback" not in r.stderr


# -- the decisions, table-driven --------------------------------------------------------------
LOOPBACK = own_names(NodeConfig(home=Path("/nonexistent")))


@pytest.mark.parametrize(("host", "peer", "allowed"), [
    ("127.0.0.1:8080", "127.0.0.1", True),
    ("localhost", "10.0.0.9", True),
    ("[::1]:8080", "::1", True),
    ("[::1]", "::1", True),
    ("8.8.8.8:80", "127.0.0.1", True),      # an address cannot be rebound: it is what was dialled
    ("[2001:db8::1]", "127.0.0.1", True),
    ("evil.example", "127.0.0.1", False),
    ("evil.example:8080", "127.0.0.1", False),
    ("localhost.evil.example", "127.0.0.1", False),
    ("127.0.0.1.nip.io", "127.0.0.1", False),
    ("[::1", "127.0.0.1", False),
    ("localhost:x", "127.0.0.1", False),
    ("", "127.0.0.1", False),
    (None, "127.0.0.1", True),               # HTTP/1.0 from this machine
    (None, "::ffff:127.0.0.1", True),
    (None, "10.0.0.9", False),
    (None, None, False),
])
def test_host_rule(host: str | None, peer: str | None, allowed: bool) -> None:
    assert (host_refusal(host, peer, LOOPBACK) is None) is allowed


def test_own_names_by_listen_address() -> None:
    home = Path("/nonexistent")
    assert {"localhost"} <= own_names(NodeConfig(home=home))
    wildcard = own_names(NodeConfig(home=home, host="0.0.0.0"))
    assert socket.gethostname().lower() in wildcard and "localhost" in wildcard
    named = own_names(NodeConfig(home=home, host="box.lan", allowed_hosts=("ais.example",)))
    assert {"box.lan", "ais.example"} <= named and "localhost" not in named


@pytest.mark.parametrize(("method", "origin", "site", "refused"), [
    ("POST", None, None, False),
    ("POST", "http://127.0.0.1:8080", "same-origin", False),
    ("POST", "http://127.0.0.1:8080", "none", False),
    ("POST", "HTTP://127.0.0.1:8080", None, False),
    ("POST", "http://127.0.0.1:80", None, True),
    ("POST", "http://127.0.0.1", None, True),
    ("POST", "https://127.0.0.1:8080", None, True),
    ("POST", "http://localhost:8080", None, True),  # another name is another origin
    ("POST", "null", None, True),
    ("DELETE", EVIL, None, True),
    ("PATCH", None, "cross-site", True),
    ("PUT", None, "same-site", True),
    ("GET", EVIL, "cross-site", False),
    ("HEAD", EVIL, None, False),
    ("OPTIONS", EVIL, None, False),
])
def test_origin_rule(method: str, origin: str | None, site: str | None, refused: bool) -> None:
    got = origin_refusal(method, origin, site, "http", "127.0.0.1:8080")
    assert (got is not None) is refused


@pytest.mark.parametrize(("content_type", "refused"), [
    (None, False), ("application/json", False), ("Application/JSON; charset=utf-8", False),
    ("text/plain", True), ("TEXT/PLAIN ;charset=UTF-8", True),
    ("application/x-www-form-urlencoded", True), ("multipart/form-data; boundary=--x", True),
    ("application/octet-stream", True),
])
def test_json_routes_take_json(content_type: str | None, refused: bool) -> None:
    assert (content_type_refusal("POST", "/v1/download", content_type) is not None) is refused
    assert content_type_refusal("PUT", "/v1/objects/{bucket}/{name}", content_type) is None
    assert content_type_refusal("GET", "/v1/download", content_type) is None


def test_allowed_host_values() -> None:
    assert normalize_allowed_host(" Box.LAN. ") == "box.lan"
    assert normalize_allowed_host("[fd00::1]") == "fd00::1"
    for bad in ("http://x", "x:80", "x/y", "", "a b", "*", "-x"):
        with pytest.raises(ValueError):
            normalize_allowed_host(bad)
