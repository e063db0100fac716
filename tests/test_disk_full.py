"""Disk full: the file that does not fit fails with a clear error, nothing partial is visible,
what fits is kept, and the node keeps serving."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from aisdl.models import Bucket
from conftest import Node
from helpers import free_port, wait_job
from origin import payload


def mount_tmpfs(path: Path, size: str) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    return path


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201
    yield mount_tmpfs(tmp_path / "small", "1m")
    subprocess.run(["umount", "-l", str(tmp_path / "small")], check=False)


@pytest.fixture
def disk_8m(tmp_path: Path):  # noqa: ANN201
    yield mount_tmpfs(tmp_path / "8m", "8m")
    subprocess.run(["umount", "-l", str(tmp_path / "8m")], check=False)


def test_disk_full_fails_files_cleanly(origin, tmp_path, small_disk):
    for i in range(3):
        origin.add(f"/big{i}", payload(str(i), 600_000))
    origin.add("/tiny", payload("t", 1000))
    node = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
                extra_args=("--mountpath", str(small_disk), "--retry-attempts", "1"))
    node.start()
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


@pytest.mark.parametrize("limits", [{}, {"bytes_per_hour": 10**12}], ids=["libcurl", "aiohttp"])
def test_a_body_larger_than_the_free_space_fails_as_it_starts(origin, tmp_path, disk_8m, limits):
    """Large bodies reserve their blocks when their writing starts: a 64 MiB file for an 8 MiB
    disk, trickling at 1 MB/s, fails within its first MiB, not after the 8 s it would take to
    fill the disk."""
    origin.add_virtual("/huge", 64 << 20, seed=4)
    origin.fault("/huge", "slow", rate=1_000_000)
    node = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
                extra_args=("--mountpath", str(disk_8m), "--retry-attempts", "1"))
    node.start()
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
