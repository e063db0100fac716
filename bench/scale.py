#!/usr/bin/env python3
"""Scaling over machines: one aisdl download job spread over 1, 2, 4 Dask workers, each worker
in its own network namespace behind a link this benchmark shapes itself.

    uv run python bench/scale.py [--workers 1,2,4] [--files 2000] [--size 1MiB]
                                 [--rate 400mbit] [--latency 20ms] [--runs 1] [--modes dask,nodes]

Run as root (it creates network namespaces, veth pairs, a bridge and tc qdiscs). Nothing leaves
the machine: the origin, the scheduler and the node sit on a bridge `aisbr0` (10.77.0.1/16) in
the host namespace; worker i sits in namespace `aisw<i>` (10.77.0.(10+i)) behind a veth pair
shaped with tbf on both ends. Everything is removed at the end, on SIGINT/SIGTERM, and (as
leftovers of a crashed run) at the start.

Modes (see bench/README.md, "Scaling over machines"):
  dask   one node (`ais serve --scheduler`) in the host namespace; its job's chunks run on k
         `dask worker` processes, worker i in namespace aisw<i>
  nodes  no Dask: k of today's nodes, node i in namespace aisw<i>, each given 1/k of the names
         (k = 1 is today's single-machine mode behind the same link): the ceiling that this
         machine and these links allow k-way scale-out, whatever the engine

Results: bench/results/scale/results.json and results.md (--out to change).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402
    CLK_TCK,
    EPOCH,
    aisdl_revision,
    job_id_from,
    log,
    parse_rfc3339,
    proc_cpu,
    stop_process,
)
from scale_origin import block, content  # noqa: E402

from aisdl.units import parse_duration, parse_size  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
AIS, DASK, PYTHON = VENV_BIN / "ais", VENV_BIN / "dask", VENV_BIN / "python"
BRIDGE, BRIDGE_IP, PREFIX_LEN = "aisbr0", "10.77.0.1", 16
NS_PREFIX, HOST_VETH, NS_VETH = "aisw", "aish", "aisn"   # aisw<i>, aish<i> (host), aisn<i> (ns)
SHM = Path("/dev/shm/aisdl-scale")          # mountpaths: every namespace sees the same tmpfs
WORK = Path("/var/tmp/aisdl-scale")         # node homes, dask scratch, logs
PIDFILE = Path("/run/aisdl-scale.pids")     # our children, killed at the next start if alive
BUCKET = "scale"
NODE_PORT = 51080                           # a node in its own namespace has the port to itself
TBF_LATENCY = "50ms"                        # tbf's queue bound (not the origin's --latency)
POLL = 0.25
JOB_TIMEOUT = 600.0
SAMPLE = 32                                 # objects whose bytes are checked per run


def ns_name(i: int) -> str:
    return f"{NS_PREFIX}{i}"


def ns_ip(i: int) -> str:
    return f"10.77.0.{10 + i}"


# ------------------------------------------------------------------------------------------
# commands and processes
# ------------------------------------------------------------------------------------------
def sh(*argv: str, check: bool = True) -> str:
    """Run a short command; on failure raise with its stderr (one line for the user)."""
    p = subprocess.run(argv, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def start_ticks(pid: int) -> str:
    """When the process started (clock ticks after boot): with the pid, it names one process,
    through its exec()s (`ip netns exec` becomes the command it runs) and unlike a reused pid."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def record_pid(proc: subprocess.Popen[bytes]) -> None:
    with open(PIDFILE, "a") as f:
        f.write(f"{proc.pid} {start_ticks(proc.pid)}\n")


def spawn(argv: list[str], log_path: Path, ns: str | None = None,
          env: dict[str, str] | None = None,
          stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
    """Start a long-lived child in its own session (a Ctrl-C reaches only this harness, which
    then stops the children in order), inside namespace `ns` if given; its pid is recorded so
    that a later start can end it if this run crashes."""
    full = (["ip", "netns", "exec", ns] if ns else []) + argv
    logf = open(log_path, "ab")  # noqa: SIM115 (the child holds it; closed when we exit)
    logf.write(("$ " + " ".join(full) + "\n").encode())
    logf.flush()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE if stdout_pipe else logf, stderr=logf,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    with contextlib.suppress(OSError):
        record_pid(proc)
    return proc


def kill_recorded() -> None:
    """End the children (and their children) that a previous, crashed run recorded; a pid
    that now names another process (another start time) is left alone."""
    if not PIDFILE.exists():
        return
    for line in PIDFILE.read_text().splitlines():
        try:
            pid_s, ticks = line.split()
            pid = int(pid_s)
            if start_ticks(pid) == ticks:
                log(f"cleanup: ending pid {pid} of an earlier run")
                for p in tree_pids(pid):
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
        except (ValueError, OSError):
            continue
    PIDFILE.unlink(missing_ok=True)


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (a dask worker's nanny and worker, a node's fetchers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += proc_cpu(p)
    return total


def cpu_times() -> dict[str, float]:
    """The whole machine's CPU seconds so far from /proc/stat: busy (all but idle and iowait,
    steal included), and within it softirq (packet processing, when the tick lands in it) and
    steal (taken by the hypervisor)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return {"busy": busy / CLK_TCK, "softirq": v[6] / CLK_TCK, "steal": v[7] / CLK_TCK}


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(what: str, cond: Any, timeout: float, proc: subprocess.Popen[bytes] | None = None,
               log_path: Path | None = None) -> None:
    """Poll `cond()` every 50 ms until true; fail after `timeout` s or when `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if cond():
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}"
                               + (f"; see {log_path}" if log_path else ""))
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s"
                       + (f"; see {log_path}" if log_path else ""))


# ------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------
def rate_bits(text: str) -> int:
    """tc's rate syntax (bit, kbit, mbit, gbit; kbps/mbps/gbps are bytes) as bits/s."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)", text.strip().lower())
    if not m:
        raise ValueError(f"rate {text!r}: expected e.g. 200mbit, 1gbit, 50mbps")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2)]
    return int(float(m.group(1)) * scale * (8 if m.group(3) == "bps" else 1))


class Network:
    """The bridge and, per worker slot, a namespace with a shaped veth pair."""

    def __init__(self, slots: int, rate: str) -> None:
        self.slots, self.rate = slots, rate
        # tbf needs a bucket of at least one timer tick of the rate and of a GSO packet (64 KiB)
        self.burst = max(64 * 1024, rate_bits(rate) // 8 // 250)

    @staticmethod
    def remove_leftovers() -> None:
        for ns in sh("ip", "netns", "list", check=False).split("\n"):
            name = ns.split(" ")[0]
            if re.fullmatch(rf"{NS_PREFIX}\d+", name):
                Network.kill_ns_pids(name)
                log(f"cleanup: removing namespace {name} of an earlier run")
                sh("ip", "netns", "del", name, check=False)
        for line in sh("ip", "-o", "link", "show", check=False).split("\n"):
            m = re.match(rf"\d+: ({HOST_VETH}\d+|{BRIDGE})[@:]", line)
            if m:
                log(f"cleanup: removing link {m.group(1)} of an earlier run")
                sh("ip", "link", "del", m.group(1), check=False)

    @staticmethod
    def kill_ns_pids(ns: str) -> None:
        """Processes still inside one of our namespaces are ours (workers, nodes)."""
        for pid_s in sh("ip", "netns", "pids", ns, check=False).split():
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid_s), signal.SIGKILL)

    def up(self) -> None:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{BRIDGE_IP}/{PREFIX_LEN}", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for i in range(1, self.slots + 1):
            ns, hv, nv = ns_name(i), f"{HOST_VETH}{i}", f"{NS_VETH}{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", hv, "type", "veth", "peer", "name", nv)
            sh("ip", "link", "set", nv, "netns", ns)
            sh("ip", "link", "set", hv, "master", BRIDGE)
            sh("ip", "link", "set", hv, "up")
            sh("ip", "-n", ns, "addr", "add", f"{ns_ip(i)}/{PREFIX_LEN}", "dev", nv)
            sh("ip", "-n", ns, "link", "set", nv, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", BRIDGE_IP)
            tbf = ["root", "tbf", "rate", self.rate, "burst", str(self.burst),
                   "latency", TBF_LATENCY]
            sh("tc", "qdisc", "add", "dev", hv, *tbf)                      # into the worker
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", nv, *tbf)   # out of it

    def down(self) -> None:
        for i in range(1, self.slots + 1):
            self.kill_ns_pids(ns_name(i))
            sh("ip", "netns", "del", ns_name(i), check=False)
            sh("ip", "link", "del", f"{HOST_VETH}{i}", check=False)
        sh("ip", "link", "del", BRIDGE, check=False)


# ------------------------------------------------------------------------------------------
# origin, scheduler, workers, nodes
# ------------------------------------------------------------------------------------------
class Origin:
    def __init__(self, size: int, latency: float, log_path: Path) -> None:
        self.port = free_port(BRIDGE_IP)
        self.base = f"http://{BRIDGE_IP}:{self.port}"
        self.proc = spawn([str(PYTHON), str(REPO / "bench" / "scale_origin.py"), "--host",
                           BRIDGE_IP, "--port", str(self.port), "--size", str(size),
                           "--latency", str(latency)], log_path, stdout_pipe=True)
        assert self.proc.stdout
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        if not ready or self.proc.stdout.readline().strip() != b"ready":
            self.stop()
            raise RuntimeError(f"the origin did not start; see {log_path}")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 10)


class Node:
    """One `ais serve`: in the host namespace on loopback (dask mode), or inside a worker
    namespace listening on that namespace's address (nodes mode)."""

    def __init__(self, name: str, extra: list[str], log_path: Path, slot: int = 0) -> None:
        self.home, self.mount = WORK / name / "home", SHM / name
        for d in (self.home, self.mount):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        if slot:
            host, self.port = ns_ip(slot), NODE_PORT
            extra = ["--host", host, "--no-auth", *extra]
        else:
            host, self.port = "127.0.0.1", free_port("127.0.0.1")
        self.endpoint = f"http://{host}:{self.port}"
        self.log_path = log_path
        self.proc = spawn([str(AIS), "serve", "--port", str(self.port), "--home", str(self.home),
                           "--mountpath", str(self.mount), "--allow-private-egress", *extra],
                          log_path, ns=ns_name(slot) if slot else None)
        self.session = requests.Session()
        wait_until(f"node {name}",
                   lambda: self.session.get(f"{self.endpoint}/v1/health", timeout=1).ok,
                   90, self.proc, log_path)

    def start_job(self, source: str, log_path: Path) -> str:
        env = dict(os.environ, AIS_ENDPOINT=self.endpoint)
        with open(log_path, "w") as f:
            rc = subprocess.run([str(AIS), "start", "download", source, f"ais://{BUCKET}/"],
                                stdout=f, stderr=f, env=env).returncode
        if rc != 0:
            raise RuntimeError(f"`ais start download` exited {rc}; see {log_path}")
        return job_id_from(log_path)

    def status(self, job: str, errors: bool = False) -> dict[str, Any]:
        """The job's status; with `errors`, also its per-file errors (`download_errors`)."""
        r = self.session.get(f"{self.endpoint}/v1/download",
                             json={"id": job, "only_active_tasks": not errors}, timeout=30)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def objects_dir(self) -> Path:
        return self.mount / "ais" / BUCKET

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 30)


class DaskCluster:
    """A scheduler in the host namespace and k workers, worker i in namespace aisw<i>."""

    def __init__(self, k: int, logs: Path, tag: str) -> None:
        from distributed import Client

        self.port = free_port(BRIDGE_IP)
        self.address = f"tcp://{BRIDGE_IP}:{self.port}"
        lp = logs / f"{tag}-scheduler.log"
        self.scheduler = spawn([str(DASK), "scheduler", "--host", BRIDGE_IP, "--port",
                                str(self.port), "--no-dashboard"], lp)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.client: Any = None
        wait_until("dask scheduler", lambda: self._connect(Client), 60, self.scheduler, lp)
        for i in range(1, k + 1):
            scratch = WORK / f"dask-w{i}"
            scratch.mkdir(parents=True, exist_ok=True)
            self.workers.append(spawn(
                [str(DASK), "worker", self.address, "--nworkers", "1", "--nthreads", "1",
                 "--no-dashboard", "--name", f"w{i}", "--local-directory", str(scratch)],
                logs / f"{tag}-worker{i}.log", ns=ns_name(i)))
        wait_until(f"{k} dask workers registered", lambda: self._registered() == k, 90,
                   self.scheduler, lp)
        self._task_stream(None)   # installs the scheduler's task-stream plugin

    def _connect(self, client_cls: Any) -> bool:
        self.client = client_cls(self.address, timeout="2s")
        return True

    def _registered(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def _task_stream(self, since: float | None) -> list[dict[str, Any]]:
        return list(self.client.get_task_stream(start=since))

    def cpu(self) -> dict[str, float]:
        return {"scheduler": tree_cpu(self.scheduler.pid),
                "workers": sum(tree_cpu(w.pid) for w in self.workers)}

    def task_stream(self, since: float) -> list[dict[str, Any]]:
        """The chunks the scheduler saw run since `since` (time.time())."""
        return self._task_stream(since)

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=5)
        for w in self.workers:
            stop_process(w, signal.SIGTERM, 15)
        stop_process(self.scheduler, signal.SIGTERM, 15)


def chunk_overhead(stream: list[dict[str, Any]], k: int, job_wall: float) -> dict[str, Any]:
    """Dask's cost per chunk, from the scheduler's task stream: each task's compute span (the
    chunk's own work on its worker, from the worker's clock) and, per worker, the idle gaps
    between its chunks: time when the worker ran no chunk while the job went on (the
    worker -> scheduler -> worker round trip per chunk, plus any wait for the node to submit
    more). A worker may run chunks side by side (they are coroutines); the gaps are then the
    holes in the union of its spans. gap share = the gaps' part of the workers' time between
    their first chunk's start and their last chunk's end."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for t in stream:
        for ss in t.get("startstops", []):
            if ss.get("action") == "compute":
                spans.setdefault(str(t.get("worker")), []).append((ss["start"], ss["stop"]))
    computes = [b - a for s in spans.values() for a, b in s]
    if not computes:
        return {"tasks": 0}
    gaps: list[float] = []
    covered = window = 0.0
    for s in spans.values():
        s.sort()
        end = s[0][1]
        covered += end - s[0][0]
        for a, b in s[1:]:
            if a > end:
                gaps.append(a - end)
                covered += b - a
            else:
                covered += max(0.0, b - end)
            end = max(end, b)
        window += end - s[0][0]
    return {
        "tasks": len(computes),
        "tasks_per_worker": {w: len(s) for w, s in sorted(spans.items())},
        "median_compute_s": statistics.median(computes),
        "mean_compute_s": statistics.fmean(computes),
        "concurrency": sum(computes) / covered if covered > 0 else 0.0,
        "gaps": len(gaps),
        "median_gap_s": statistics.median(gaps) if gaps else 0.0,
        "mean_gap_s": statistics.fmean(gaps) if gaps else 0.0,
        "gap_share": sum(gaps) / window if window > 0 else 0.0,
        "busy_share": covered / (k * job_wall) if job_wall > 0 else 0.0,
    }


# ------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    mode: str
    workers: int
    ok: bool
    job_wall_s: float = 0.0
    mb_per_s: float = 0.0
    files_per_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    machine_cores: dict[str, float] = field(default_factory=dict)
    dask: dict[str, Any] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    link_bytes: dict[str, int] = field(default_factory=dict)
    error: str = ""


def slices(n: int, k: int) -> list[tuple[int, int]]:
    """k contiguous ranges [a, b] (inclusive) covering 0..n-1 as evenly as possible."""
    cuts = [n * j // k for j in range(k + 1)]
    return [(cuts[j], cuts[j + 1] - 1) for j in range(k) if cuts[j + 1] > cuts[j]]


def check_objects(node: Node, first: int, last: int, size: int, tail: bytes) -> None:
    """All names present (no extras, no partial files) and the bytes of a sample of them."""
    d = node.objects_dir()
    expected = {str(i) for i in range(first, last + 1)}
    found = {p.name for p in d.iterdir()} if d.is_dir() else set()
    if found != expected:
        raise RuntimeError(f"{d}: {len(found)} files, expected {len(expected)}; missing "
                           f"{sorted(expected - found)[:5]}, extra {sorted(found - expected)[:5]}")
    picks = {first, last, *random.sample(range(first, last + 1), min(SAMPLE, last - first + 1))}
    for i in sorted(picks):
        if (d / str(i)).read_bytes() != content(i, size, tail):
            raise RuntimeError(f"{d / str(i)}: content differs from the origin's")


def link_sent(k: int) -> dict[str, int]:
    """Bytes each host-side veth's qdisc has sent (into the worker namespaces) so far."""
    out = {}
    for i in range(1, k + 1):
        m = re.search(r"Sent (\d+) bytes", sh("tc", "-s", "qdisc", "show", "dev",
                                              f"{HOST_VETH}{i}", check=False))
        out[f"{HOST_VETH}{i}"] = int(m.group(1)) if m else -1
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, logs: Path) -> None:
        self.args, self.logs = args, logs
        self.size: int = args.size_bytes
        self.tail = block(self.size)
        self.origin: Origin | None = None

    def run(self, mode: str, k: int, rep: int) -> RunResult:
        tag = f"{mode}-{k}w-r{rep}"
        res = RunResult(mode, k, False, load_before=os.getloadavg())
        cluster: DaskCluster | None = None
        nodes: list[Node] = []
        try:
            assert self.origin
            n = self.args.files
            if mode == "dask":
                cluster = DaskCluster(k, self.logs, tag)
                nodes = [Node(f"{tag}-node", ["--scheduler", cluster.address],
                              self.logs / f"{tag}-node.log")]
                parts = [(0, n - 1)]
            else:
                parts = slices(n, k)
                for j in range(len(parts)):
                    nodes.append(Node(f"{tag}-node{j + 1}", [],
                                      self.logs / f"{tag}-node{j + 1}.log", slot=j + 1))
            sent0 = link_sent(k)
            cpu0 = self.cpu(nodes, cluster)
            busy0, t_poll0, since = cpu_times(), time.perf_counter(), time.time()
            jobs = [node.start_job(f"{self.origin.base}/f/{{{a}..{b}}}",
                                   self.logs / f"{tag}-cli{j + 1}.log")
                    for j, (node, (a, b)) in enumerate(zip(nodes, parts, strict=True))]
            statuses = self.wait(nodes, jobs)
            seen = time.perf_counter() - t_poll0
            cpu1, busy1 = self.cpu(nodes, cluster), cpu_times()
            res.load_after = os.getloadavg()
            sent1 = link_sent(k)
            res.link_bytes = {dev: sent1[dev] - sent0[dev] for dev in sent1}
            for node, job, st, (a, b) in zip(nodes, jobs, statuses, parts, strict=True):
                if st.get("aborted") or st.get("error_cnt") or st.get("skipped_cnt") \
                        or st.get("finished_cnt") != b - a + 1:
                    errs = node.status(job, errors=True).get("download_errors") or []
                    raise RuntimeError(
                        f"job {job}: finished {st.get('finished_cnt')} of {b - a + 1}, errors "
                        f"{st.get('error_cnt')}, skipped {st.get('skipped_cnt')}, aborted "
                        f"{st.get('aborted')}; first error: {errs[0] if errs else '-'}")
            start = min(parse_rfc3339(st["started_time"]) for st in statuses)
            end = max(parse_rfc3339(st["finished_time"]) for st in statuses)
            res.job_wall_s = end - start
            res.mb_per_s = n * self.size / 1e6 / res.job_wall_s
            res.files_per_s = n / res.job_wall_s
            res.cpu_s = {key: cpu1[key] - cpu0[key] for key in cpu0}
            res.cpu_cores = {key: v / seen for key, v in res.cpu_s.items()}
            res.machine_cores = {key: (busy1[key] - busy0[key]) / seen for key in busy0}
            # what the machine spent beyond our processes: other users' work on this shared
            # machine plus kernel work charged to no process
            res.machine_cores["others"] = max(
                0.0, res.machine_cores["busy"] - sum(res.cpu_cores.values()))
            if cluster is not None:
                res.dask = chunk_overhead(cluster.task_stream(since), k, res.job_wall_s)
            for node, (a, b) in zip(nodes, parts, strict=True):
                check_objects(node, a, b, self.size, self.tail)
            res.ok = True
        except Exception as e:  # one failed configuration is reported, the others still run
            res.error = f"{type(e).__name__}: {e}"
        finally:
            for node in nodes:
                node.stop()
            if cluster is not None:
                cluster.stop()
            for node in nodes:   # free the tmpfs before the next run
                shutil.rmtree(node.mount, ignore_errors=True)
        return res

    def cpu(self, nodes: list[Node], cluster: DaskCluster | None) -> dict[str, float]:
        assert self.origin
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN)
        out = {"node": sum(nd.cpu() for nd in nodes), "origin": tree_cpu(self.origin.proc.pid),
               # this process (its status polls, its Dask client) and the `ais` CLI it ran
               "harness": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}
        if cluster is not None:
            out.update(cluster.cpu())
        return out

    def wait(self, nodes: list[Node], jobs: list[str]) -> list[dict[str, Any]]:
        """Poll every job's status until each has a finished_time (the node's own stamp, so
        the poll interval adds no error to the wall time)."""
        deadline = time.monotonic() + JOB_TIMEOUT
        done: dict[int, dict[str, Any]] = {}
        while len(done) < len(jobs):
            for j, (node, job) in enumerate(zip(nodes, jobs, strict=True)):
                if j not in done:
                    st = node.status(job)
                    if st["finished_time"] != EPOCH:
                        done[j] = st
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs not finished after {JOB_TIMEOUT:.0f} s")
            if len(done) < len(jobs):
                time.sleep(POLL)
        return [done[j] for j in range(len(jobs))]


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------
def node_has_scheduler_flag() -> bool:
    out = subprocess.run([str(AIS), "serve", "--help"], capture_output=True, text=True).stdout
    return "--scheduler" in out


def machine_facts() -> dict[str, Any]:
    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break

    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": cpu_model, "kernel": platform.release(),
        "python": platform.python_version(), "loadavg_start": os.getloadavg(),
        "aisdl_revision": {**aisdl_revision(), "commit": sh(
            "git", "-C", str(REPO), "rev-parse", "HEAD", check=False).strip()},
        "versions": {p: version(p) for p in ("aisdl", "aiohttp", "distributed", "dask")},
    }


def summarize(runs: list[RunResult], files: int, size: int) -> dict[str, dict[str, Any]]:
    """Per mode and worker count: medians over the good runs, speed-up against 1 worker."""
    out: dict[str, dict[str, Any]] = {}
    for mode in dict.fromkeys(r.mode for r in runs):
        rows: dict[str, Any] = {}
        for k in sorted({r.workers for r in runs if r.mode == mode}):
            good = [r for r in runs if r.mode == mode and r.workers == k and r.ok]
            row: dict[str, Any] = {"runs": len(good),
                                   "failed": sum(1 for r in runs if r.mode == mode
                                                 and r.workers == k and not r.ok)}
            if good:
                row["job_wall_s"] = statistics.median(r.job_wall_s for r in good)
                row["mb_per_s"] = statistics.median(r.mb_per_s for r in good)
                row["files_per_s"] = statistics.median(r.files_per_s for r in good)
                row["via_links"] = statistics.median(
                    sum(r.link_bytes.values()) / (files * size) for r in good)
                row["machine_cores"] = {key: statistics.median(r.machine_cores[key] for r in good)
                                        for key in good[0].machine_cores}
                row["cpu_cores"] = {key: statistics.median(r.cpu_cores[key] for r in good)
                                    for key in good[0].cpu_cores}
                if good[0].dask.get("tasks"):
                    row["dask"] = {key: statistics.median(r.dask[key] for r in good)
                                   for key in ("tasks", "median_compute_s", "mean_compute_s",
                                               "concurrency", "median_gap_s", "mean_gap_s",
                                               "gap_share", "busy_share")}
            rows[str(k)] = row
        base = rows.get("1", {}).get("mb_per_s")
        for row in rows.values():
            if base and row.get("mb_per_s"):
                row["speedup"] = row["mb_per_s"] / base
        out[mode] = rows
    return out


def verdict(summary: dict[str, dict[str, Any]], kmax: int) -> list[str]:
    """The issue's target (>= 3.5x at 4 workers) against the largest count measured, and each
    dask rate against the nodes rate at the same count (Dask's cost, when both ran)."""
    if kmax < 2:
        return []
    out = ["## Against the target", ""]
    for mode, rows in summary.items():
        sp = rows.get(str(kmax), {}).get("speedup")
        if sp is not None:
            goal = 3.5 * kmax / 4
            out.append(f"- {mode}: {sp:.2f}× at {kmax} workers (target ≥ {goal:.2f}×: "
                       f"{'met' if sp >= goal else 'NOT met'})")
    if "dask" in summary and "nodes" in summary:
        for k, row in summary["dask"].items():
            ref = summary["nodes"].get(k, {}).get("mb_per_s")
            if ref and row.get("mb_per_s"):
                out.append(f"- {k} workers: dask {row['mb_per_s']:.1f} MB/s = "
                           f"{row['mb_per_s'] / ref:.0%} of k nodes without Dask ({ref:.1f})")
    return out + [""]


def fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def write_report(out: Path, results: dict[str, Any]) -> None:
    a, m = results["args"], results["machine"]
    link_mb = rate_bits(a["rate"]) / 8 / 1e6
    lines = [
        "# Scaling over machines: one job over k Dask workers behind shaped links",
        "",
        f"`{results['command']}` — {m['date']}, {results['elapsed_min']:.1f} min. "
        "How it works and what the columns mean: `bench/README.md`, \"Scaling over machines\".",
        "",
        f"- job: {a['files']:,} files × {a['size']} (`/f/{{0..{a['files'] - 1}}}`), origin "
        f"sleeps {a['latency']} per request; each worker's link: tbf {a['rate']} "
        f"({link_mb:.1f} MB/s) each way",
        f"- machine: {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}, Python "
        f"{m['python']}; load average at start {fmt(m['loadavg_start'][0])}, at end "
        f"{fmt(m.get('loadavg_end', [None])[0])}",
        f"- aisdl {m['aisdl_revision']['commit'][:12]} (src {m['aisdl_revision']['src_sha256']})"
        f", " + ", ".join(f"{p} {v}" for p, v in m["versions"].items()),
        f"- node has `--scheduler`: {'yes' if results['scheduler_flag'] else 'no'}",
        "",
    ]
    for mode, rows in results["summary"].items():
        title = {"dask": "dask: one node, its job's chunks on k Dask workers",
                 "nodes": "nodes: k of today's nodes, one per namespace, 1/k of the names "
                          "each (no Dask)"}[mode]
        lines += [f"## {title}", "",
                  "| workers | runs | wall s | MB/s | files/s | speed-up vs 1 | link use | "
                  "via links | "
                  "node | scheduler | workers | origin | harness | machine busy | softirq | "
                  "steal | others | chunks | chunk s | parallel | gap s | gap share | "
                  "workers busy |",
                  "|" + "---:|" * 23]
        for k, r in rows.items():
            c, mc, d = r.get("cpu_cores", {}), r.get("machine_cores", {}), r.get("dask", {})
            use = r["mb_per_s"] / (int(k) * link_mb) * 100 if r.get("mb_per_s") else None
            runs = f"{r['runs']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
            cells = [k, runs, fmt(r.get("job_wall_s")), fmt(r.get("mb_per_s"), 1),
                     fmt(r.get("files_per_s"), 0), fmt(r.get("speedup")),
                     f"{fmt(use, 0)}%", f"{fmt(r.get('via_links', 0) * 100, 0)}%",
                     fmt(c.get("node")), fmt(c.get("scheduler")),
                     fmt(c.get("workers")), fmt(c.get("origin")), fmt(c.get("harness")),
                     fmt(mc.get("busy")),
                     fmt(mc.get("softirq")), fmt(mc.get("steal")), fmt(mc.get("others")),
                     fmt(d.get("tasks"), 0), fmt(d.get("median_compute_s"), 3),
                     fmt(d.get("concurrency"), 1),
                     fmt(d.get("median_gap_s"), 4),
                     f"{fmt(d['gap_share'] * 100 if d else None, 1)}%",
                     f"{fmt(d['busy_share'] * 100 if d else None, 0)}%"]
            lines.append("| " + " | ".join(str(x) for x in cells) + " |")
        lines += ["", "CPU columns (node … others) are in cores: CPU seconds over the job's "
                  "wall time.", ""]
    lines += verdict(results["summary"], max(int(k) for rows in results["summary"].values()
                                             for k in rows) if results["summary"] else 0)
    failed = [r for r in results["runs"] if not r["ok"]]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- {r['mode']} {r['workers']} workers: {r['error']}" for r in failed]
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------
def preflight(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("Error: run as root (network namespaces, veth, tc)")
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            sys.exit(f"Error: `{tool}` not found (install iproute2)")
    for exe in (AIS, PYTHON) + ((DASK,) if "dask" in args.modes else ()):
        if not exe.exists():
            sys.exit(f"Error: {exe} missing: run `uv sync --frozen`")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", default="1MiB", help="bytes of every file (e.g. 1MiB, 256KiB)")
    ap.add_argument("--rate", default="400mbit",
                    help="tbf rate of each worker's link, each way (tc syntax: 200mbit, 1gbit)")
    ap.add_argument("--latency", default="20ms", help="the origin's sleep before each answer")
    ap.add_argument("--runs", type=int, default=1, help="runs per mode and worker count")
    ap.add_argument("--modes", default=None,
                    help="dask and/or nodes, comma-separated (default: both when the node has "
                         "--scheduler, else nodes)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "scale"))
    ap.add_argument("--report-only", action="store_true",
                    help="re-render results.md from the results.json in --out")
    args = ap.parse_args()
    if args.report_only:
        return args
    try:
        args.size_bytes = parse_size(args.size)
        args.latency_s = parse_duration(args.latency)
        rate_bits(args.rate)
        args.counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError as e:
        ap.error(str(e))
    if not args.counts or min(args.counts) < 1 or args.files < 1:
        ap.error("--workers needs counts >= 1 and --files >= 1")
    if args.modes is None:
        args.modes = ["dask", "nodes"] if node_has_scheduler_flag() else ["nodes"]
        if args.modes == ["nodes"]:
            log("this aisdl's `ais serve` has no --scheduler: measuring the nodes mode only")
    else:
        args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        for m in args.modes:
            if m not in ("dask", "nodes"):
                ap.error(f"unknown mode {m!r}")
    return args


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` clean-up runs on both."""
    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main() -> int:
    args = parse_args()
    if args.report_only:
        out = Path(args.out)
        write_report(out, json.loads((out / "results.json").read_text()))
        log(f"report: {out / 'results.md'}")
        return 0
    preflight(args)
    if "dask" in args.modes and not node_has_scheduler_flag():
        sys.exit("Error: this aisdl's `ais serve` has no --scheduler; use --modes nodes")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = WORK / "logs"
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": "uv run python bench/scale.py " + " ".join(sys.argv[1:]),
        "args": {k: v for k, v in vars(args).items()},
        "scheduler_flag": node_has_scheduler_flag(), "runs": []}
    runs: list[RunResult] = []
    net = Network(max(args.counts), args.rate)
    bench: Bench | None = None
    failed = False
    with terminate_as_interrupt():
        try:
            kill_recorded()
            Network.remove_leftovers()
            shutil.rmtree(SHM, ignore_errors=True)
            shutil.rmtree(WORK, ignore_errors=True)
            logs.mkdir(parents=True)
            SHM.mkdir(parents=True)
            results["machine"] = machine_facts()
            net.up()
            bench = Bench(args, logs)
            bench.origin = Origin(bench.size, args.latency_s, logs / "origin.log")
            log(f"network up: {BRIDGE} {BRIDGE_IP}/{PREFIX_LEN}, {net.slots} namespaces, tbf "
                f"{args.rate} burst {net.burst} each way; origin {bench.origin.base}; logs {logs}")
            for rep in range(args.runs):
                for mode in args.modes:
                    for k in args.counts:
                        r = bench.run(mode, k, rep)
                        runs.append(r)
                        if r.ok:
                            log(f"{mode} {k} workers: {r.job_wall_s:.2f} s, {r.mb_per_s:.1f} "
                                f"MB/s, {r.files_per_s:.0f} files/s; cores " + ", ".join(
                                    f"{key} {v:.2f}" for key, v in r.cpu_cores.items())
                                + "; machine " + ", ".join(
                                    f"{key} {v:.2f}" for key, v in r.machine_cores.items()))
                        else:
                            failed = True
                            log(f"{mode} {k} workers FAILED: {r.error}")
        except KeyboardInterrupt:
            log("interrupted")
            failed = True
        finally:
            if bench is not None and bench.origin is not None:
                bench.origin.stop()
            net.down()
            shutil.rmtree(SHM, ignore_errors=True)
            PIDFILE.unlink(missing_ok=True)
            log("cleaned up: namespaces, links, bridge, processes, tmpfs")
    if "machine" not in results:
        return 1
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_min"] = (time.monotonic() - started) / 60
    results["runs"] = [r.__dict__ for r in runs]
    results["summary"] = summarize(runs, args.files, args.size_bytes)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(out, results)
    # every run's raw numbers are kept: one run on a shared 2-core machine is one sample
    hist = out / "history"
    hist.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M")
    shutil.copy(out / "results.json", hist / f"{stamp}-{'-'.join(args.modes)}.json")
    for mode, rows in results["summary"].items():
        log(f"{mode}: " + "; ".join(f"{k} workers {r.get('mb_per_s', 0):.1f} MB/s "
                                    f"(x{r.get('speedup', 0):.2f})" for k, r in rows.items()))
    log(f"report: {out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
