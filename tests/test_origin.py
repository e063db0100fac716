"""The test origin server itself behaves as the end-to-end tests expect."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import socket
import time

import pytest
import requests

from helpers import free_port, is_finished
from origin import Origin, crc32c, payload, virtual_bytes


@pytest.fixture
def http() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def test_payload_and_crc32c() -> None:
    assert payload("a", 1000) == payload("a", 1000)
    assert payload("a", 1000) != payload("b", 1000)
    assert len(payload("a", 123_457)) == 123_457 and payload("x", 0) == b""
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


def test_get_head_404(origin: Origin, http: requests.Session) -> None:
    data = payload("a", 200_000)
    origin.add("/dir/a.bin", data)
    r = http.get(origin.url_for("/dir/a.bin"))
    assert r.status_code == 200 and r.content == data
    assert r.headers["ETag"] == f"\"{hashlib.md5(data).hexdigest()}\""
    assert r.headers["Content-Length"] == str(len(data))
    assert email.utils.parsedate_to_datetime(r.headers["Last-Modified"])
    assert r.headers["Accept-Ranges"] == "bytes"
    assert "x-goog-generation" not in r.headers

    h = http.head(origin.url_for("/dir/a.bin"))
    assert h.status_code == 200 and h.content == b""
    assert h.headers["Content-Length"] == str(len(data))
    assert h.headers["ETag"] == r.headers["ETag"]

    assert http.get(origin.url_for("/nope")).status_code == 404
    origin.remove("/dir/a.bin")
    assert http.get(origin.url_for("/dir/a.bin")).status_code == 404
    assert origin.hits("/dir/a.bin") == 3 and origin.hits("/nope") == 1
    assert [r.method for r in origin.requests("/dir/a.bin")] == ["GET", "HEAD", "GET"]


def test_quoted_paths_and_options(origin: Origin, http: requests.Session) -> None:
    origin.add("/a dir/f ü.txt", b"x", etag=False, last_modified=False)
    r = http.get(origin.url_for("/a dir/f ü.txt"))
    assert r.status_code == 200 and r.content == b"x"
    assert "ETag" not in r.headers and "Last-Modified" not in r.headers

    origin.add("/chunked", b"hello world", content_length=False, etag="custom")
    r = http.get(origin.url_for("/chunked"))
    assert r.content == b"hello world" and "Content-Length" not in r.headers
    assert r.headers["Transfer-Encoding"] == "chunked" and r.headers["ETag"] == "\"custom\""


def test_change_content(origin: Origin, http: requests.Session) -> None:
    origin.add("/f", b"one", gcs=True)
    r1 = http.get(origin.url_for("/f"))
    origin.add("/f", b"one", gcs=True)  # same content: same generation
    assert http.get(origin.url_for("/f")).headers["x-goog-generation"] == \
        r1.headers["x-goog-generation"]
    origin.add("/f", b"two", gcs=True)
    r2 = http.get(origin.url_for("/f"))
    assert r2.content == b"two" and r2.headers["ETag"] != r1.headers["ETag"]
    assert int(r2.headers["x-goog-generation"]) > int(r1.headers["x-goog-generation"])
    lm = email.utils.parsedate_to_datetime
    assert lm(r2.headers["Last-Modified"]) > lm(r1.headers["Last-Modified"])
    origin.set_last_modified("/f", 1_600_000_000)
    assert http.head(origin.url_for("/f")).headers["Last-Modified"] == \
        email.utils.formatdate(1_600_000_000, usegmt=True)


def test_gcs_headers(origin: Origin, http: requests.Session) -> None:
    data = payload("g", 5000)
    origin.add("/g", data, gcs=True)
    r = http.get(origin.url_for("/g"))
    assert int(r.headers["x-goog-generation"]) > 0
    assert origin.generation("/g") == int(r.headers["x-goog-generation"])
    hashes = dict(p.split("=", 1) for p in r.headers["x-goog-hash"].split(","))
    assert base64.b64decode(hashes["md5"]) == hashlib.md5(data).digest()
    assert int.from_bytes(base64.b64decode(hashes["crc32c"]), "big") == crc32c(data)


def test_conditional_get(origin: Origin, http: requests.Session) -> None:
    origin.add("/c", b"content")
    url = origin.url_for("/c")
    first = http.get(url)
    etag, lm = first.headers["ETag"], first.headers["Last-Modified"]
    r = http.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["ETag"] == etag
    assert http.get(url, headers={"If-None-Match": "\"other\""}).status_code == 200
    assert http.get(url, headers={"If-Modified-Since": lm}).status_code == 304
    earlier = email.utils.formatdate(
        email.utils.parsedate_to_datetime(lm).timestamp() - 10, usegmt=True)
    assert http.get(url, headers={"If-Modified-Since": earlier}).status_code == 200
    # If-None-Match wins over If-Modified-Since
    assert http.get(url, headers={"If-None-Match": "\"x\"", "If-Modified-Since": lm}
                    ).status_code == 200
    assert origin.requests("/c")[1].headers["if-none-match"] == etag


def test_range_and_if_range(origin: Origin, http: requests.Session) -> None:
    data = payload("r", 1000)
    origin.add("/r", data)
    url = origin.url_for("/r")
    etag = origin.etag("/r")
    r = http.get(url, headers={"Range": "bytes=100-"})
    assert r.status_code == 206 and r.content == data[100:]
    assert r.headers["Content-Range"] == "bytes 100-999/1000"
    assert r.headers["Content-Length"] == "900"
    r = http.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["Content-Range"] == "bytes 10-19/1000"
    r = http.get(url, headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = http.get(url, headers={"Range": "bytes=990-5000"})
    assert r.status_code == 206 and r.content == data[990:]
    r = http.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */1000"

    r = http.get(url, headers={"Range": "bytes=500-", "If-Range": etag})
    assert r.status_code == 206 and r.content == data[500:]
    r = http.get(url, headers={"Range": "bytes=500-", "If-Range": "\"stale\""})
    assert r.status_code == 200 and r.content == data
    lm = http.head(url).headers["Last-Modified"]
    assert http.get(url, headers={"Range": "bytes=500-", "If-Range": lm}).status_code == 206
    assert http.get(url, headers={"Range": "bytes=500-", "If-Range": "Mon, 01 Jan 2001 "
                                  "00:00:00 GMT"}).status_code == 200
    sent = origin.requests("/r")[-1].headers
    assert sent["Range"] == "bytes=500-" and "If-Range" in sent


def test_fault_status(origin: Origin, http: requests.Session) -> None:
    origin.add("/s", b"data")
    origin.fault("/s", "status", status=403)
    for _ in range(3):
        assert http.get(origin.url_for("/s")).status_code == 403
    assert http.head(origin.url_for("/s")).status_code == 403
    origin.fault("/missing", "status", status=500)  # also where there is no file
    assert http.get(origin.url_for("/missing")).status_code == 500
    origin.clear_fault("/s")
    assert http.get(origin.url_for("/s")).content == b"data"
    assert origin.hits("/s") == 5


def test_fault_fail_then_ok(origin: Origin, http: requests.Session) -> None:
    origin.add("/f", b"data")
    origin.fault("/f", "fail_then_ok", n=2)
    codes = [http.get(origin.url_for("/f")).status_code for _ in range(4)]
    assert codes == [500, 500, 200, 200]
    origin.fault("/f", "fail_then_ok", status=503)
    assert [http.get(origin.url_for("/f")).status_code for _ in range(2)] == [503, 200]


def test_fault_retry_after(origin: Origin, http: requests.Session) -> None:
    origin.add("/t", b"data")
    origin.fault("/t", "retry_after", n=2, seconds=3)
    r = http.get(origin.url_for("/t"))
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"
    assert http.get(origin.url_for("/t")).status_code == 429
    assert http.get(origin.url_for("/t")).status_code == 200


def _raw_get(url: str, path: str) -> tuple[bytes, bytes]:
    """GET with a bare socket, read to EOF: (head, body) exactly as the server sent them."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def test_fault_reset(origin: Origin, http: requests.Session) -> None:
    data = payload("reset", 400_000)
    origin.add("/x", data)
    origin.fault("/x", "reset", n=2)
    assert http.head(origin.url_for("/x")).status_code == 200  # HEAD is not affected
    head, body = _raw_get(origin.url, "/x")  # the server sends exactly half, then closes
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 400000" in head
    assert body == data[:200_000]
    got = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with http.get(origin.url_for("/x"), stream=True) as r:
            assert r.status_code == 200 and r.headers["Content-Length"] == str(len(data))
            for piece in r.iter_content(8192):
                got += piece
    assert 0 < len(got) <= len(data) // 2 and bytes(got) == data[:len(got)]
    # resume with a range: works now
    r = http.get(origin.url_for("/x"), headers={"Range": f"bytes={len(got)}-"})
    assert r.status_code == 206 and bytes(got) + r.content == data
    # a reset Range response sends half of the range
    origin.fault("/x", "reset")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        http.get(origin.url_for("/x"), headers={"Range": "bytes=1000-"})


def test_fault_slow(origin: Origin, http: requests.Session) -> None:
    data = payload("slow", 20_000)
    origin.add("/slow", data)
    origin.fault("/slow", "slow", rate=40_000, chunk=2000)  # ~0.5 s
    t0 = time.monotonic()
    with http.get(origin.url_for("/slow"), stream=True) as r:
        pieces = list(r.iter_content(None))
    elapsed = time.monotonic() - t0
    assert b"".join(pieces) == data
    assert 0.4 <= elapsed < 5, elapsed


def test_fault_hang(origin: Origin, http: requests.Session) -> None:
    origin.add("/h", b"late")
    origin.fault("/h", "hang", seconds=0.6)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(origin.url_for("/h"), timeout=0.2)
    t0 = time.monotonic()
    r = http.get(origin.url_for("/h"), timeout=5)
    assert r.content == b"late" and time.monotonic() - t0 >= 0.5
    origin.fault("/h", "hang", seconds=60)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(origin.url_for("/h"), timeout=0.2)
    t0 = time.monotonic()
    origin.reset()  # cuts the hanging response at once
    assert time.monotonic() - t0 < 2


def test_fault_errors(origin: Origin) -> None:
    with pytest.raises(ValueError):
        origin.fault("/a", "explode")
    with pytest.raises(TypeError):
        origin.fault("/a", "slow", speed=1)


def test_virtual_files(origin: Origin, http: requests.Session) -> None:
    size = 1_000_003
    expected = virtual_bytes(7, size)
    assert len(expected) == size and expected == virtual_bytes(7, size)
    assert expected != virtual_bytes(8, size)
    origin.add_virtual("/v.bin", size, seed=7, gcs=True)
    r = http.get(origin.url_for("/v.bin"))
    assert r.status_code == 200 and r.content == expected
    assert r.headers["ETag"] == f"\"{hashlib.md5(expected).hexdigest()}\""
    hashes = dict(p.split("=", 1) for p in r.headers["x-goog-hash"].split(","))
    assert int.from_bytes(base64.b64decode(hashes["crc32c"]), "big") == crc32c(expected)
    r = http.get(origin.url_for("/v.bin"), headers={"Range": "bytes=65530-200000"})
    assert r.status_code == 206 and r.content == expected[65530:200001]
    assert origin.content("/v.bin") == expected

    big = 64 << 20  # nothing held in memory; etag given to skip hashing
    origin.add_virtual("/big.bin", big, seed="big", etag="v1")
    r = http.get(origin.url_for("/big.bin"), headers={"Range": f"bytes={big - 10}-"})
    assert r.status_code == 206 and len(r.content) == 10
    assert http.head(origin.url_for("/big.bin")).headers["Content-Length"] == str(big)


def test_reset_and_log(origin: Origin, http: requests.Session) -> None:
    origin.add("/l", b"1")
    http.get(origin.url_for("/l"), headers={"X-Test": "yes"})
    req = origin.log[-1]
    assert (req.method, req.path, req.headers["x-test"]) == ("GET", "/l", "yes")
    origin.reset()
    assert origin.hits() == 0 and origin.log == []
    assert http.get(origin.url_for("/l")).status_code == 404


def test_standalone_origin_and_helpers() -> None:
    with Origin() as o:
        o.add("a", b"x")  # leading slash optional
        assert requests.get(o.url + "/a", timeout=5).content == b"x"
    port = free_port()
    assert 0 < port < 65536
    assert not is_finished({"finished_time": "1970-01-01T00:00:00Z"})
    assert not is_finished({"finished_time": ""}) and not is_finished({})
    assert is_finished({"finished_time": "2024-05-01T10:00:00.123Z"})
