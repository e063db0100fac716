"""A job's counts always add up, and nothing a job or its record holds can stop the node.

Resumed records come from the database as they are: an old record with an absurd connection
limit or one that no longer parses must not keep the node from answering. A file that cannot be
named or fetched is that file's error, never a silent gap. One node per home. An abort is on
disk before it is carried out, so a crash cannot undo it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aisdl.jobs import records
from aisdl.jobs.records import Counters
from aisdl.jobs.request import JobSpec
from aisdl.models import Bucket
from conftest import Node
from helpers import free_port, wait_job
from origin import payload


def insert_job(node: Node, job_id: str, spec_json: str, total: int) -> None:
    """A job record written straight into a stopped node's database (as an older node, or a
    request the API no longer accepts, would have left it)."""
    assert not node.running()
    conn = sqlite3.connect(node.home / "aisdl.db", isolation_level=None)
    try:
        records.insert_job(conn, job_id, spec_json, f"inserted {job_id}", total, time.time_ns())
    finally:
        conn.close()


def range_spec(origin, names: list[str], **kw: object) -> str:
    first, last = names[0][1:], names[-1][1:]
    template = origin.url_for("/d/") + f"f{{{first}..{last}}}"
    return JobSpec(kind="range", bucket=Bucket("ais", "b"), description="old record",
                   template=template, **kw).to_json()  # type: ignore[arg-type]


def add_files(origin, names: list[str], rate: int = 0) -> None:
    for name in names:
        origin.add(f"/d/{name}", payload(name, 10_000))
        if rate:
            origin.fault(f"/d/{name}", "slow", rate=rate)


def make_bucket(node: Node) -> None:
    node.client().create_bucket(Bucket("ais", "b"))


def assert_stored(node: Node, names: list[str]) -> None:
    c = node.client()
    assert sorted(e["n"] for e in c.list_objects(Bucket("ais", "b"))) == sorted(names)
    for name in names:
        assert c.get_object(Bucket("ais", "b"), name).content == payload(name, 10_000)


# -- resumed records cannot freeze the node ---------------------------------------------------
def test_a_resumed_job_with_an_absurd_connection_limit_runs_within_the_node_limit(origin, node):
    names = [f"f{i:02d}" for i in range(20)]
    add_files(origin, names)
    make_bucket(node)
    node.stop()
    insert_job(node, "dnl-absurd01", range_spec(origin, names, connections=10**30), len(names))
    node.start(timeout=20)  # it binds its port and answers, whatever the record says
    st = wait_job(node.client(), "dnl-absurd01", timeout=60)
    assert (st["finished_cnt"], st["error_cnt"], st["total"]) == (20, 0, 20)
    assert_stored(node, names)
    assert node.client().health()


def test_a_record_that_cannot_be_resumed_is_that_jobs_error(origin, node):
    names = [f"f{i:02d}" for i in range(5)]
    add_files(origin, names)
    make_bucket(node)
    node.stop()
    insert_job(node, "dnl-broken01", '{"type": "range"}', 7)
    insert_job(node, "dnl-fine0001", range_spec(origin, names), len(names))
    node.start(timeout=20)
    c = node.client()
    st = wait_job(c, "dnl-fine0001", timeout=60)
    assert (st["finished_cnt"], st["error_cnt"]) == (5, 0)
    broken = wait_job(c, "dnl-broken01", timeout=30)
    assert broken["error_cnt"] == 1 and broken["finished_cnt"] == 0
    [err] = broken["download_errors"]
    assert err["error"].startswith("cannot resume the job: ")
    assert "cannot resume job dnl-broken01" in node.log()


# -- counts add up ----------------------------------------------------------------------------
def test_names_that_cannot_be_normalized_are_errors_of_their_files(origin, node):
    # f%76..f%79 decode to fv..fy; f%80..f%83 decode to bytes that are not UTF-8
    good = ["fv", "fw", "fx", "fy"]
    add_files(origin, good)
    c = node.client()
    job = c.start_download({"type": "range", "bucket": {"name": "b"},
                            "template": origin.url_for("/d/") + "f%{76..83}"})
    st = wait_job(c, job, timeout=60)
    assert (st["total"], st["finished_cnt"], st["error_cnt"]) == (8, 4, 4), st
    errors = {e["name"]: e["error"] for e in st["download_errors"]}
    assert sorted(errors) == [f"f%{i}" for i in range(80, 84)]
    assert all("not UTF-8" in e for e in errors.values())
    assert_stored(node, good)


def test_an_unexpected_failure_of_one_transfer_is_that_files_error(origin, node):
    names = [f"f{i:02d}" for i in range(6)]
    add_files(origin, names)
    make_bucket(node)
    node.stop()
    # a throttled job whose header value holds CR/LF: the HTTP client refuses to send it
    spec = range_spec(origin, names, bytes_per_hour=10**12,
                      headers={"X-Trace": ["a\r\nInjected: 1"]})
    insert_job(node, "dnl-crlf0001", spec, len(names))
    node.start()
    st = wait_job(node.client(), "dnl-crlf0001", timeout=60)
    assert st["finished_cnt"] + st["error_cnt"] == st["total"] == 6, st
    assert len(st.get("download_errors", [])) == st["error_cnt"]  # every failure is listed
    assert not [r for r in origin.log if r.headers.get("Injected")]  # never sent raw


def test_a_job_stopped_by_an_internal_error_says_so(origin, node):
    names = [f"f{i:02d}" for i in range(5)]
    add_files(origin, names)
    make_bucket(node)
    node.stop()
    insert_job(node, "dnl-cursor01", range_spec(origin, names), len(names))
    conn = sqlite3.connect(node.home / "aisdl.db", isolation_level=None)
    conn.execute("UPDATE jobs SET cursor = ? WHERE id = ?", ('{"low": "x"}', "dnl-cursor01"))
    conn.close()
    node.start()
    st = wait_job(node.client(), "dnl-cursor01", timeout=30)
    assert (st["finished_cnt"], st["error_cnt"]) == (0, 1), st
    [err] = st["download_errors"]
    assert err["error"].startswith("the job stopped on an internal error (TypeError: "), err
    assert err["error"].endswith("; 5 of 5 files not done; see the node's log"), err
    assert "job dnl-cursor01 stopped by an internal error" in node.log()


def test_an_outcome_the_database_cannot_take_is_that_files_error(origin, node):
    names = [f"f{i:02d}" for i in range(8)]
    add_files(origin, names)
    conn = sqlite3.connect(node.home / "aisdl.db", isolation_level=None)
    conn.execute("CREATE TRIGGER refuse_f03 BEFORE INSERT ON objects WHEN NEW.name = 'f03' "
                 "BEGIN SELECT RAISE(ABORT, 'injected'); END")  # not a refusal to wait out
    conn.close()
    c = node.client()
    job = c.start_download({"type": "range", "bucket": {"name": "b"},
                            "template": origin.url_for("/d/") + "f{00..07}"})
    st = wait_job(c, job, timeout=30)
    assert (st["finished_cnt"], st["error_cnt"]) == (7, 1), st
    assert st["download_errors"] == [
        {"name": "f03", "error": "cannot record the object: IntegrityError: injected"}]
    assert_stored(node, [n for n in names if n != "f03"])


def test_outcomes_lost_to_the_database_are_never_a_silent_gap(origin, node):
    names = [f"f{i:02d}" for i in range(8)]
    add_files(origin, names)
    conn = sqlite3.connect(node.home / "aisdl.db", isolation_level=None)
    for table in ("objects", "job_errors"):  # neither f03 nor its error can be recorded
        conn.execute(f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN NEW.name = "
                     "'f03' BEGIN SELECT RAISE(ABORT, 'injected'); END")
    conn.close()
    c = node.client()
    job = c.start_download({"type": "range", "bucket": {"name": "b"},
                            "template": origin.url_for("/d/") + "f{00..07}"})
    st = wait_job(c, job, timeout=30)
    assert st["finished_cnt"] + st["error_cnt"] < 8 + 1, st  # f03 has no outcome
    [why] = [e for e in st["download_errors"] if e["name"] == "ais://b"]
    assert why["error"].startswith(("counts do not add up: ", "the job stopped on an internal"))
    assert why["error"].endswith("see the node's log")


@pytest.mark.parametrize(("total", "finished", "errors", "aborted", "dispatched", "gap"), [
    (10, 10, 0, False, True, ""),
    (10, 6, 4, False, True, ""),
    (10, 6, 0, False, True, "6 finished + 0 errors of 10 files: 4 without an outcome"),
    (10, 6, 5, False, True, "6 finished + 5 errors of 10 files: 1 counted twice"),
    (10, 3, 0, True, True, ""),      # aborted: the rest was never meant to run
    (10, 3, 0, False, False, ""),    # stopped early: the job says why elsewhere
    (-1, 3, 0, False, True, ""),     # total unknown (a bucket listing)
])
def test_count_gap(total, finished, errors, aborted, dispatched, gap):
    from aisdl.jobs.run import count_gap

    assert count_gap(total, Counters(finished, 0, errors), aborted=aborted,
                     all_dispatched=dispatched) == gap


# -- one node per home --------------------------------------------------------------------------
def serve(home: Path, port: int, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "aisdl", "serve", "--port", str(port), "--home", str(home)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"`ais serve --port {port} --home {home}` was still running after {timeout}s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_a_second_node_on_the_same_home_refuses_to_start(origin, node):
    names = [f"f{i:02d}" for i in range(30)]
    add_files(origin, names, rate=100_000)  # ~0.1 s a file
    c = node.client()
    job = c.start_download({"type": "range", "bucket": {"name": "b"},
                            "template": origin.url_for("/d/") + "f{00..29}",
                            "limits": {"connections": 4}})
    second = serve(node.home, free_port())
    assert second.returncode == 2  # a command that failed (README: exit codes)
    assert second.stdout == ""
    [line] = second.stderr.splitlines()
    assert line.startswith("Error: ") and "Traceback" not in second.stderr
    assert f"pid {node.proc.pid}" in line and node.endpoint in line, line
    st = wait_job(c, job, timeout=60)
    assert (st["finished_cnt"], st["error_cnt"]) == (30, 0)
    assert_stored(node, names)
    assert len(origin.requests(method="GET")) == 30  # nobody fetched anything twice


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve(tmp_path / "home", port)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"Error: port {port} on 127.0.0.1 is in use (another node or program);"
        " choose another with --port"], result.stderr
    # the home is free again: a node starts on it at once
    other = Node(free_port(), tmp_path / "home", tmp_path / "node.log")
    other.start()
    other.stop()


# -- durable abort ------------------------------------------------------------------------------
def _slow_job_under_way(origin, node):
    """A 40-file job on slow files, two connections, with two files done."""
    names = [f"f{i:02d}" for i in range(40)]
    add_files(origin, names, rate=50_000)
    c = node.client()
    job = c.start_download({"type": "range", "bucket": {"name": "b"},
                            "template": origin.url_for("/d/") + "f{00..39}",
                            "limits": {"connections": 2}})
    while c.download_status(job)["finished_cnt"] < 2:
        time.sleep(0.05)
    return c, job


def test_an_abort_on_disk_before_a_crash_stays_aborted(origin, node):
    c, job = _slow_job_under_way(origin, node)
    node.kill9()  # killed after the abort was recorded, before it was carried out
    conn = sqlite3.connect(node.home / "aisdl.db", isolation_level=None)
    records.mark_aborted(conn, job)
    conn.close()
    hits = origin.hits()
    node.start()
    st = wait_job(node.client(), job, timeout=30)
    assert st["aborted"] is True and st["finished_cnt"] < 40
    time.sleep(1)
    assert origin.hits() == hits  # nothing fetched after the restart


def test_stop_download_then_kill9_stays_aborted(origin, node, ais):
    c, job = _slow_job_under_way(origin, node)
    ais("stop", "download", job)
    node.kill9()
    hits = origin.hits()
    node.start()
    st = wait_job(node.client(), job, timeout=30)
    assert st["aborted"] is True and st["finished_cnt"] < 40
    time.sleep(1)
    assert origin.hits() == hits


def test_a_crash_while_an_abort_is_carried_out_leaves_the_job_aborted(origin, tmp_path):
    """The fetch workers do not answer (stopped), so cancelling their transfers takes a while;
    the node is killed in that while. The abort was decided: it must hold after the restart."""
    node = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
                extra_args=("--fetch-procs", "2"))
    node.start()
    workers: list[int] = []
    try:
        names = [f"f{i:02d}" for i in range(10)]
        for name in names:
            origin.add(f"/d/{name}", payload(name, 100_000))
            origin.fault(f"/d/{name}", "slow", rate=50_000)  # ~2 s a file
        c = node.client()
        job = c.start_download({"type": "range", "bucket": {"name": "b"},
                                "template": origin.url_for("/d/") + "f{00..09}",
                                "limits": {"connections": 2}})
        while not c.download_status(job).get("current_tasks"):
            time.sleep(0.05)
        assert node.proc is not None
        children = Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text()
        workers = [int(p) for p in children.split()]
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        threading.Thread(target=_abort_quietly, args=(node, job), daemon=True).start()
        time.sleep(1.5)  # the abort has reached the node; its transfers are being cancelled
        node.kill9()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        workers = []
        hits = origin.hits()
        node.start()
        st = wait_job(node.client(), job, timeout=30)
        assert st["aborted"] is True and st["finished_cnt"] < 10, st
        time.sleep(1)
        assert origin.hits() == hits  # nothing fetched after the restart
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        node.stop()


def _abort_quietly(node: Node, job: str) -> None:
    try:
        node.client().abort_download(job)
    except Exception:  # noqa: BLE001 - the node is killed while it answers
        pass
