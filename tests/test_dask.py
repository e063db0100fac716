"""One job on several machines through Dask distributed (`ais serve --scheduler`): a real
`dask scheduler` and `dask worker` processes on loopback, sharing the node's mountpath (as NFS
would on a cluster). Faults: a worker killed, the node killed, the scheduler restarted, a
worker that cannot see the mountpath. Every wait is on a condition, with a bound."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aisdl.client import Client
from conftest import Ais, Node
from helpers import fetched_twice, free_port, objects_on_disk, wait_job
from origin import payload

pytestmark = pytest.mark.timeout(300)


def until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


class DaskCluster:
    """A scheduler on 127.0.0.1 and named workers, each under its nanny (as `dask worker` runs
    by default: the nanny restarts a worker that died, and waits for a scheduler that went
    away)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log_path = tmp / "dask.log"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn([
            sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
            "--port", str(self.port), "--no-dashboard"])

    def add_worker(self, name: str, wrap: tuple[str, ...] = ()) -> None:
        self.workers[name] = self._spawn([
            *wrap, sys.executable, "-m", "distributed.cli.dask_worker", self.address,
            "--name", name, "--nthreads", "1", "--no-dashboard", "--death-timeout", "120"])

    def worker_pid(self, name: str) -> int:
        """The worker process itself (the nanny's child)."""
        nanny = self.workers[name].pid
        kids = [int(p) for t in Path(f"/proc/{nanny}/task").iterdir()
                for p in (t / "children").read_text().split()]
        workers = [k for k in kids
                   if b"resource_tracker" not in Path(f"/proc/{k}/cmdline").read_bytes()]
        assert len(workers) == 1, kids
        return workers[0]

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client as DaskClient

        with DaskClient(self.address, timeout="30s") as c:
            c.wait_for_workers(n, timeout=60)

    def stop(self) -> None:
        for p in [*self.workers.values(), self.scheduler]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    c = DaskCluster(tmp_path)
    c.start_scheduler()
    for name in ("w0", "w1"):
        c.add_worker(name)
    c.wait_for_workers(2)
    yield c
    c.stop()


def dask_node(tmp_path: Path, cluster: DaskCluster) -> Node:
    return Node(free_port(), tmp_path / "home", tmp_path / "node.log",
                extra_args=("--scheduler", cluster.address))


def start_job(c: Client, origin: Any, prefix: str, n: int, **limits: int) -> str:
    job: str = c.start_download({
        "type": "range", "bucket": {"name": "d"},
        "template": origin.url_for(f"/{prefix}/") + f"f{{0000..{n - 1:04d}}}",
        **({"limits": limits} if limits else {})})
    return job


def assert_objects(node: Node, prefix: str, n: int, size: int) -> None:
    mp = next(node.home.rglob("ais/d"))
    for i in range(n):
        name = f"f{i:04d}"
        assert (mp / name).read_bytes() == payload(f"{prefix}{i}", size + i), name
    assert [e["n"] for e in node.client().list_objects(_bucket())] == [
        f"f{i:04d}" for i in range(n)]


def _bucket() -> Any:
    from aisdl.models import Bucket
    return Bucket("ais", "d")


def add_files(origin: Any, prefix: str, n: int, size: int, rate: int = 0) -> None:
    for i in range(n):
        path = f"/{prefix}/f{i:04d}"
        origin.add(path, payload(f"{prefix}{i}", size + i))
        if rate:
            origin.fault(path, "slow", rate=rate)


def test_a_job_runs_on_the_workers_with_exact_counts(origin, cluster, tmp_path) -> None:
    n = 3000
    add_files(origin, "a", n, 1000)
    node = dask_node(tmp_path, cluster)
    node.start()
    try:
        c = node.client()
        job = start_job(c, origin, "a", n)
        st = wait_job(c, job, timeout=180)
        assert (st["finished_cnt"], st["error_cnt"], st["skipped_cnt"]) == (n, 0, 0)
        assert_objects(node, "a", n, 1000)
        assert "sending chunks to the Dask scheduler" in node.log()
        # the node fetched nothing itself: it has no fetch worker processes of its own
        assert fetched_twice(origin, "/a/") == []
    finally:
        node.stop()


def test_progress_names_the_worker_of_each_file(origin, cluster, tmp_path) -> None:
    add_files(origin, "p", 40, 200_000, rate=100_000)
    node = dask_node(tmp_path, cluster)
    node.start()
    try:
        job = start_job(node.client(), origin, "p", 40, connections=8)
        (tmp_path / "cli").mkdir()
        ais = Ais(node, tmp_path / "cli", tmp_path)
        shown = until("a file in flight, with its worker", lambda: (
            out := ais("show", "job", "download", job, "-v", check=False).stdout) and
            ("(on w0)" in out or "(on w1)" in out) and out)
        assert "Progress of files that are currently being downloaded:" in shown
    finally:
        node.stop()


SLOW_N, SLOW_SIZE = 120, 40_000


def slow_job_under_way(origin: Any, cluster: DaskCluster, tmp_path: Path,
                       prefix: str) -> tuple[Node, str]:
    """A node on the cluster with a job of SLOW_N files that take ~0.2 s each, some done."""
    add_files(origin, prefix, SLOW_N, SLOW_SIZE, rate=200_000)
    node = dask_node(tmp_path, cluster)
    node.start()
    c = node.client()
    job = start_job(c, origin, prefix, SLOW_N, connections=16)
    until("some files done", lambda: c.download_status(job)["finished_cnt"] >= 20)
    return node, job


def assert_done_once(origin: Any, node: Node, job: str, prefix: str, placed: set[str]) -> None:
    """The job ended with every file, each stored whole; what was in place at the fault was
    never fetched again."""
    st = wait_job(node.client(), job, timeout=180)
    assert (st["finished_cnt"], st["error_cnt"]) == (SLOW_N, 0)
    assert "waiting" not in st
    assert_objects(node, prefix, SLOW_N, SLOW_SIZE)
    assert not {f"/{prefix}/{name}" for name in placed} & set(
        fetched_twice(origin, f"/{prefix}/"))


def test_a_worker_killed_mid_job_costs_no_file(origin, cluster, tmp_path) -> None:
    node, job = slow_job_under_way(origin, cluster, tmp_path, "k")
    try:
        os.kill(cluster.worker_pid("w0"), signal.SIGKILL)
        placed = objects_on_disk(node.home, "d")
        # its chunks run again elsewhere, taking what it had placed from their journals
        assert_done_once(origin, node, job, "k", placed)
    finally:
        node.stop()


def test_the_node_killed_mid_job_resumes_on_the_workers(origin, cluster, tmp_path) -> None:
    node, job = slow_job_under_way(origin, cluster, tmp_path, "n")
    node.kill9()
    placed = objects_on_disk(node.home, "d")
    node.start()
    try:
        assert_done_once(origin, node, job, "n", placed)
    finally:
        node.stop()


def test_jobs_wait_for_a_restarted_scheduler(origin, cluster, tmp_path) -> None:
    node, job = slow_job_under_way(origin, cluster, tmp_path, "s")
    try:
        c = node.client()
        assert cluster.scheduler is not None
        cluster.scheduler.send_signal(signal.SIGKILL)
        cluster.scheduler.wait(10)
        st = until("the job waits for the scheduler",
                   lambda: (s := c.download_status(job)).get("waiting") and s)
        assert "Dask scheduler" in st["waiting"]
        # Dask workers end with their scheduler; their supervisor (systemd, a batch system)
        # starts them again, as here.
        for proc in cluster.workers.values():
            proc.wait(60)
        cluster.start_scheduler()
        for name in list(cluster.workers):
            cluster.add_worker(name)
        assert_done_once(origin, node, job, "s", set())
    finally:
        node.stop()


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs unshare and root for a mount namespace")
def test_a_worker_that_cannot_see_the_mountpath_is_named(cluster, tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # This worker has its own mount namespace where the node's home is an empty tmpfs: it
    # cannot see the mountpath, as a machine without the shared filesystem would not.
    cluster.add_worker("blind", wrap=("unshare", "-m", "--propagation", "private", "sh", "-c",
                                      f"mount -t tmpfs none {home} && exec \"$0\" \"$@\""))
    cluster.wait_for_workers(3)
    run = subprocess.run([sys.executable, "-m", "aisdl", "serve", "--port", str(free_port()),
                          "--home", str(home), "--scheduler", cluster.address],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    err = run.stderr.strip().splitlines()[-1]
    assert err.startswith("Error: Dask workers must see the node's mountpaths"), err
    assert "worker blind:" in err
    assert "w0" not in err and "w1" not in err
    assert "Traceback" not in run.stderr


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path) -> None:
    run = subprocess.run([sys.executable, "-m", "aisdl", "serve", "--port", str(free_port()),
                          "--home", str(tmp_path / "home"), "--scheduler",
                          f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot reach the Dask scheduler at tcp://127.0.0.1:"), last
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("bad", ["http://h:1", "tcp://h", "tcp://:80", "h:port"])
def test_a_malformed_scheduler_address_is_refused(tmp_path, bad: str) -> None:
    run = subprocess.run([sys.executable, "-m", "aisdl", "serve", "--home", str(tmp_path),
                          "--scheduler", bad], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "expected tcp://HOST:PORT" in run.stderr and "Traceback" not in run.stderr
