"""The node's database refuses to record for a while: another program holds its write lock, or
the disk under it is full. A job keeps what it downloaded, waits, and records all of it once
the database accepts again: the counts add up, every object is listed and readable, and the
log says what happened. (Batches the database refused used to vanish; when the refusal came at
commit time the counts even said they were stored.)"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import requests

from aisdl.errors import AisdlError
from aisdl.models import Bucket
from conftest import Node
from helpers import free_port, small_tmpfs, wait_job
from origin import payload

BUSY_WAIT = 5.0  # seconds sqlite3 waits for a lock before it refuses (the node's default)


def start_slow_job(origin, node: Node, names: list[str]) -> str:
    for name in names:
        origin.add(f"/{name}", payload(name, 20_000))
        origin.fault(f"/{name}", "slow", rate=40_000)  # ~0.5 s a file
    return node.client().start_download({
        "type": "multi", "bucket": {"name": "b"},
        "objects": {n: origin.url_for(f"/{n}") for n in names},
        "limits": {"connections": 8}})


def assert_all_recorded(node: Node, job: str, names: list[str]) -> None:
    c = node.client()
    st = wait_job(c, job, timeout=60)
    assert (st["finished_cnt"], st["error_cnt"]) == (len(names), 0), st
    assert sorted(e["n"] for e in c.list_objects(Bucket("ais", "b"))) == sorted(names)
    for name in names:
        assert c.get_object(Bucket("ais", "b"), name).content == payload(name, 20_000)


def test_a_lock_held_by_another_program(origin, tmp_path: Path) -> None:
    node = Node(free_port(), tmp_path / "home", tmp_path / "node.log")
    node.start()
    try:
        names = [f"f{i:02d}" for i in range(40)]
        job = start_slow_job(origin, node, names)
        time.sleep(0.5)
        other = sqlite3.connect(node.home / "aisdl.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # e.g. a user's sqlite3 shell in a write transaction
        time.sleep(BUSY_WAIT + 1.5)
        other.execute("ROLLBACK")
        other.close()
        assert_all_recorded(node, job, names)
        log = node.log()
        assert log.count("cannot record") == 1 and "(database is locked); trying again" in log
        assert f"job {job}: recording again" in log
    finally:
        node.stop()


def test_the_database_disk_fills_up(origin, tmp_path: Path) -> None:
    """Objects on a disk of their own, the database on a small one that fills up mid-job; the
    job's renames of that moment are done, and are recorded (not re-tried) once there is room."""
    with small_tmpfs(tmp_path / "home", "size=4m") as home:
        node = Node(free_port(), home, tmp_path / "node.log",
                    extra_args=("--mountpath", str(tmp_path / "objects")))
        node.start()
        try:
            names = [f"d{i:02d}/f" for i in range(60)]
            job = start_slow_job(origin, node, names)
            time.sleep(0.6)
            filler = home / "filler"
            with open(filler, "wb", buffering=0) as f:
                try:
                    while f.write(bytes(1 << 16)):
                        pass
                except OSError:
                    pass  # full
            time.sleep(2)
            filler.unlink()
            assert_all_recorded(node, job, names)
            assert "(database or disk is full); trying again" in node.log()
        finally:
            node.stop()


def test_a_request_that_cannot_write_is_told_to_come_back(tmp_path: Path) -> None:
    """503 with the database's own words, not a 500 that says "see the node log"; the same
    request succeeds once the lock is gone."""
    node = Node(free_port(), tmp_path / "home", tmp_path / "node.log")
    node.start()
    try:
        c = node.client()
        b = Bucket("ais", "b")
        c.create_bucket(b)
        other = sqlite3.connect(node.home / "aisdl.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(AisdlError, match=r"database refused the write \(database is locked"
                           r"\); try again later") as err:
            c.put_object(b, "o", b"data")
        assert err.value.status == 503
        other.execute("ROLLBACK")
        other.close()
        c.put_object(b, "o", b"data")
        assert c.get_object(b, "o").content == b"data"
        metrics = requests.get(f"{node.endpoint}/metrics", timeout=10).text
        assert "aisdl_database_refused_total 1.0" in metrics  # the refused PUT
    finally:
        node.stop()
