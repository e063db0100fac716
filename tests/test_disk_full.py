"""Disk full: the file that does not fit fails with a clear error, nothing partial is visible,
what fits is kept, and the node keeps serving."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aisdl.errors import AisdlError
from aisdl.models import Bucket
from conftest import Node
from helpers import free_port, small_tmpfs, wait_job
from origin import payload


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201
    with small_tmpfs(tmp_path / "small", "size=1m") as mnt:
        yield mnt


def node_on(disk: Path, tmp_path: Path) -> Node:
    """A running node that keeps its objects on `disk`; a file that fails is not retried."""
    node = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
                extra_args=("--mountpath", str(disk), "--retry-attempts", "1"))
    node.start()
    return node


def test_a_put_that_does_not_fit_is_507(tmp_path, small_disk):
    """507 Insufficient Storage, with the disk's words; nothing of the upload stays behind."""
    node = node_on(small_disk, tmp_path)
    try:
        c = node.client()
        b = Bucket("ais", "b")
        c.create_bucket(b)
        with pytest.raises(AisdlError, match="cannot store ais://b/big: No space left") as err:
            c.put_object(b, "big", payload("p", 2_000_000))
        assert err.value.status == 507
        assert list(c.list_objects(b)) == []
        assert [p for p in small_disk.rglob("*") if p.is_file()] == []
        c.put_object(b, "small", b"fits")  # the space is free again
        assert c.get_object(b, "small").content == b"fits"
    finally:
        node.stop()


def test_disk_full_fails_files_cleanly(origin, tmp_path, small_disk):
    for i in range(3):
        origin.add(f"/big{i}", payload(str(i), 600_000))
    origin.add("/tiny", payload("t", 1000))
    node = node_on(small_disk, tmp_path)
    try:
        c = node.client()
        job = c.start_download({"type": "multi", "bucket": {"name": "b"},
                                "objects": {f"big{i}": origin.url_for(f"/big{i}")
                                            for i in range(3)},
                                "limits": {"connections": 1}})
        st = wait_job(c, job)
        assert st["finished_cnt"] + st["error_cnt"] == 3 and st["error_cnt"] >= 2
        assert all("No space left on device" in e["error"] for e in st["download_errors"])
        stored = [e["n"] for e in c.list_objects(Bucket("ais", "b"))]
        assert len(stored) == st["finished_cnt"]
        for name in stored:
            assert c.get_object(Bucket("ais", "b"), name).content == payload(name[-1], 600_000)
        leftovers = [p for p in small_disk.rglob("*") if ".work" in p.parts and p.is_file()]
        assert leftovers == []  # failed work files are gone, so the space is free again
        tiny = c.start_download({"type": "single", "bucket": {"name": "b"},
                                 "link": origin.url_for("/tiny")})
        assert wait_job(c, tiny)["finished_cnt"] == 1  # the node still works
    finally:
        node.stop()


@pytest.fixture
def few_inodes(tmp_path: Path):  # noqa: ANN201
    with small_tmpfs(tmp_path / "few-inodes", "size=8m,nr_inodes=60") as mnt:
        yield mnt


def test_no_room_for_a_directory_at_commit_fails_only_those_files(origin, tmp_path, few_inodes):
    """Each object needs a directory of its own when it is committed; once the filesystem has
    no inode left for one, those objects fail with the disk's error and every other object
    of the same batch is still recorded: the counts add up and the listing matches the disk."""
    names = [f"d{i:02d}/f" for i in range(40)]
    for name in names:
        origin.add(f"/{name}", payload(name, 1000))
    node = node_on(few_inodes, tmp_path)
    try:
        c = node.client()
        job = c.start_download({"type": "multi", "bucket": {"name": "b"},
                                "objects": {n: origin.url_for(f"/{n}") for n in names}})
        st = wait_job(c, job)
        assert st["finished_cnt"] + st["error_cnt"] == len(names), st
        assert 0 < st["error_cnt"] < len(names), st
        assert all("No space left on device" in e["error"] for e in st["download_errors"])
        listed = sorted(e["n"] for e in c.list_objects(Bucket("ais", "b")))
        assert len(listed) == st["finished_cnt"]
        for name in listed:
            assert c.get_object(Bucket("ais", "b"), name).content == payload(name, 1000)
        on_disk = sorted(str(p.relative_to(few_inodes / "ais" / "b"))
                         for p in (few_inodes / "ais" / "b").rglob("f"))
        assert on_disk == listed  # no file the catalog does not know of
    finally:
        node.stop()


@pytest.fixture
def disk_8m(tmp_path: Path):  # noqa: ANN201
    with small_tmpfs(tmp_path / "8m", "size=8m") as mnt:
        yield mnt


@pytest.mark.parametrize("limits", [{}, {"bytes_per_hour": 10**12}], ids=["libcurl", "aiohttp"])
def test_a_body_larger_than_the_free_space_fails_as_it_starts(origin, tmp_path, disk_8m, limits):
    """A large body reserves its blocks as its writing starts: a 64 MiB file for an 8 MiB
    disk, trickling at 1 MB/s, fails within its first second, not after the 8 s it would take to
    fill the disk, and leaves nothing behind."""
    origin.add_virtual("/huge", 64 << 20, seed=4)
    origin.fault("/huge", "slow", rate=1_000_000)
    node = node_on(disk_8m, tmp_path)
    try:
        c = node.client()
        started = time.monotonic()
        job = c.start_download({"type": "single", "bucket": {"name": "b"}, "limits": limits,
                                "link": origin.url_for("/huge"), "object_name": "huge"})
        st = wait_job(c, job, timeout=30)
        assert time.monotonic() - started < 5
        assert (st["finished_cnt"], st["error_cnt"]) == (0, 1)
        assert "No space left on device" in st["download_errors"][0]["error"]
        assert [p for p in disk_8m.rglob("*") if p.is_file()] == []
    finally:
        node.stop()
