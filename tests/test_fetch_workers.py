"""A node fetches on worker processes (one per core by default). What a user notices: the
workers never outlive the node, a worker that dies costs no file, and a node told to use no
workers still downloads."""

from __future__ import annotations

import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from aisdl.models import Bucket
from conftest import Node
from helpers import fetched_twice, free_port, objects_on_disk, wait_job
from origin import payload


def workers_of(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(p) for p in (task / "children").read_text().split()]
    return [k for k in kids if b"aisdl.engine.worker" in _cmdline(k)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Running, not a zombie (one read of /proc: the process may go at any moment)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture
def node2(tmp_path: Path):
    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--retry-delay", "50ms", "--fetch-procs", "2"))
    n.start()
    yield n
    n.stop()


def start_slow_job(origin, node, n: int, rate: int = 400_000) -> str:
    for i in range(n):
        origin.add(f"/w/f{i:02d}", payload(str(i), 100_000 + i))
        origin.fault(f"/w/f{i:02d}", "slow", rate=rate)
    return node.client().start_download({
        "type": "range", "bucket": {"name": "w"},
        "template": origin.url_for("/w/") + f"f{{00..{n - 1:02d}}}",
        "limits": {"connections": 8}})


def assert_all_objects(node, n: int) -> None:
    c, bck = node.client(), Bucket("ais", "w")
    assert [e["n"] for e in c.list_objects(bck)] == [f"f{i:02d}" for i in range(n)]
    for i in range(n):
        assert c.get_object(bck, f"f{i:02d}").content == payload(str(i), 100_000 + i)


def test_a_worker_killed_mid_job_costs_no_file(origin, node2):
    n = 40
    job = start_slow_job(origin, node2, n)
    c = node2.client()
    while c.download_status(job)["finished_cnt"] < 5:
        time.sleep(0.05)
    victim = workers_of(node2.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    placed = objects_on_disk(node2.home, "w")
    st = wait_job(c, job, timeout=60)
    assert (st["finished_cnt"], st["error_cnt"]) == (n, 0)
    assert_all_objects(node2, n)
    # what it had placed is recorded from its chunk's journal, never fetched again
    assert not {f"/w/{name}" for name in placed} & set(fetched_twice(origin, "/w/"))
    assert "fetch worker" in node2.log() and "exited" in node2.log()
    assert len(workers_of(node2.proc.pid)) == 2  # replaced
    metrics = requests.get(f"{node2.endpoint}/metrics", timeout=10).text
    assert "aisdl_fetch_worker_restarts_total 1.0" in metrics
    work = [p for p in node2.home.rglob("*") if ".work" in p.parts and p.is_file()]
    assert work == []


def test_workers_stop_with_the_node(origin, node2):
    job = start_slow_job(origin, node2, 20, rate=100_000)
    while not node2.client().download_status(job).get("current_tasks"):
        time.sleep(0.05)
    workers = workers_of(node2.proc.pid)
    assert len(workers) == 2
    assert node2.stop() == 0
    assert wait_gone(workers) == []


def test_a_clean_stop_leaves_a_clean_log(origin, node2):
    """Workers told to stop exit on their own: the node's log shows no warning about them
    (asyncio used to report each one as an unknown child with exit code 255)."""
    job = start_slow_job(origin, node2, 4, rate=10_000_000)
    assert wait_job(node2.client(), job)["finished_cnt"] == 4
    for _ in range(4):  # each stop is a race the log could lose: run it a few times
        workers = workers_of(node2.proc.pid)
        assert len(workers) == 2
        assert node2.stop() == 0
        assert wait_gone(workers) == []
        node2.start()
    noisy = [line for line in node2.log().splitlines() if " WARNING " in line or " ERROR " in line]
    assert noisy == []


def test_workers_exit_when_the_node_is_killed(origin, node2):
    """A crashed node leaves no process behind to keep writing files under the restarted one."""
    job = start_slow_job(origin, node2, 20, rate=100_000)
    while not node2.client().download_status(job).get("current_tasks"):
        time.sleep(0.05)
    workers = workers_of(node2.proc.pid)
    node2.kill9()
    assert wait_gone(workers) == []
    for i in range(20):
        origin.clear_fault(f"/w/f{i:02d}")
    node2.start()
    st = wait_job(node2.client(), job, timeout=60)
    assert (st["finished_cnt"], st["error_cnt"]) == (20, 0)
    assert_all_objects(node2, 20)


def test_no_workers_fetches_in_the_node_process(origin, tmp_path):
    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--fetch-procs", "0"))
    n.start()
    try:
        job = start_slow_job(origin, n, 10, rate=10_000_000)
        assert workers_of(n.proc.pid) == []
        st = wait_job(n.client(), job, timeout=60)
        assert (st["finished_cnt"], st["error_cnt"]) == (10, 0)
        assert_all_objects(n, 10)
    finally:
        n.stop()


def test_a_node_is_healthy_only_once_its_workers_can_fetch(node2):
    """A job started right after the node answers does not wait on workers' start-up: by then
    each worker has loaded its HTTP engine (libcurl shows in its memory map)."""
    workers = workers_of(node2.proc.pid)
    assert len(workers) == 2
    for pid in workers:
        assert "libcurl" in Path(f"/proc/{pid}/maps").read_text()


class _Counting(BaseHTTPRequestHandler):
    """Slow answers that count how many requests are in progress at once."""

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    now = peak = 0

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        cls = type(self)
        with cls.lock:
            cls.now += 1
            cls.peak = max(cls.peak, cls.now)
        body = payload(self.path, 50_000)
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            time.sleep(0.15)
            self.wfile.write(body[:-1])
        finally:
            with cls.lock:
                cls.now -= 1
        # Counted out before the last byte leaves: the client cannot be done with this request
        # (and start another) while it still counts here, however late this thread runs.
        self.wfile.write(body[-1:])

    def log_message(self, *args: object) -> None:
        pass


def test_max_conns_bounds_every_job_of_the_node_together(tmp_path):
    """Two jobs at once, one of them throttled (fetched in the node process), the other on the
    workers: the node-wide --max-conns holds for their sum."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--max-conns", "3", "--fetch-procs", "2"))
    n.start()
    try:
        c = n.client()
        jobs = [c.start_download({"type": "range", "bucket": {"name": f"j{k}"},
                                  "template": f"{base}/{k}/f{{0..9}}", "limits": limits})
                for k, limits in enumerate([{}, {"bytes_per_hour": 10**12}])]
        for k, job in enumerate(jobs):
            st = wait_job(c, job, timeout=60)
            assert (st["finished_cnt"], st["error_cnt"]) == (10, 0)
            assert c.get_object(Bucket("ais", f"j{k}"), "f3").content == payload(f"/{k}/f3",
                                                                                  50_000)
    finally:
        n.stop()
        server.shutdown()
        server.server_close()
    assert _Counting.peak == 3


def test_a_file_whose_source_never_answers_shows_in_flight(node2, origin):
    """A chunk of one file whose source accepts and never answers: the file shows among the
    job's current tasks (it used to be reported only with some other file's progress)."""
    origin.add("/silent", payload("s", 1000))
    origin.fault("/silent", "hang", seconds=30)
    c = node2.client()
    job = c.start_download({"type": "single", "bucket": {"name": "b"},
                            "link": origin.url_for("/silent")})
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            current = c.download_status(job, only_active=True).get("current_tasks", [])
            if current:
                break
            time.sleep(0.1)
        assert [t["name"] for t in current] == ["silent"]
        assert current[0]["downloaded"] == "0"
    finally:
        c.abort_download(job)
