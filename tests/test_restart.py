"""Durability: a node killed with SIGKILL mid-job resumes the job on restart and completes it
with exact counts, every object identical to its source and no partial object visible."""

from __future__ import annotations

import time

from aisdl.models import Bucket
from helpers import fetched_twice, objects_on_disk, wait_job
from origin import payload


def test_kill9_mid_job_then_resume(origin, node):
    n = 200
    for i in range(n):
        origin.add(f"/d/f{i:03d}", payload(str(i), 50_000 + i))
        origin.fault(f"/d/f{i:03d}", "slow", rate=1_000_000)
    c = node.client()
    job = c.start_download({"type": "range", "bucket": {"name": "r"},
                            "template": origin.url_for("/d/") + "f{000..199}",
                            "limits": {"connections": 8}})
    while c.download_status(job)["finished_cnt"] < 30:
        time.sleep(0.05)
    node.kill9()
    placed = objects_on_disk(node.home, "r")
    node.start()
    c = node.client()
    st = c.download_status(job)
    assert 30 <= st["finished_cnt"] < n  # what was committed before the kill survived
    st = wait_job(c, job, timeout=60)
    assert (st["finished_cnt"], st["error_cnt"], st["aborted"]) == (n, 0, False)
    # What was in place at the kill is recorded from the chunk journals at start-up, never
    # fetched again (a file caught mid-transfer may be, when it kept no validator to resume).
    assert not {f"/d/{name}" for name in placed} & set(fetched_twice(origin, "/d/"))
    bck = Bucket("ais", "r")
    entries = list(c.list_objects(bck))
    assert [e["n"] for e in entries] == [f"f{i:03d}" for i in range(n)]
    for i in range(n):
        assert c.get_object(bck, f"f{i:03d}").content == payload(str(i), 50_000 + i)
    work = [p for p in node.home.rglob("*") if ".work" in p.parts and p.is_file()]
    assert work == []  # no leftover work files


def test_restart_resumes_a_large_file_at_its_byte(origin, node):
    size = 8 * 1024 * 1024
    origin.add_virtual("/big", size, seed=9, etag="big-v1")
    origin.fault("/big", "slow", rate=2_000_000)
    c = node.client()
    job = c.start_download({"type": "single", "bucket": {"name": "r"},
                            "link": origin.url_for("/big"), "object_name": "big"})
    while True:
        tasks = c.download_status(job).get("current_tasks") or []
        if tasks and int(tasks[0]["downloaded"]) > 2 * 1024 * 1024:
            break
        time.sleep(0.05)
    node.kill9()
    origin.clear_fault("/big")
    node.start()
    st = wait_job(node.client(), job, timeout=60)
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0)
    ranged = [r for r in origin.requests("/big", "GET") if r.headers.get("Range")]
    assert ranged and int(ranged[-1].headers["Range"].split("=")[1].rstrip("-")) >= 2 * 1024**2
    from origin import virtual_bytes

    assert node.client().get_object(Bucket("ais", "r"), "big").content == virtual_bytes(9, size)
