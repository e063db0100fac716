"""Listing flags (no-recursion, no-dirs, arch-dir) and reads inside tar shards, through the
official `aistore` SDK (2.0.0) and the `ais` CLI, as AIStore lists and serves them."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aistore.sdk import ArchiveConfig, Client, ListObjectFlag
from aistore.sdk.archive_config import ArchiveMode
from aistore.sdk.errors import AISError, ErrObjNotFound

from helpers import tar_of
from helpers_app import InProcessNode

Ais = Any  # the `ais` fixture of conftest.py
NR, NO_DIRS, ARCH = (ListObjectFlag.NO_RECURSION, ListObjectFlag.NO_DIRS,
                     ListObjectFlag.ARCH_DIR)
ENTRY_PRESENT, ENTRY_IN_ARCHIVE, ENTRY_IS_DIR, ENTRY_IS_ARCHIVE = 64, 128, 256, 512


@pytest.fixture
def client(sdk: Client) -> Client:
    return sdk


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _names(entries: Any) -> list[str]:
    return [e.name for e in entries]


LAYOUT = ["p/alpha.txt", "p/beta.bin", "p/sub.txt", "p/sub/one.txt", "p/sub/deep/three.txt",
          "p/sub0", "p/zz/x", "q/other"]


@pytest.fixture
def layout(client: Client) -> Any:
    bck = client.bucket("flags").create(exist_ok=True)
    for name in LAYOUT:
        bck.object(name).get_writer().put_content(b"content")
    return bck


# -- no-recursion, no-dirs -----------------------------------------------------------------------
def test_no_recursion_lists_one_level_with_directory_entries(layout: Any) -> None:
    entries = layout.list_all_objects(prefix="p/", flags=[NR])
    assert _names(entries) == ["p/alpha.txt", "p/beta.bin", "p/sub.txt", "p/sub/", "p/sub0",
                               "p/zz/"]
    dirs = [e for e in entries if e.name.endswith("/")]
    assert all(e.flags == ENTRY_IS_DIR and e.size == 0 for e in dirs)
    assert all(e.is_cached() for e in entries if not e.name.endswith("/"))
    # AIS lists a bucket's own directories with no-dirs too (its SDK tests assert it)
    assert _names(layout.list_all_objects(prefix="p/", flags=[NR, NO_DIRS])) == _names(entries)
    assert _names(layout.list_all_objects(prefix="", flags=[NR])) == ["p/", "q/"]
    # a prefix naming a directory lists that directory, as with its `/`
    assert _names(layout.list_all_objects(prefix="p/sub", flags=[NR])) == [
        "p/sub/deep/", "p/sub/one.txt"]
    # no-dirs alone: the full recursive listing (it has no directory entries)
    assert _names(layout.list_all_objects(prefix="p/", flags=[NO_DIRS])) == sorted(
        n for n in LAYOUT if n.startswith("p/"))


def test_no_recursion_pages_never_repeat_or_skip_an_entry(layout: Any) -> None:
    want = ["p/alpha.txt", "p/beta.bin", "p/sub.txt", "p/sub/", "p/sub0", "p/zz/"]
    for size in (1, 2, 3, 4):
        pages, token, uuid = [], "", ""
        while True:
            page = layout.list_objects(prefix="p/", page_size=size, flags=[NR],
                                       uuid=uuid, continuation_token=token)
            pages.extend(_names(page.entries))
            token, uuid = page.continuation_token, page.uuid
            if not token:
                break
        assert pages == want, size


def test_flags_not_carried_out_are_refused(layout: Any, inproc: InProcessNode) -> None:
    for flags, status in (([ListObjectFlag.DIFF], 501), ([ListObjectFlag.IS_S3], 501),
                          ([ListObjectFlag.NBI], 501), ([ListObjectFlag.NOT_CACHED], 400)):
        with pytest.raises(AISError) as err:
            layout.list_objects(flags=flags)
        assert err.value.status_code == status, flags
    code, body = _list_raw(inproc, "flags", {"flags": str(1 << 16)})
    assert code == 400 and "invalid flags" in body["message"]


def _list_raw(inproc: InProcessNode, bucket: str, lso: dict[str, Any]) -> tuple[int, Any]:
    msg = json.dumps({"action": "list", "name": "", "value": lso}).encode()
    req = urllib.request.Request(f"{inproc.endpoint}/v1/buckets/{bucket}", data=msg,
                                 method="GET", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- archives ------------------------------------------------------------------------------------
SHARD = {"0001.jpg": b"J" * 1000, "0001.cls": b"7", "dir/0002.jpg": b"K" * 700, "0002.cls": b"3"}


@pytest.fixture
def shards(client: Client) -> Any:
    bck = client.bucket("shards").create(exist_ok=True)
    bck.object("a.tar").get_writer().put_content(tar_of(SHARD))
    bck.object("b.tar.gz").get_writer().put_content(tar_of({"x.txt": b"xx"}, "w:gz"))
    bck.object("c.zip").get_writer().put_content(_zip({"z/1.txt": b"zip one"}))
    bck.object("plain.txt").get_writer().put_content(b"not an archive")
    return bck


ARCH_LISTING = ["a.tar", "a.tar/0001.cls", "a.tar/0001.jpg", "a.tar/0002.cls",
                "a.tar/dir/0002.jpg", "b.tar.gz", "b.tar.gz/x.txt", "c.zip", "c.zip/z/1.txt",
                "plain.txt"]


def test_arch_dir_lists_inside_shards(shards: Any) -> None:
    entries = shards.list_all_objects(flags=[ARCH])
    assert _names(entries) == ARCH_LISTING
    by_name = {e.name: e for e in entries}
    assert by_name["a.tar"].flags == ENTRY_PRESENT | ENTRY_IS_ARCHIVE
    assert by_name["a.tar/0001.jpg"].flags == ENTRY_PRESENT | ENTRY_IN_ARCHIVE
    assert by_name["a.tar/0001.jpg"].size == 1000
    assert by_name["plain.txt"].flags == ENTRY_PRESENT
    # without the flag, a shard is one object
    assert _names(shards.list_all_objects()) == ["a.tar", "b.tar.gz", "c.zip", "plain.txt"]


def test_arch_dir_pages_inside_a_shard(shards: Any) -> None:
    for size in (1, 2, 3):
        names = _names(shards.list_all_objects(flags=[ARCH], page_size=size))
        assert names == ARCH_LISTING, size


def test_get_one_member_of_a_shard(shards: Any) -> None:
    def member(obj: str, path: str) -> bytes:
        reader = shards.object(obj).get_reader(archive_config=ArchiveConfig(archpath=path))
        return bytes(reader.read_all())

    assert member("a.tar", "dir/0002.jpg") == b"K" * 700
    assert member("a.tar", "0001.cls") == b"7"
    assert member("b.tar.gz", "x.txt") == b"xx"
    assert member("c.zip", "z/1.txt") == b"zip one"
    assert member("a.tar", "a.tar/0001.cls") == b"7"  # as the listing names it
    with pytest.raises(AISError) as ranged:  # AIS: archived content is not range-read
        shards.object("a.tar").get_reader(archive_config=ArchiveConfig(archpath="0001.jpg"),
                                          byte_range="bytes=0-9").read_all()
    assert ranged.value.status_code == 501
    with pytest.raises(ErrObjNotFound) as err:
        member("a.tar", "missing.jpg")
    assert "missing.jpg in ais://shards/a.tar does not exist" in str(err.value)
    with pytest.raises(AISError) as bad:
        member("plain.txt", "x")
    assert bad.value.status_code == 400 and "not an archive" in str(bad.value)


def test_get_members_that_match_is_a_tar_of_them(shards: Any) -> None:
    config = ArchiveConfig(regex=".cls", mode=ArchiveMode.SUFFIX)
    data = bytes(shards.object("a.tar").get_reader(archive_config=config).read_all())
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        got = {m.name: tf.extractfile(m).read() for m in tf}  # type: ignore[union-attr]
    assert got == {"0001.cls": b"7", "0002.cls": b"3"}
    key = ArchiveConfig(regex="0001", mode=ArchiveMode.WDSKEY)
    data = bytes(shards.object("a.tar").get_reader(archive_config=key).read_all())
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.getnames() == ["0001.jpg", "0001.cls"]  # in the shard's order, as AIS sends
    none = ArchiveConfig(regex="^nothing", mode=ArchiveMode.REGEXP)
    with pytest.raises(ErrObjNotFound):
        shards.object("a.tar").get_reader(archive_config=none).read_all()


# -- the CLI -------------------------------------------------------------------------------------
def test_ais_ls_header_is_the_documents(ais: Ais, tmp_path: Path) -> None:
    ais("create", "ais://ubuntu")
    src = tmp_path / "ubuntu-18.04.1.iso"
    src.write_bytes(b"x" * 2000)
    ais("put", src, "ais://ubuntu/ubuntu-18.04.1.iso")
    lines = ais("ls", "ais://ubuntu").stdout.splitlines()
    assert lines[0].split() == ["Name", "Size", "Version"]
    assert lines[1].split() == ["ubuntu-18.04.1.iso", "1.95KiB", "1"]


def test_usage_lines_name_the_arguments(ais: Ais) -> None:
    usage = {
        ("start", "download"): "Usage: ais start download [OPTIONS] SOURCE DESTINATION",
        ("show", "job", "download"): "Usage: ais show job download [OPTIONS] [JOB_ID]",
        ("show", "job"): "Usage: ais show job [OPTIONS] [download] [JOB_ID]",
        ("wait", "download"): "Usage: ais wait download [OPTIONS] JOB_ID",
        ("stop", "download"): "Usage: ais stop download [OPTIONS] JOB_ID",
        ("job", "rm", "download"): "Usage: ais job rm download [OPTIONS] JOB_ID",
    }
    for args, line in usage.items():
        out = ais(*args, "--help").stdout
        assert out.splitlines()[0] == line, (args, out)


def test_a_broken_shard_fails_the_listing_with_its_name(client: Client) -> None:
    bck = client.bucket("broken").create(exist_ok=True)
    bck.object("bad.tar.gz").get_writer().put_content(b"\x1f\x8b not really gzip")
    with pytest.raises(AISError) as err:
        bck.list_all_objects(flags=[ARCH])
    assert err.value.status_code == 400
    assert "ais://broken/bad.tar.gz: not a valid tar.gz archive" in str(err.value)
    assert _names(bck.list_all_objects()) == ["bad.tar.gz"]  # listed as an object, as ever


# -- bounds and matching (no server) -------------------------------------------------------------
def test_archive_reads_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aisdl.errors import BadRequest, TooLarge
    from aisdl.store import archive

    many = tmp_path / "many.tar"
    many.write_bytes(tar_of({f"f{i}": b"x" for i in range(5)}))
    monkeypatch.setattr(archive, "MAX_MEMBERS", 4)
    with pytest.raises(TooLarge, match="more than 4 files"):
        archive.list_members(str(many), archive.TAR, "ais://b/many.tar")
    long_name = tmp_path / "long.tar"
    long_name.write_bytes(tar_of({"n" * 2000: b"x"}))
    with pytest.raises(BadRequest, match="longer than 1024 bytes"):
        archive.list_members(str(long_name), archive.TAR, "ais://b/long.tar")
    with pytest.raises(BadRequest, match="invalid archpath"):
        archive.check_member_name("m" * 1025)
    with pytest.raises(BadRequest, match="invalid archmode"):
        archive.matcher("x", "glob")
    with pytest.raises(BadRequest, match="invalid archregx"):
        archive.matcher("(", "regexp")


@pytest.mark.parametrize(("regex", "mode", "name", "hit"), [
    ("file2", "prefix", "file2.txt", True),
    ("file2", "prefix", "dir/file2.txt", False),
    (".cls", "suffix", "a/b.cls", True),
    ("b/c", "substr", "a/b/c.jpg", True),
    ("a/0001", "wdskey", "a/0001.jpg", True),
    ("0001", "wdskey", "0001.tar.jpg", False),
    (r"\d{4}\.jpg$", "regexp", "x/0001.jpg", True),
    ("", "regexp", "anything", True),
    ("*", "prefix", "anything", True),
])
def test_match_modes_as_ais_reads_them(regex: str, mode: str, name: str, hit: bool) -> None:
    from aisdl.store import archive

    assert archive.matches(archive.matcher(regex, mode), name) is hit


# -- a cloud bucket ------------------------------------------------------------------------------
@pytest.fixture
def s3_node(tmp_path: Path, s3_server: Any) -> Iterator[Any]:
    from conftest import Node
    from helpers import free_port

    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log", env=s3_server.env)
    n.start()
    yield n
    n.stop()


def test_cloud_listing_refuses_what_it_cannot_do_and_adds_no_bucket(
        s3_server: Any, s3_node: Any) -> None:
    name = s3_server.new_bucket()
    s3_server.put_many(name, [("d/a.tar", tar_of({"m": b"1"})), ("d/e/f", b"2"), ("g", b"3")])
    client = Client(s3_node.endpoint)
    bck = client.bucket(name, provider="aws")
    for flags in ([NR], [ARCH], [ListObjectFlag.NOT_CACHED],
                  [ListObjectFlag.DONT_ADD_REMOTE]):
        with pytest.raises(AISError) as err:
            bck.list_objects(flags=flags)
        assert err.value.status_code == 501, flags
        assert client.cluster().list_buckets(provider="aws") == []  # nothing became known
    assert _names(bck.list_all_objects()) == ["d/a.tar", "d/e/f", "g"]
    assert [b.name for b in client.cluster().list_buckets(provider="aws")] == [name]
    # what is stored here (nothing yet) is listed with them
    assert bck.list_all_objects(flags=[ListObjectFlag.CACHED, NR, ARCH]) == []


def test_archmime_names_the_kind_of_a_shard_without_an_extension(
        shards: Any, inproc: InProcessNode) -> None:
    shards.object("noext").get_writer().put_content(tar_of({"m.txt": b"member"}))
    url = f"{inproc.endpoint}/v1/objects/shards/noext?provider=ais&archpath=m.txt"
    with urllib.request.urlopen(url + "&archmime=tar", timeout=10) as resp:
        assert resp.read() == b"member"
    with pytest.raises(urllib.error.HTTPError) as wrong:  # a zip it is not
        urllib.request.urlopen(url + "&archmime=.zip", timeout=10)
    assert wrong.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(url + "&archmime=.rar", timeout=10)
    assert bad.value.code == 400 and b"invalid archmime" in bad.value.read()
