"""Object copy (`object_to`), append and flush with handles (`append_type`, `append_handle`,
`Ais-Append-Handle`) through the pinned `aistore` SDK, `ais object cp`, and the store; and a
client that leaves a GET early.

Every refusal is checked to leave the source, the destination and the catalog as they were.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import requests
from aistore.sdk import Client
from aistore.sdk.bucket import Bucket as SdkBucket
from aistore.sdk.errors import AISError, ErrBckNotFound, ErrObjNotFound

from aisdl.db import Database
from aisdl.errors import AisdlError, BadRequest, TooLarge
from aisdl.models import Bucket
from aisdl.store.store import Store
from conftest import Ais, Node
from helpers import tar_of
from helpers_app import InProcessNode


@pytest.fixture
def client(sdk: Client) -> Client:
    return sdk


def _bucket(client: Client, name: str) -> SdkBucket:
    return client.bucket(name).create(exist_ok=True)


def _state(client: Client, bucket: str, name: str) -> tuple[bytes, str] | None:
    """An object's bytes and version, None when it does not exist."""
    obj = client.bucket(bucket).object(name)
    try:
        reader = obj.get_reader()
        return reader.read_all(), reader.attributes.obj_version
    except ErrObjNotFound:
        return None


def _names(client: Client, bucket: str) -> list[str]:
    return [e.name for e in client.bucket(bucket).list_all_objects()]


# -- copy ----------------------------------------------------------------------------------------
def test_copy_within_a_bucket_keeps_the_source(client: Client) -> None:
    bck = _bucket(client, "cp-same")
    data = bytes(range(256)) * 4000
    src = bck.object("dir/src.bin")
    src.get_writer().put_content(data)
    src.get_writer().set_custom_props({"k": "v"})
    resp = src.copy(bck.object("other/copy.bin"))
    assert resp.status_code == 200
    assert _state(client, "cp-same", "dir/src.bin") == (data, "1")
    copied = bck.object("other/copy.bin").get_reader()
    assert copied.read_all() == data
    assert copied.attributes.obj_version == "1"
    assert copied.attributes.checksum_value == src.get_reader().attributes.checksum_value
    assert copied.attributes.custom_metadata == {"k": "v"}
    assert _names(client, "cp-same") == ["dir/src.bin", "other/copy.bin"]


def test_copy_to_another_bucket_same_and_other_name(client: Client) -> None:
    src_bck, dst_bck = _bucket(client, "cp-from"), _bucket(client, "cp-to")
    src = src_bck.object("a.txt")
    src.get_writer().put_content(b"first")
    src.copy(dst_bck.object("a.txt"))
    src.copy(dst_bck.object("renamed/a.txt"))
    assert _state(client, "cp-to", "a.txt") == (b"first", "1")
    assert _state(client, "cp-to", "renamed/a.txt") == (b"first", "1")
    assert _state(client, "cp-from", "a.txt") == (b"first", "1")
    # copying again over an existing destination makes its next version
    src.get_writer().put_content(b"second")
    src.copy(dst_bck.object("a.txt"))
    assert _state(client, "cp-to", "a.txt") == (b"second", "2")
    assert _state(client, "cp-from", "a.txt") == (b"second", "2")


def test_copy_refusals_change_nothing(client: Client, inproc: InProcessNode) -> None:
    bck, other = _bucket(client, "cp-refuse"), _bucket(client, "cp-refuse2")
    src = bck.object("src")
    src.get_writer().put_content(b"keep me")
    before = (_names(client, "cp-refuse"), _names(client, "cp-refuse2"))

    with pytest.raises(AISError) as exc:  # onto itself
        src.copy(bck.object("src"))
    assert exc.value.status_code == 400 and "onto itself" in exc.value.message
    with pytest.raises(ErrObjNotFound):  # missing source
        bck.object("missing").copy(other.object("dst"))
    with pytest.raises(ErrBckNotFound) as nb:  # missing destination bucket
        src.copy(client.bucket("cp-nobucket").object("dst"))
    assert "bucket" in nb.value.message and "does not exist" in nb.value.message

    url = f"{inproc.endpoint}/v1/objects/cp-refuse/src"
    bad = {
        "no object name": {"object_to": "ais/@#/cp-refuse2/"},
        "not a uname": {"object_to": "cp-refuse2"},
        "namespace": {"object_to": "ais/@uuid#ns/cp-refuse2/dst"},
        "bad provider": {"object_to": "nope/@#/cp-refuse2/dst"},
        "bad object name": {"object_to": "ais/@#/cp-refuse2/../dst"},
    }
    for why, params in bad.items():
        resp = requests.put(url, params={"provider": "ais", **params}, timeout=10)
        assert resp.status_code == 400, why
        assert resp.json()["status"] == 400, why
    # a body with a copy is not silently dropped
    resp = requests.put(url, params={"object_to": "ais/@#/cp-refuse2/dst"}, data=b"body",
                        timeout=10)
    assert resp.status_code == 400 and "body" in resp.json()["message"]
    # so are headers that would change what is stored
    for header in ({"Ais-Custom-Md": "k=v"}, {"Ais-Checksum-Type": "md5",
                                              "Ais-Checksum-Value": "0"}):
        resp = requests.put(url, params={"object_to": "ais/@#/cp-refuse2/dst"}, headers=header,
                            timeout=10)
        assert resp.status_code == 400 and "copy keeps" in resp.json()["message"]
    # a copy with the latest remote version, or with a transformation, is not done here
    for params in ({"latest-ver": "true"}, {"synchronize": "true"}, {"etl_name": "x"}):
        resp = requests.put(url, params={"object_to": "ais/@#/cp-refuse2/dst", **params},
                            timeout=10)
        assert resp.status_code in (400, 501), params

    assert _state(client, "cp-refuse", "src") == (b"keep me", "1")
    assert (_names(client, "cp-refuse"), _names(client, "cp-refuse2")) == before


def test_copy_onto_a_directory_of_objects_is_a_conflict(client: Client) -> None:
    bck = _bucket(client, "cp-clash")
    bck.object("a").get_writer().put_content(b"a")
    bck.object("d/x").get_writer().put_content(b"x")
    with pytest.raises(AISError) as exc:
        bck.object("a").copy(bck.object("d"))
    assert exc.value.status_code == 409
    assert _names(client, "cp-clash") == ["a", "d/x"]


# -- append and flush ----------------------------------------------------------------------------
def test_append_content_is_invisible_until_flush(client: Client) -> None:
    bck = _bucket(client, "ap-sdk")
    obj = bck.object("log.txt")
    obj.get_writer().put_content(b"head-")
    handle = ""
    for part in (b"one-", b"two-", b"three"):
        handle = obj.get_writer().append_content(part, handle)
        assert handle
        assert _state(client, "ap-sdk", "log.txt") == (b"head-", "1")
    assert obj.get_writer().append_content(b"", handle, flush=True) == ""
    assert _state(client, "ap-sdk", "log.txt") == (b"head-one-two-three", "2")
    assert obj.head().size == len(b"head-one-two-three")
    # a new object is created by its first flush
    new = bck.object("new/obj")
    handle = new.get_writer().append_content(b"abc")
    assert _state(client, "ap-sdk", "new/obj") is None
    new.get_writer().append_content(b"", handle, flush=True)
    assert _state(client, "ap-sdk", "new/obj") == (b"abc", "1")


@pytest.mark.parametrize("existing", [None, b"existing-content"])
@pytest.mark.parametrize("mode", ["w", "a"])
def test_file_writer(client: Client, mode: str, existing: bytes | None) -> None:
    """`as_file("w")` starts from an empty object, `"a"` from the stored one (or none); what is
    written shows at `flush()` and `close()`, not before."""
    bck = _bucket(client, "ap-writer")
    name = f"{mode}-{existing is not None}"
    obj = bck.object(name)
    if existing is not None:
        obj.get_writer().put_content(existing)
    base = b"" if mode == "w" else existing  # None: no object until the first flush

    def content() -> bytes | None:
        state = _state(client, "ap-writer", name)
        return state[0] if state else None

    with obj.get_writer().as_file(mode=mode) as f:
        for chunk in (b"new-data1", b"new-data2", b"new-data3"):
            f.write(chunk)
            assert content() == base
        f.flush()
        assert content() == (base or b"") + b"new-data1new-data2new-data3"
        f.write(b"-more")
    assert content() == (base or b"") + b"new-data1new-data2new-data3-more"


def test_append_refusals_change_nothing(client: Client, inproc: InProcessNode) -> None:
    bck = _bucket(client, "ap-refuse")
    obj = bck.object("o")
    obj.get_writer().put_content(b"stored")
    url = f"{inproc.endpoint}/v1/objects/ap-refuse/o"
    handle = obj.get_writer().append_content(b"pending")

    def put(params: dict[str, str], data: bytes = b"x", **kw: str) -> requests.Response:
        return requests.put(url, params=params, data=data, headers=kw or None, timeout=10)

    cases = {
        "unknown type": put({"append_type": "bogus"}),
        "unknown type with handle": put({"append_type": "bogus", "append_handle": handle}),
        "handle without type": put({"append_handle": handle}),
        "flush without handle": put({"append_type": "flush", "append_handle": ""}, b""),
        "unknown handle": put({"append_type": "append", "append_handle": "nope"}),
        "flush with a body": put({"append_type": "flush", "append_handle": handle}, b"data"),
        "checksum on an append": put({"append_type": "append", "append_handle": handle},
                                     **{"Ais-Checksum-Type": "xxhash",
                                        "Ais-Checksum-Value": "0"}),
        "append and copy": put({"append_type": "append", "object_to": "ais/@#/ap-refuse/c"}),
    }
    for why, resp in cases.items():
        assert resp.status_code == 400, (why, resp.status_code, resp.text)
        assert resp.json()["status"] == 400, why
    other = bck.object("other")
    with pytest.raises(AISError) as exc:  # a handle belongs to one object
        other.get_writer().append_content(b"x", handle)
    assert exc.value.status_code == 400
    bad_sum = put({"append_type": "flush", "append_handle": handle}, b"",
                  **{"Ais-Checksum-Type": "xxhash", "Ais-Checksum-Value": "0000000000000000"})
    assert bad_sum.status_code == 400 and "checksum" in bad_sum.json()["message"]
    assert _state(client, "ap-refuse", "o") == (b"stored", "1")
    assert _state(client, "ap-refuse", "other") is None
    assert _names(client, "ap-refuse") == ["o"]
    # the handle survived the refusals: its bytes commit as they were appended
    obj.get_writer().append_content(b"", handle, flush=True)
    assert _state(client, "ap-refuse", "o") == (b"storedpending", "2")
    # a flushed handle is spent
    with pytest.raises(AISError) as exc:
        obj.get_writer().append_content(b"", handle, flush=True)
    assert exc.value.status_code == 400
    assert _state(client, "ap-refuse", "o") == (b"storedpending", "2")


# -- bounds of open appends (store) --------------------------------------------------------------
B = Bucket("ais", "b")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def _cut_short(*parts: bytes) -> AsyncIterator[bytes]:
    """A request body whose client went away (as `objects._body` reports it)."""
    for p in parts:
        yield p
    raise BadRequest("request body ended early")


def _append_files(mp: Path) -> list[Path]:
    return [p for p in (mp / ".work").rglob("*") if p.is_file()]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "t.db")
    yield database
    database.close()


async def test_open_appends_are_bounded_in_count_size_and_age(db: Database,
                                                              tmp_path: Path) -> None:
    from aisdl.store.appends import Appends

    mp = tmp_path / "mp"
    store = Store(db, [mp], "n", appends=Appends(max_open=2, idle_timeout=0.3))
    await store.create_bucket(B)
    h1 = await store.append(B, "one", "", _chunks(b"1"), limit=10)
    h2 = await store.append(B, "two", "", _chunks(b"2"), limit=10)
    with pytest.raises(AisdlError, match="open appends") as full:
        await store.append(B, "three", "", _chunks(b"3"), limit=10)
    assert full.value.status == 429
    assert len(_append_files(mp)) == 2
    # an append beyond the size bound is refused whole; the handle keeps what it had
    with pytest.raises(TooLarge):
        await store.append(B, "one", h1, _chunks(b"234", b"56789abcdef"), limit=10)
    # so is a chunk whose body is cut short
    with pytest.raises(BadRequest, match="ended early"):
        await store.append(B, "one", h1, _cut_short(b"xyz"), limit=10)
    await store.append(B, "one", h1, _chunks(b"2"), limit=10)
    await store.flush_append(B, "one", h1, None)
    assert store.object_path(B, "one").read_bytes() == b"12"
    # an abandoned append is dropped after its idle time, work file and all
    deadline = time.monotonic() + 10
    while _append_files(mp) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _append_files(mp) == []
    with pytest.raises(BadRequest, match="unknown or expired"):
        await store.flush_append(B, "two", h2, None)
    assert await store.lookup(B, "two") is None
    # and its slot is free again
    h3 = await store.append(B, "three", "", _chunks(b"3"), limit=10)
    await store.flush_append(B, "three", h3, None)
    assert store.object_path(B, "three").read_bytes() == b"3"


def test_append_leftovers_are_removed_at_start_up(node: Node) -> None:
    sdk = Client(node.endpoint)
    obj = sdk.bucket("left").create().object("o")
    handle = obj.get_writer().append_content(b"x" * 1000)
    work = node.home / "data" / ".work"
    assert [p for p in work.rglob("*") if p.is_file()]
    node.stop()
    node.start()
    assert [p for p in work.rglob("*") if p.is_file()] == []
    with pytest.raises(AISError) as exc:
        obj.get_writer().append_content(b"", handle, flush=True)
    assert exc.value.status_code == 400
    with pytest.raises(ErrObjNotFound):
        obj.get_reader().read_all()


# -- CLI -----------------------------------------------------------------------------------------
def test_ais_object_cp(ais: Ais, tmp_path: Path) -> None:
    src = tmp_path / "object_1.txt"
    src.write_bytes(b"0123456789\n")
    ais("create", "ais://cli-b1", "ais://cli-b2")
    ais("put", src, "ais://cli-b1/object_1.txt")
    out = ais("object", "cp", "ais://cli-b1/object_1.txt", "ais://cli-b2")
    assert out.stdout.strip() == "COPY ais://cli-b1/object_1.txt => ais://cli-b2/object_1.txt"
    out = ais("object", "cp", "ais://cli-b1/object_1.txt", "ais://cli-b2/dir/object_2.txt")
    assert out.stdout.strip() == ("COPY ais://cli-b1/object_1.txt =>"
                                  " ais://cli-b2/dir/object_2.txt")
    for name in ("object_1.txt", "dir/object_2.txt"):
        assert ais("get", f"ais://cli-b2/{name}", "-").stdout == "0123456789\n"
    assert ais("get", "ais://cli-b1/object_1.txt", "-").stdout == "0123456789\n"
    assert "SOURCE DESTINATION" in ais("object", "cp", "--help").stdout

    for args, words in [
        (("ais://cli-b1/object_1.txt", "ais://cli-b1/object_1.txt"), "onto itself"),
        (("ais://cli-b1/object_1.txt", "ais://cli-b1"), "onto itself"),
        (("ais://cli-b1/missing", "ais://cli-b2/x"), "does not exist"),
        (("ais://cli-b1", "ais://cli-b2/x"), "names no object"),
        (("ais://cli-b1/object_1.txt", "ais://cli-none/x"), "does not exist"),
    ]:
        res = ais("object", "cp", *args, check=False)
        assert res.returncode == 2, res.output
        assert res.stderr.startswith("Error: ") and words in res.stderr, res.output
        assert "Traceback" not in res.output
    assert ais("get", "ais://cli-b1/object_1.txt", "-").stdout == "0123456789\n"
    assert ais("ls", "ais://cli-b1", "-H").stdout.split()[0] == "object_1.txt"


# -- a client that leaves a GET early ------------------------------------------------------------
_BIG = 32 << 20


@pytest.mark.parametrize("path", [
    "/v1/objects/early/big",
    "/v1/objects/early/big.tar?archpath=m.bin",
    "/v1/objects/early/big.tar?archregx=m&archmode=prefix",
], ids=["object", "archived-file", "archived-matches"])
@pytest.mark.parametrize("pause", [0.0, 0.5], ids=["at-once", "after-the-writes-wait"])
def test_client_closing_a_get_early_is_one_info_line(node: Node, path: str, pause: float) -> None:
    """A client that stops reading and resets the connection leaves one INFO line, whether the
    node was between writes or waiting for the client to read (its writes paused)."""
    sdk = Client(node.endpoint)
    bucket = sdk.bucket("early").create()
    bucket.object("big").get_writer().put_content(b"\x07" * _BIG)
    bucket.object("big.tar").get_writer().put_content(tar_of({"m.bin": b"\x07" * _BIG}))
    with socket.create_connection(("127.0.0.1", node.port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(pause)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
    deadline = time.monotonic() + 10
    while "closed the connection" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [ln for ln in node.log().splitlines() if "early/big" in ln]
    assert len(lines) == 1 and " INFO " in lines[0], node.log()
    assert "Traceback" not in node.log() and " ERROR " not in node.log()
    assert bucket.object("big").get_reader().read_all() == b"\x07" * _BIG
