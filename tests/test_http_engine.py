"""http(s) links fetched on libcurl: what differs from the aiohttp path is the TLS stack and
the trust store it reads, so HTTPS is tested here against a real TLS server on 127.0.0.1; and
both paths (libcurl, and aiohttp for throttled jobs) must ask for the same thing."""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aisdl.models import Bucket
from conftest import Node
from helpers import free_port, is_finished, wait_job
from origin import payload, virtual_bytes

FILES = {f"/d/f{i}": payload(str(i), 200_000 + i) for i in range(5)}


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Files(BaseHTTPRequestHandler):
    """Serves FILES; like a web server with compression on, it gzips a body for a client that
    says it accepts gzip."""

    protocol_version = "HTTP/1.1"
    hits = 0
    agents: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        type(self).hits += 1
        type(self).agents.append(self.headers.get("User-Agent", ""))
        body = FILES.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert, key = self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Files.hits = 0
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()


def https_node(tmp_path: Path, env: dict[str, str]) -> Node:
    node = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
                extra_args=("--fetch-procs", "2", "--retry-delay", "50ms"), env=env)
    node.start()
    return node


def test_https_with_a_trusted_certificate_downloads_every_byte(https, tmp_path):
    base, cert = https
    node = https_node(tmp_path, {"SSL_CERT_FILE": str(cert)})
    try:
        c = node.client()
        job = c.start_download({"type": "range", "bucket": {"name": "tls"},
                                "template": base + "/d/f{0..4}"})
        st = wait_job(c, job)
        assert (st["finished_cnt"], st["error_cnt"]) == (5, 0)
        for i in range(5):
            assert c.get_object(Bucket("ais", "tls"), f"f{i}").content == FILES[f"/d/f{i}"]
    finally:
        node.stop()


def test_an_untrusted_certificate_is_one_clear_error_without_retries(https, tmp_path):
    base, _ = https
    node = https_node(tmp_path, {})
    try:
        c = node.client()
        job = c.start_download({"type": "single", "bucket": {"name": "tls"},
                                "link": base + "/d/f0", "object_name": "f0"})
        st = wait_job(c, job)
        assert (st["finished_cnt"], st["error_cnt"]) == (0, 1)
        assert "TLS certificate is not trusted" in st["download_errors"][0]["error"]
        assert _Files.hits == 0  # refused during the handshake
        assert "retrying" not in node.log()  # terminal: a retry cannot make it trusted
        assert list(c.list_objects(Bucket("ais", "tls"))) == []
    finally:
        node.stop()


@pytest.fixture
def web(node) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Files.agents = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("limits", [{}, {"bytes_per_hour": 10**12}], ids=["libcurl", "aiohttp"])
def test_a_compressing_server_still_yields_the_files_bytes(web, node, limits):
    """Asking for gzip while storing bodies as sent would store compressed bytes under the
    file's name: neither path asks, and both say who they are."""
    c = node.client()
    job = c.start_download({"type": "range", "bucket": {"name": "web"},
                            "template": web + "/d/f{0..4}", "limits": limits})
    st = wait_job(c, job)
    assert (st["finished_cnt"], st["error_cnt"]) == (5, 0)
    for i in range(5):
        assert c.get_object(Bucket("ais", "web"), f"f{i}").content == FILES[f"/d/f{i}"]
    assert {a.split("/")[0] for a in _Files.agents} == {"aisdl"}


class _Redirects(BaseHTTPRequestHandler):
    """`/to?<url>` answers 302 to <url>; `/loop` redirects to itself."""

    protocol_version = "HTTP/1.1"
    hits = 0

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        type(self).hits += 1
        path, _, query = self.path.partition("?")
        self.send_response(302)
        self.send_header("Location", query if path == "/to" else "/loop")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def redirects() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirects)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Redirects.hits = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("limits", [{}, {"bytes_per_hour": 10**12}], ids=["libcurl", "aiohttp"])
def test_redirects_are_followed_and_checked(redirects, origin, node, limits):
    """A moved file is fetched from where it went; a redirect to the cloud metadata address is
    refused before any connection; a redirect loop is one terminal error, not a retry storm."""
    origin.add("/moved.bin", payload("m", 150_000))
    c = node.client()
    job = c.start_download({"type": "multi", "bucket": {"name": "r"}, "objects": {
        "moved": f"{redirects}/to?{origin.url_for('/moved.bin')}",
        "metadata": f"{redirects}/to?http://169.254.169.254/latest/meta-data/",
        "loop": f"{redirects}/loop"}, "limits": limits})
    st = wait_job(c, job)
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 2)
    assert c.get_object(Bucket("ais", "r"), "moved").content == payload("m", 150_000)
    errors = {e["name"]: e["error"] for e in st["download_errors"]}
    assert "egress blocked: 169.254.169.254" in errors["metadata"]
    assert "too many redirects" in errors["loop"]
    assert _Redirects.hits <= 1 + 1 + 11  # no retries of either failure


class _Odd(BaseHTTPRequestHandler):
    """Bodies a careful downloader must not take at face value: `/chunked` has no length,
    `/badmd5` carries the Content-MD5 of other bytes, `/short` ends before its length."""

    protocol_version = "HTTP/1.1"
    hits: dict[str, int] = {}
    body = payload("o", 300_000)

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        hits = type(self).hits
        hits[self.path] = hits.get(self.path, 0) + 1
        self.send_response(200)
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(self.body), 70_000):
                piece = self.body[i:i + 70_000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/badmd5":
            self.send_header("Content-MD5", base64.b64encode(
                hashlib.md5(b"other bytes").digest()).decode())
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.path == "/short":
            self.wfile.write(self.body[:100_000])
            self.close_connection = True
            return
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("limits", [{}, {"bytes_per_hour": 10**12}], ids=["libcurl", "aiohttp"])
def test_only_whole_verified_bodies_are_stored(node, limits):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Odd.hits = {}
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        c = node.client()
        job = c.start_download({"type": "multi", "bucket": {"name": "odd"}, "limits": limits,
                                "objects": {n: f"{base}/{n}" for n in ("chunked", "badmd5",
                                                                       "short")}})
        st = wait_job(c, job, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 2)
    assert c.get_object(Bucket("ais", "odd"), "chunked").content == _Odd.body
    assert [e["n"] for e in c.list_objects(Bucket("ais", "odd"))] == ["chunked"]
    errors = {e["name"]: e["error"] for e in st["download_errors"]}
    assert errors["badmd5"] == "MD5 of the downloaded bytes does not match the source's"
    assert errors["short"].startswith("connection lost while reading the body")
    assert _Odd.hits["/badmd5"] > 1 and _Odd.hits["/short"] > 1  # transient: retried
    leftovers = [p for p in node.home.rglob("*") if ".work" in p.parts and p.is_file()]
    assert leftovers == []


@pytest.mark.parametrize("limits", [{}, {"bytes_per_hour": 10**12}], ids=["libcurl", "aiohttp"])
def test_a_cut_multi_mib_body_resumes_from_every_byte_that_arrived(origin, node, limits):
    """Bodies are written in 1 MiB batches: a connection lost after 1.5 MiB (one batch on
    disk, half of one in memory) must still resume from byte 1.5 Mi, not from 1 Mi or 0."""
    size = 3 << 20
    origin.add_virtual("/cut.bin", size, seed="cut")
    origin.fault("/cut.bin", "reset", n=1)
    c = node.client()
    job = c.start_download({"type": "single", "bucket": {"name": "cut"}, "limits": limits,
                            "link": origin.url_for("/cut.bin"), "object_name": "cut.bin"})
    st = wait_job(c, job)
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0)
    gets = origin.requests("/cut.bin", "GET")
    assert [r.headers.get("Range") for r in gets] == [None, f"bytes={size // 2}-"]
    assert c.get_object(Bucket("ais", "cut"), "cut.bin").content == virtual_bytes("cut", size)


@pytest.mark.parametrize("limits", [{}, {"bytes_per_hour": 10**12}], ids=["libcurl", "aiohttp"])
def test_a_slow_file_shows_its_bytes_as_they_arrive_and_is_not_timed_out(origin, node, limits):
    """A file trickling in at 100 KB/s: its progress moves before any 1 MiB batch is written,
    and bytes arriving every 0.1 s keep a 0.5 s timeout from firing."""
    size = 400_000
    origin.add("/trickle.bin", payload("t", size))
    origin.fault("/trickle.bin", "slow", rate=100_000)
    c = node.client()
    job = c.start_download({"type": "single", "bucket": {"name": "slow"}, "limits": limits,
                            "timeout": "500ms", "link": origin.url_for("/trickle.bin"),
                            "object_name": "trickle.bin"})
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        st = c.download_status(job, only_active=True)
        seen |= {int(t["downloaded"]) for t in st.get("current_tasks", [])
                 if int(t["total"]) == size}
        moving = [n for n in seen if 0 < n < size]
        if is_finished(st) or len(moving) >= 2:
            break
        time.sleep(0.2)
    assert len(moving) >= 2, seen  # bytes shown as they come, not one jump at the end
    st = wait_job(c, job)
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0), st.get("download_errors")
    assert c.get_object(Bucket("ais", "slow"), "trickle.bin").content == payload("t", size)
