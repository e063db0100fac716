#!/usr/bin/env python3
"""Benchmark aisdl against wget2, curl -Z, rclone and aria2c on data served by a local nginx.

    uv run python bench/run.py [--runs 5] [--workloads a,b,c,d] [--quick]

Workloads (see bench/README.md):
  a  4 x 512 MiB          written to disk
  b  5,000 x 64 KiB       written to disk
  c  5,000 x 64 KiB       written to a tmpfs
  d  10,000,000-name range template against a location that answers at once (aisdl only):
     time to the first committed object, node RSS after a minute

Every tool is timed from the start of its process (for aisdl: the `ais start download` command
against an idle node) until its last file is complete (for aisdl: the job's `finished_time`,
taken after the last object was committed). Runs are interleaved: each repetition runs every
tool once, in a rotated order. Every output is checked (names, count, sizes, xxh3 of all bytes).
Scratch data lives under --workdir (default /var/tmp/aisdl-bench), outside the repository.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import xxhash

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
AIS = REPO / ".venv" / "bin" / "ais"
KiB, MiB = 1 << 10, 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
EPOCH = "1970-01-01T00:00:00Z"
BUCKET = "bench"
POLL = 0.25            # seconds between status polls of a job (its end time comes from the node)
RUN_TIMEOUT = 900.0    # seconds before one run is killed and recorded as failed
PEERS = ("wget2", "curl", "rclone", "aria2c")
TOOLS = ("aisdl",) + PEERS


# ------------------------------------------------------------------------------------------
# workloads and data
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    src: str          # folder under the data root (and URL path) holding the files
    count: int
    size: int
    target: str       # "disk" or "tmpfs"
    width: int        # digits of the file number

    def names(self) -> list[str]:
        return [self.name(i) for i in range(self.count)]

    def name(self, i: int) -> str:
        return f"{self.stem}{i:0{self.width}d}"

    @property
    def stem(self) -> str:
        return "big-" if self.src == "a" else "f-"

    def template(self, base: str) -> str:
        last = f"{self.count - 1:0{self.width}d}"
        return f"{base}/{self.src}/{self.stem}{{{'0' * self.width}..{last}}}"

    @property
    def total_bytes(self) -> int:
        return self.count * self.size


WORKLOADS = {
    "a": Workload("a", "4 × 512 MiB, to disk", "a", 4, 512 * MiB, "disk", 1),
    "b": Workload("b", "5,000 × 64 KiB, to disk", "b", 5000, 64 * KiB, "disk", 4),
    "c": Workload("c", "5,000 × 64 KiB, to tmpfs", "b", 5000, 64 * KiB, "tmpfs", 4),
}
D_NAMES = 10_000_000
D_TITLE = "10,000,000-name range template, instant server (aisdl only)"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def file_xxh(path: Path) -> str:
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def make_data(root: Path) -> dict[str, dict[str, Any]]:
    """Random files for workloads a and b plus their manifest (size, xxh3_64, md5); made once,
    reused while the manifest matches the files' sizes."""
    manifest_path = root / "manifest.json"
    wanted = {"a": WORKLOADS["a"], "b": WORKLOADS["b"]}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        ok = all(
            f"{w.src}/{n}" in manifest and (root / w.src / n).is_file()
            and (root / w.src / n).stat().st_size == w.size
            for w in wanted.values() for n in w.names())
        if ok:
            log(f"data: reusing {len(manifest)} files under {root}")
            return dict(manifest)
    log(f"data: generating random files under {root} (once)")
    manifest = {}
    for w in wanted.values():
        d = root / w.src
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for n in w.names():
            xh, md5 = xxhash.xxh3_64(), hashlib.md5()
            with open(d / n, "wb") as f:
                left = w.size
                while left:
                    chunk = os.urandom(min(left, 8 * MiB))
                    f.write(chunk)
                    xh.update(chunk)
                    md5.update(chunk)
                    left -= len(chunk)
            manifest[f"{w.src}/{n}"] = {"size": w.size, "xxh3_64": xh.hexdigest(),
                                        "md5": md5.hexdigest()}
    manifest_path.write_text(json.dumps(manifest, indent=0, sort_keys=True))
    return manifest


def warm(root: Path, src: str) -> None:
    """Read the source files so nginx serves them from the page cache."""
    for p in sorted((root / src).iterdir()):
        with open(p, "rb") as f:
            while f.read(8 * MiB):
                pass


def resident_share(root: Path, src: str) -> float:
    """Fraction of the source files resident in the page cache (fincore), -1 if unknown."""
    try:
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES,SIZE",
                              *map(str, sorted((root / src).iterdir()))],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return -1.0
    res = size = 0
    for line in out.split("\n"):
        if line.strip():
            r, s = line.split()
            res, size = res + int(r), size + int(s)
    return res / size if size else -1.0


class VerifyError(Exception):
    pass


def verify(outdir: Path, w: Workload, manifest: dict[str, dict[str, Any]]) -> None:
    """Exactly the expected names, each with the expected size and xxh3 of all its bytes."""
    if not outdir.is_dir():
        raise VerifyError(f"output folder {outdir} missing")
    found = {p.name for p in outdir.iterdir()}
    expected = set(w.names())
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise VerifyError(f"{len(found)} files in {outdir}, expected {len(expected)}; "
                          f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                          f"extra {extra[:5]}{'...' if len(extra) > 5 else ''}")
    for n in sorted(expected):
        want = manifest[f"{w.src}/{n}"]
        p = outdir / n
        if not p.is_file() or p.stat().st_size != want["size"]:
            raise VerifyError(f"{p}: size {p.stat().st_size}, expected {want['size']}")
        if file_xxh(p) != want["xxh3_64"]:
            raise VerifyError(f"{p}: content differs from the source (xxh3)")


# ------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of a live process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all but idle and iowait), steal included."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class ChildResult:
    rc: int
    wall: float
    cpu: float
    maxrss_kib: int
    timed_out: bool


GNU_TIME = "/usr/bin/time"


def run_child(argv: list[str], log_path: Path, timeout: float = RUN_TIMEOUT,
              env: dict[str, str] | None = None) -> ChildResult:
    """Run a command to completion under GNU time: wall time from spawn to exit (perf_counter),
    CPU from wait4 (the command plus the tiny `time` wrapper), max RSS from `time`'s %M.

    Not ru_maxrss of our own child: Linux keeps the high-water mark across exec, so a child
    forked from this ~50 MiB Python process would report at least 50 MiB whatever it runs."""
    rss_file = log_path.with_suffix(".rss")
    with open(log_path, "ab") as logf:
        logf.write(("$ " + " ".join(argv) + "\n").encode())
        logf.flush()
        t0 = time.perf_counter()
        p = subprocess.Popen([GNU_TIME, "-f", "%M", "-o", str(rss_file), *argv], stdout=logf,
                             stderr=logf, stdin=subprocess.DEVNULL, env=env)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            p.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
    try:
        maxrss = int(rss_file.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        maxrss = 0
    return ChildResult(p.returncode, wall, ru.ru_utime + ru.ru_stime, maxrss, killed.is_set())


class Nginx:
    """nginx serving the data root on 127.0.0.1: /a/, /b/ from disk (page cache), /d/ at once."""

    def __init__(self, prefix: Path, root: Path) -> None:
        self.prefix, self.root = prefix, root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        p = self.prefix
        return f"""
worker_processes auto;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    open_file_cache max=20000 inactive=10m;
    open_file_cache_valid 10m;
    open_file_cache_errors on;
    default_type application/octet-stream;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        root {self.root};
        location /a/ {{ autoindex on; }}
        location /b/ {{ autoindex on; }}
        location /d/ {{ return 200 "x"; }}
    }}
}}
"""

    def start(self) -> None:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.config())
        argv = ["nginx", "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"]
        log_f = open(self.prefix / "stderr.log", "ab")  # noqa: SIM115 (lives with nginx)
        self.proc = subprocess.Popen(argv, stdout=log_f, stderr=log_f)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base}/d/ping", timeout=1).text == "x":
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"nginx did not start; see {self.prefix}/error.log")

    def worker_pids(self) -> list[int]:
        assert self.proc
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def cpu(self) -> float:
        total = 0.0
        for pid in self.worker_pids():
            try:
                total += proc_cpu(pid)
            except OSError:
                pass
        return total

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, signal.SIGQUIT, 10)


class Node:
    """One aisdl node (`ais serve`), fresh home and mountpath on the target filesystem."""

    def __init__(self, base: Path, log_path: Path, extra: list[str]) -> None:
        self.home, self.mount = base / "home", base / "mp"
        for d in (self.home, self.mount):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        argv = [str(AIS), "serve", "--port", str(self.port), "--home", str(self.home),
                "--mountpath", str(self.mount), *extra]
        self.log_f = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.log_f.write(("$ " + " ".join(argv) + "\n").encode())
        self.log_f.flush()
        self.proc = subprocess.Popen(argv, stdout=self.log_f, stderr=self.log_f,
                                     stdin=subprocess.DEVNULL)
        self.session = requests.Session()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"aisdl node exited with {self.proc.returncode}; "
                                   f"see {log_path}")
            try:
                if self.session.get(f"{self.endpoint}/v1/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"aisdl node did not become healthy; see {log_path}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        """The node and its fetch worker processes."""
        kids: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            kids += [int(p) for p in (task / "children").read_text().split()]
        return [self.pid, *kids]

    def cpu(self) -> float:
        return sum(proc_cpu(p) for p in self.pids())

    def mem_mib(self, key: str) -> float:
        """VmHWM or VmRSS summed over the node and its workers (an upper bound for the peak:
        the processes may peak at different moments)."""
        return sum(proc_status_kib(p, key) for p in self.pids()) / 1024

    def objects_dir(self) -> Path:
        return self.mount / "ais" / BUCKET

    def status(self, job_id: str) -> dict[str, Any]:
        r = self.session.get(f"{self.endpoint}/v1/download",
                             json={"id": job_id, "only_active_tasks": True}, timeout=30)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def abort(self, job_id: str) -> None:
        self.session.delete(f"{self.endpoint}/v1/download/abort", json={"id": job_id},
                            timeout=60).raise_for_status()

    def catalog_count(self) -> int:
        """Objects in the bucket according to the node's listing (`ais ls`)."""
        from aisdl.client import Client
        from aisdl.models import Bucket
        return sum(1 for _ in Client(self.endpoint).list_objects(Bucket("ais", BUCKET)))

    def clear_hwm(self) -> None:
        """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 30)
        self.log_f.close()


def start_job(argv: list[str], log_path: Path, node: Node) -> tuple[str, Any]:
    """Run `ais start download ...` against `node` (output to `log_path`): the job's id and
    the CLI process's measurements."""
    open(log_path, "w").close()
    cli = run_child(argv, log_path, env=cli_env(node.endpoint))
    if cli.rc != 0:
        raise RuntimeError(f"`ais start download` exited {cli.rc}; see {log_path}")
    return job_id_from(log_path), cli


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Ask a process to stop with `sig`; kill it if it has not within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def parse_rfc3339(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def cli_env(endpoint: str) -> dict[str, str]:
    env = dict(os.environ)
    env["AIS_ENDPOINT"] = endpoint
    return env


def job_id_from(log_path: Path) -> str:
    """The job id printed by `ais start download` (the line after an optional warning)."""
    lines = log_path.read_text().splitlines()
    for line in reversed(lines):
        s = line.strip()
        if s and not s.startswith(("$", "Warning", "Run ", "created")) and " " not in s:
            return s
    raise RuntimeError(f"no job id in the output of `ais start download`: {lines[-5:]}")


# ------------------------------------------------------------------------------------------
# tools
# ------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    tool: str
    label: str        # the flags that vary, as shown in the report
    params: dict[str, Any] = field(default_factory=dict)


def candidates(w: Workload) -> dict[str, list[Candidate]]:
    """Flag sets tried in the calibration; the fastest of each tool is used in the timed runs."""
    if w.key == "a":
        return {
            "aisdl": [Candidate("aisdl", "defaults (--max-conns 64)", {}),
                      Candidate("aisdl", "--blob-threshold 256MiB --blob-conns 4",
                                {"blob": "256MiB", "blob_conns": 4})],
            "wget2": [Candidate("wget2", "--max-threads=4", {"n": 4}),
                      Candidate("wget2", "--max-threads=16 --chunk-size=64M",
                                {"n": 16, "chunk": "64M"})],
            "curl": [Candidate("curl", "--parallel-max 4", {"n": 4})],
            "rclone": [Candidate("rclone", "--transfers 4 (--multi-thread-streams 4, default)",
                                 {"n": 4}),
                       Candidate("rclone", "--transfers 4 --multi-thread-streams 0",
                                 {"n": 4, "mts": 0})],
            "aria2c": [Candidate("aria2c", "-j 4 -x 1", {"n": 4, "x": 1}),
                       Candidate("aria2c", "-j 4 -x 4 -s 4 -k 64M", {"n": 4, "x": 4})],
        }
    out: dict[str, list[Candidate]] = {
        "aisdl": [Candidate("aisdl", "defaults (--max-conns 64)", {}),
                  Candidate("aisdl", "--conns 16", {"conns": 16}),
                  Candidate("aisdl", "node --max-conns 128", {"max_conns": 128})],
    }
    for n in (16, 64):
        out.setdefault("wget2", []).append(Candidate("wget2", f"--max-threads={n}", {"n": n}))
        out.setdefault("curl", []).append(Candidate("curl", f"--parallel-max {n}", {"n": n}))
        out.setdefault("rclone", []).append(
            Candidate("rclone", f"--transfers {n} --checkers {n}", {"n": n}))
        out.setdefault("aria2c", []).append(Candidate("aria2c", f"-j {n} -x 1", {"n": n, "x": 1}))
    # by default rclone HEADs every file of the listing to learn its size and time
    out["rclone"].append(Candidate("rclone", "--transfers 64 --checkers 64 --http-no-head",
                                   {"n": 64, "nohead": True}))
    return out


@dataclass
class RunResult:
    tool: str
    label: str
    workload: str
    ok: bool
    wall: float = 0.0
    cpu: float = 0.0
    rss_mib: float = 0.0
    server_cpu: float = 0.0
    others_cores: float = 0.0   # CPU used by everything but the tool and nginx, in cores
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir)
        self.data = self.work / "src"
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nginx = Nginx(self.work / "nginx", self.data)
        self.tmpfs: Path | None = None
        self.mounted = False
        self.manifest: dict[str, dict[str, Any]] = {}

    # -- targets --------------------------------------------------------------------------
    def target_root(self, w: Workload) -> Path:
        if w.target == "disk":
            return self.work / "out"
        assert self.tmpfs
        return self.tmpfs

    def setup_tmpfs(self) -> None:
        mp = self.work / "tmpfs"
        mp.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(mp):
            self.tmpfs = mp
        elif os.geteuid() == 0 and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=8g,mode=0755", "aisdl-bench", str(mp)],
                capture_output=True).returncode == 0:
            self.tmpfs, self.mounted = mp, True
        else:
            self.tmpfs = Path("/dev/shm/aisdl-bench")
            self.tmpfs.mkdir(parents=True, exist_ok=True)
        fstype = subprocess.run(["stat", "-f", "-c", "%T", str(self.tmpfs)],
                                capture_output=True, text=True).stdout.strip()
        if fstype != "tmpfs":
            raise RuntimeError(f"{self.tmpfs} is {fstype}, not tmpfs")

    def teardown(self) -> None:
        self.nginx.stop()
        if self.mounted and self.tmpfs:
            subprocess.run(["umount", str(self.tmpfs)], check=False)

    # -- one run ----------------------------------------------------------------------------
    def prepare(self, w: Workload) -> Path:
        """A fresh, empty output folder on the target; the disk's dirty pages written back."""
        base = self.target_root(w) / "run"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        os.sync()
        return base

    def run_once(self, w: Workload, cand: Candidate) -> RunResult:
        base = self.prepare(w)
        try:
            if cand.tool == "aisdl":
                res = self.run_aisdl(w, cand, base)
            else:
                res = self.run_peer(w, cand, base)
        except VerifyError as exc:
            res = RunResult(cand.tool, cand.label, w.key, False, error=f"verify: {exc}")
        except Exception as exc:  # a tool failing must not stop the others
            res = RunResult(cand.tool, cand.label, w.key, False, error=f"{type(exc).__name__}: "
                            f"{exc}")
        finally:
            shutil.rmtree(base, ignore_errors=True)
        if res.ok:
            log(f"  {w.key} {cand.tool:7s} {cand.label:45s} {res.wall:7.3f} s  "
                f"cpu {res.cpu:6.2f} s  rss {res.rss_mib:7.1f} MiB  nginx {res.server_cpu:.2f} s  "
                f"others {res.others_cores:.2f} cores")
        else:
            log(f"  {w.key} {cand.tool:7s} {cand.label:45s} FAILED: {res.error}")
            print(f"!!! {w.key}/{cand.tool} FAILED: {res.error}", file=sys.stderr, flush=True)
        return res

    def urls(self, w: Workload) -> list[str]:
        return [f"{self.nginx.base}/{w.src}/{n}" for n in w.names()]

    def run_peer(self, w: Workload, cand: Candidate, base: Path) -> RunResult:
        out = base / "out"
        out.mkdir()
        argv = self.peer_argv(w, cand, base, out)
        lp = self.logs / f"{w.key}-{cand.tool}.log"
        srv0, busy0 = self.nginx.cpu(), machine_busy()
        r = run_child(argv, lp)
        srv, busy = self.nginx.cpu() - srv0, machine_busy() - busy0
        if r.timed_out:
            raise RuntimeError(f"killed after {RUN_TIMEOUT:.0f} s")
        if r.rc != 0:
            raise RuntimeError(f"exit code {r.rc}; see {lp}")
        verify(out, w, self.manifest)
        return RunResult(cand.tool, cand.label, w.key, True, r.wall, r.cpu,
                         r.maxrss_kib / 1024, srv, max(0.0, busy - r.cpu - srv) / r.wall,
                         extra={"argv": argv})

    def peer_argv(self, w: Workload, cand: Candidate, base: Path, out: Path) -> list[str]:
        p, n = cand.params, str(cand.params.get("n", 16))
        if cand.tool == "wget2":
            lst = base / "urls.txt"
            lst.write_text("\n".join(self.urls(w)) + "\n")
            argv = ["wget2", "-q", "--no-robots", "-nd", "--no-xattr", "--no-hsts", "--no-hpkp",
                    f"--max-threads={n}", "-i", str(lst), "-P", str(out)]
            if p.get("chunk"):
                argv.append(f"--chunk-size={p['chunk']}")
            return argv
        if cand.tool == "curl":
            cfg = base / "curl.cfg"
            cfg.write_text("".join(f'url = "{u}"\noutput = "{out}/{n_}"\n'
                                   for u, n_ in zip(self.urls(w), w.names(), strict=True)))
            return ["curl", "-Z", "--parallel-max", n, "--parallel-immediate", "-s", "-S",
                    "-f", "-K", str(cfg)]
        if cand.tool == "rclone":
            conf = self.work / "rclone.conf"
            conf.touch()
            argv = ["rclone", "copy", "--config", str(conf),
                    "--http-url", f"{self.nginx.base}/{w.src}/", ":http:", str(out),
                    "--transfers", n, "--checkers", n,
                    "--no-check-dest", "-q"]
            if p.get("nohead"):
                argv.append("--http-no-head")
            if "mts" in p:
                argv += ["--multi-thread-streams", str(p["mts"])]
            return argv
        if cand.tool == "aria2c":
            lst = base / "urls.txt"
            lst.write_text("\n".join(self.urls(w)) + "\n")
            x = str(p.get("x", 1))
            argv = ["aria2c", "-q", "-i", str(lst), "-d", str(out), "-j", n, "-x", x,
                    "--auto-save-interval=0", "--file-allocation=none",
                    "--allow-overwrite=true", "--auto-file-renaming=false",
                    "--deferred-input=true", "--summary-interval=0",
                    "--console-log-level=error"]
            if x != "1":
                argv += ["-s", x, "-k", "64M"]
            return argv
        raise ValueError(cand.tool)

    def run_aisdl(self, w: Workload, cand: Candidate, base: Path) -> RunResult:
        lp = self.logs / f"{w.key}-aisdl.log"
        conns = cand.params.get("max_conns")
        serve = ["--max-conns", str(conns)] if conns else []
        node = Node(base, self.logs / f"{w.key}-aisdl-node.log", serve)
        try:
            argv = [str(AIS), "start", "download", w.template(self.nginx.base),
                    f"ais://{BUCKET}/"]
            if "conns" in cand.params:
                argv += ["--conns", str(cand.params["conns"])]
            if "blob" in cand.params:  # as rclone's default: 4 streams per file over 256 MiB
                argv += ["--blob-threshold", cand.params["blob"],
                         "--blob-conns", str(cand.params["blob_conns"])]
            os.sync()
            node.clear_hwm()
            cpu0, srv0, busy0 = node.cpu(), self.nginx.cpu(), machine_busy()
            t0_wall, t0 = time.time(), time.perf_counter()
            job, cli = start_job(argv, lp, node)
            deadline = t0 + RUN_TIMEOUT
            while True:
                st = node.status(job)
                if st["finished_time"] != EPOCH:
                    seen = time.perf_counter() - t0
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"job not finished after {RUN_TIMEOUT:.0f} s: {st}")
                time.sleep(POLL)
            cpu = node.cpu() - cpu0 + cli.cpu
            srv, busy = self.nginx.cpu() - srv0, machine_busy() - busy0
            rss = node.mem_mib("VmHWM")
            wall = parse_rfc3339(st["finished_time"]) - t0_wall
            if st.get("aborted") or st["error_cnt"] or st["finished_cnt"] != w.count \
                    or st["skipped_cnt"]:
                raise VerifyError(f"job status {json.dumps(st)[:400]}")
            listed = node.catalog_count()
            if listed != w.count:
                raise VerifyError(f"the bucket lists {listed} objects, expected {w.count}")
            verify(node.objects_dir(), w, self.manifest)
            others = max(0.0, busy - cpu - srv) / seen  # includes this harness's polls
            return RunResult("aisdl", cand.label, w.key, True, wall, cpu, rss, srv, others,
                             extra={
                "argv": argv, "cli_wall": cli.wall, "cli_cpu": cli.cpu,
                "poll_seen_wall": seen, "node_cpu": cpu - cli.cpu,
                "job_wall": parse_rfc3339(st["finished_time"])
                - parse_rfc3339(st["started_time"])})
        finally:
            node.stop()

    # -- workload d -------------------------------------------------------------------------
    def run_d(self, seconds: float) -> RunResult:
        base = self.work / "out" / "run-d"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        lp = self.logs / "d-aisdl.log"
        node = Node(base, self.logs / "d-aisdl-node.log", [])
        label = "defaults (--max-conns 64)"
        try:
            template = f"{self.nginx.base}/d/f-{{0000000..{D_NAMES - 1:07d}}}"
            argv = [str(AIS), "start", "download", template, f"ais://{BUCKET}/"]
            os.sync()
            node.clear_hwm()
            rss0 = node.mem_mib("VmRSS")
            cpu0 = node.cpu()
            t0, t0_wall = time.perf_counter(), time.time()
            job, cli = start_job(argv, lp, node)
            first = first_post = None
            samples = []
            next_sample = 0.0
            while (now := time.perf_counter() - t0) < seconds:
                st = node.status(job)
                if first is None and st["finished_cnt"] >= 1:
                    first = now
                    first_post = t0_wall + now - parse_rfc3339(st["started_time"])
                if now >= next_sample:
                    samples.append((round(now, 2), st["finished_cnt"],
                                    node.mem_mib("VmRSS")))
                    next_sample += 5.0
                if st["error_cnt"]:
                    raise VerifyError(f"errors in the job: {json.dumps(st)[:400]}")
                time.sleep(0.01 if first is None else 0.25)
            st = node.status(job)
            elapsed = time.perf_counter() - t0
            hwm = node.mem_mib("VmHWM")
            rss = node.mem_mib("VmRSS")
            cpu = node.cpu() - cpu0 + cli.cpu
            done = st["finished_cnt"]
            node.abort(job)
            if first is None:
                raise RuntimeError(f"no object committed in {seconds} s")
            objs = node.objects_dir()
            some = sorted(objs.iterdir())[:100] if objs.is_dir() else []
            if not some or any(p.read_bytes() != b"x" for p in some):
                raise VerifyError(f"objects in {objs} missing or not the server's body")
            return RunResult("aisdl", label, "d", True, first, cpu, hwm, extra={
                "argv": argv, "cli_wall": cli.wall, "first_commit_s": first,
                "first_commit_from_post_s": first_post,
                "seconds": elapsed, "finished_cnt": done, "files_per_s": done / elapsed,
                "rss_start_mib": rss0, "rss_end_mib": rss, "hwm_mib": hwm,
                "total": st["total"], "samples": samples})
        except Exception as exc:
            return RunResult("aisdl", label, "d", False, error=f"{type(exc).__name__}: {exc}")
        finally:
            node.stop()
            shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# summary and report
# ------------------------------------------------------------------------------------------
def summarize(w: Workload, runs: list[RunResult]) -> dict[str, Any]:
    ok = [r for r in runs if r.ok]
    out: dict[str, Any] = {"runs": len(ok), "failed": len(runs) - len(ok),
                           "errors": [r.error for r in runs if not r.ok]}
    if not ok:
        return out
    walls = [r.wall for r in ok]
    med = statistics.median(walls)
    gb = w.total_bytes / 1e9
    out.update({
        "label": ok[0].label,
        "median_wall_s": med, "min_wall_s": min(walls), "max_wall_s": max(walls),
        "mb_per_s": w.total_bytes / 1e6 / med, "files_per_s": w.count / med,
        "cpu_s_per_gb": statistics.median(r.cpu for r in ok) / gb,
        "median_cpu_s": statistics.median(r.cpu for r in ok),
        "nginx_cpu_s_per_gb": statistics.median(r.server_cpu for r in ok) / gb,
        "peak_rss_mib": max(r.rss_mib for r in ok),
        "others_cores": statistics.median(r.others_cores for r in ok),
        "median_job_wall_s": statistics.median(r.extra["job_wall"] for r in ok)
        if all("job_wall" in r.extra for r in ok) else None,
        "median_rss_mib": statistics.median(r.rss_mib for r in ok),
    })
    return out


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "missing"


def aisdl_revision() -> dict[str, str]:
    """Which aisdl was measured: the checked-out commit (read from .git, no git command) and a
    digest of src/ as it was on disk (others may have uncommitted edits)."""
    commit = ""
    try:
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            path = REPO / ".git" / ref
            if path.exists():
                commit = path.read_text().strip()
            else:
                packed = (REPO / ".git" / "packed-refs").read_text()
                commit = next((ln.split()[0] for ln in packed.splitlines()
                               if ln.endswith(" " + ref)), "")
        else:
            commit = head
    except OSError:
        pass
    h = hashlib.sha256()
    for p in sorted((REPO / "src").rglob("*.py")):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return {"commit": commit, "src_sha256": h.hexdigest()[:16]}


def machine_facts(bench: Bench) -> dict[str, Any]:
    def fstype(p: Path | None) -> str:
        if p is None:
            return "-"
        return " on ".join(subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(p)],
            capture_output=True, text=True).stdout.split())

    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = proc_meminfo("MemTotal")
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": cpu_model, "mem_gib": round(mem_kib / 1024 ** 2, 1),
        "kernel": platform.release(), "os": platform.freedesktop_os_release().get(
            "PRETTY_NAME", ""),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
        "aisdl_revision": aisdl_revision(),
        "disk_target": f"{bench.work / 'out'} ({fstype(bench.work)})",
        "tmpfs_target": f"{bench.tmpfs} ({fstype(bench.tmpfs)})",
        "versions": {
            "aisdl": tool_version([str(REPO / ".venv/bin/python"), "-c",
                                   "import importlib.metadata as m; print('aisdl',"
                                   " m.version('aisdl'), 'aiohttp', m.version('aiohttp'))"]),
            "nginx": tool_version(["nginx", "-v"]).replace("nginx version: ", ""),
            "wget2": " ".join(tool_version(["wget2", "--version"]).split()[:3]),
            "curl": " ".join(tool_version(["curl", "--version"]).split()[:2]),
            "rclone": tool_version(["rclone", "version"]),
            "aria2c": tool_version(["aria2c", "--version"]),
        },
    }


def proc_meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def fmt(x: float | None, nd: int = 2) -> str:
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{nd}f}"


def write_report(out: Path, results: dict[str, Any]) -> None:
    m = results["machine"]
    lines = [
        "# aisdl vs peer downloaders",
        "",
        f"Generated by `{results['command']}` on {m['date']}, "
        f"{results['elapsed_min']:.1f} min in all.",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, {m['os']}, "
        f"kernel {m['kernel']}, Python {m['python']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}"
        + (f", at the end {', '.join(f'{x:.2f}' for x in m['loadavg_end'])}"
           if m.get("loadavg_end") else "")
        + " (shared machine: other work "
        "was running, so the numbers are noisy; runs are interleaved to spread that noise).",
        f"Disk target {m['disk_target']}; tmpfs target {m['tmpfs_target']}. Source: nginx on "
        "127.0.0.1 (sendfile, open_file_cache, keepalive, access_log off), files in page cache.",
        "",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in m["versions"].items()) + "."
        + (f" aisdl measured at commit {m['aisdl_revision']['commit'][:12]}, src/ digest "
           f"{m['aisdl_revision']['src_sha256']} (working tree as it was at the start)."
           if m.get("aisdl_revision") else "")
        + (f" **src/ changed during the run** (at the end: commit "
           f"{m['aisdl_revision_end']['commit'][:12]}, digest "
           f"{m['aisdl_revision_end']['src_sha256']}), so aisdl's runs may mix two versions."
           if m.get("aisdl_revision_end") else ""),
        "",
        "Wall time: from the start of the tool's process until its last file is complete; for "
        "aisdl from the start of `ais start download` (against an idle, already running node) "
        "to the job's `finished_time`, which the node sets after the last object's commit. "
        "The node's status is polled every 0.25 s, but the end time is the node's own "
        "`finished_time` (µs), so the poll interval adds no error. "
        "MB/s = 10^6 B/s of payload. CPU = user + system seconds of the client (for aisdl: node, "
        "its fetch workers and the `ais` CLI process), per 10^9 B of payload; nginx CPU is not "
        "included (shown apart). Others' load: median CPU used during the run by everything but "
        "the tool and nginx (other people's work on this shared machine, this harness), in cores "
        "out of 2: a run with a high figure had less machine. Peak RSS: max over runs of the "
        "client's peak (aisdl: the VmHWM of the node plus its fetch workers, a fresh node per run;"
        " peers: GNU time's %M). Every output was checked: names, count, sizes, xxh3 of every byte"
        " (and, for aisdl, the job's counters and the bucket listing).",
        "",
    ]
    for key, wres in sorted(results["workloads"].items()):
        if key == "d":
            continue
        lines += [f"## ({key}) {wres['title']}", "",
                  "| tool | flags | median wall s | min–max s | MB/s | files/s | CPU s/GB "
                  "| nginx CPU s/GB | peak RSS MiB | others' load, cores | runs |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for tool, s in wres["summary"].items():
            if not s.get("runs"):
                lines.append(f"| {tool} | – | failed | | | | | | | | 0/{s['failed']} |")
                continue
            lines.append(
                f"| {tool} | `{s['label']}` | {s['median_wall_s']:.3f} | "
                f"{s['min_wall_s']:.2f}–{s['max_wall_s']:.2f} | {fmt(s['mb_per_s'], 1)} | "
                f"{fmt(s['files_per_s'], 1)} | {fmt(s['cpu_s_per_gb'])} | "
                f"{fmt(s['nginx_cpu_s_per_gb'])} | {fmt(s['peak_rss_mib'], 1)} | "
                f"{s.get('others_cores', float('nan')):.2f} | {s['runs']}"
                + (f" (+{s['failed']} failed)" if s["failed"] else "") + " |")
        r = wres.get("ratio")
        if r:
            lines += ["", f"**aisdl / best peer ({r['best_peer']})**: speed "
                      f"{r['speed']:.2f}× (best peer's median wall ÷ aisdl's; > 1 means aisdl "
                      f"is faster), CPU per GB {r['cpu']:.2f}×, peak RSS {r['rss']:.2f}×. "
                      f"Counting aisdl's job alone (node's `started_time` → `finished_time`, "
                      f"without the `ais` CLI's own start-up): median "
                      f"{r['aisdl_job_wall_s']:.3f} s, speed {r['speed_job_only']:.2f}×."]
        grouped: dict[tuple[str, str], list[str]] = {}
        for c in wres.get("calibration", []):
            grouped.setdefault((c["tool"], c["label"]), []).append(
                f"{c['wall']:.2f}" if c["ok"] else "failed")
        if grouped:
            lines += ["", f"Calibration ({results['args']['calib_runs']} run(s) per flag set, "
                      "wall s; the set with the fastest run is kept): " + "; ".join(
                          f"{tool} `{label}` {', '.join(v)}"
                          for (tool, label), v in grouped.items()) + "."]
        lines.append("")
    d = results["workloads"].get("d")
    if d:
        lines += [f"## (d) {D_TITLE}", ""]
        ok = [r for r in d["runs"] if r["ok"]]
        if ok:
            ex = [r["extra"] for r in ok]
            lines += [
                "| metric | median | min–max |", "|---|---:|---:|",
                "| time from `ais start download` to the first committed object, s | "
                f"{statistics.median(e['first_commit_s'] for e in ex):.3f} | "
                f"{min(e['first_commit_s'] for e in ex):.3f}–"
                f"{max(e['first_commit_s'] for e in ex):.3f} |",
                "| the same from the node's `started_time` (the POST, without the CLI's "
                "start-up), s | "
                f"{statistics.median(e['first_commit_from_post_s'] for e in ex):.3f} | "
                f"{min(e['first_commit_from_post_s'] for e in ex):.3f}–"
                f"{max(e['first_commit_from_post_s'] for e in ex):.3f} |",
                f"| node + workers peak RSS (sum of VmHWM) after {d['seconds']:.0f} s, MiB | "
                f"{statistics.median(e['hwm_mib'] for e in ex):.1f} | "
                f"{min(e['hwm_mib'] for e in ex):.1f}–{max(e['hwm_mib'] for e in ex):.1f} |",
                "| node + workers RSS, idle, before the job, MiB | "
                f"{statistics.median(e['rss_start_mib'] for e in ex):.1f} | "
                f"{min(e['rss_start_mib'] for e in ex):.1f}–"
                f"{max(e['rss_start_mib'] for e in ex):.1f} |",
                f"| objects committed in {d['seconds']:.0f} s | "
                f"{statistics.median(e['finished_cnt'] for e in ex):,.0f} | "
                f"{min(e['finished_cnt'] for e in ex):,}–{max(e['finished_cnt'] for e in ex):,} |",
                "| files/s over the run (tiny objects, disk) | "
                f"{statistics.median(e['files_per_s'] for e in ex):,.0f} | "
                f"{min(e['files_per_s'] for e in ex):,.0f}–"
                f"{max(e['files_per_s'] for e in ex):,.0f} |",
                "| CPU s (node + CLI) over the run | "
                f"{statistics.median(r['cpu'] for r in ok):.1f} | "
                f"{min(r['cpu'] for r in ok):.1f}–{max(r['cpu'] for r in ok):.1f} |",
                "", f"Runs: {len(ok)} ok, {len(d['runs']) - len(ok)} failed" + "".join(
                    f"; {r['error']}" for r in d["runs"] if not r["ok"]) + ". "
                "The job is aborted after the measurement. Peers are not run on (d): each would "
                "need the 10,000,000 URLs written out as an input list first "
                "(~400 MB), which is the very thing this workload checks aisdl avoids.", ""]
        else:
            lines += ["All runs failed: " + "; ".join(r["error"] for r in d["runs"]), ""]
    if results.get("plot"):
        lines += [f"![throughput]({results['plot']})", ""]
    elif results.get("plot_note"):
        lines += [f"(No chart: {results['plot_note']}.)", ""]
    lines += ["Exact commands of each tool's best flag set are in `results.json` "
              "(`workloads.*.runs[].extra.argv`).", ""]
    (out / "results.md").write_text("\n".join(lines))


def make_plot(out: Path) -> tuple[str, str]:
    """Render results.png with matplotlib in a throwaway uv environment (not in .venv)."""
    uv = shutil.which("uv")
    if not uv:
        return "", "uv not found to run matplotlib"
    r = subprocess.run([uv, "run", "--no-project", "--quiet", "--with", "matplotlib", "python",
                        str(BENCH / "plot.py"), str(out / "results.json"),
                        str(out / "results.png")], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return "", f"matplotlib unavailable ({(r.stderr or r.stdout).strip()[-200:]})"
    return "results.png", ""


# ------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=None,
                    help="timed runs per tool and workload (default 5, 2 with --quick)")
    ap.add_argument("--calib-runs", type=int, default=None,
                    help="calibration runs per flag set (default 2, 1 with --quick)")
    ap.add_argument("--workloads", default="a,b,c,d")
    ap.add_argument("--quick", action="store_true",
                    help="development mode: 2 runs, (d) for 15 s, results under results/quick")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--no-calibrate", action="store_true",
                    help="use each tool's first flag set instead of calibrating")
    ap.add_argument("--d-seconds", type=float, default=None,
                    help="length of a (d) run (default 60, 15 with --quick)")
    ap.add_argument("--workdir", default="/var/tmp/aisdl-bench",
                    help="scratch: source data, nginx, disk target, tmpfs mount, logs")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    ap.add_argument("--report-only", action="store_true",
                    help="re-render results.md and results.png from the results.json in --out")
    args = ap.parse_args()
    if args.report_only:
        out = Path(args.out) if args.out else BENCH / "results"
        results = json.loads((out / "results.json").read_text())
        results["plot"], results["plot_note"] = make_plot(out)
        write_report(out, results)
        log(f"report: {out / 'results.md'}")
        return 0
    if args.runs is None:
        args.runs = 2 if args.quick else 5
    if args.calib_runs is None:
        args.calib_runs = 1 if args.quick else 2
    seconds = args.d_seconds or (15.0 if args.quick else 60.0)
    out = Path(args.out) if args.out else BENCH / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for k in keys:
        if k not in WORKLOADS and k != "d":
            ap.error(f"unknown workload {k!r}")
    for t in tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}")
        if t != "aisdl" and not shutil.which(t):
            ap.error(f"{t} is not installed: run bench/setup.sh")
    if not shutil.which("nginx") or not os.path.exists(GNU_TIME):
        ap.error("nginx or GNU time is not installed: run bench/setup.sh")

    # aisdl as an install leaves it (pip compiles a wheel's bytecode; our editable src/ needs
    # it done): without it, under PYTHONDONTWRITEBYTECODE every `ais` start recompiles
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True,
                   stdout=subprocess.DEVNULL)
    started = time.monotonic()
    bench = Bench(args)
    results: dict[str, Any] = {"command": "uv run python bench/run.py " + " ".join(sys.argv[1:]),
                               "args": vars(args), "workloads": {}}
    failed = False

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bench.manifest = make_data(bench.data)
        bench.setup_tmpfs()
        bench.nginx.start()
        results["machine"] = machine_facts(bench)
        log(f"nginx on {bench.nginx.base}; disk target {bench.work / 'out'}; "
            f"tmpfs {bench.tmpfs}; {args.runs} runs")
        for key in keys:
            if key == "d":
                if "aisdl" not in tools:
                    continue
                log(f"workload d: {D_TITLE}, {seconds:.0f} s per run")
                runs = [bench.run_d(seconds) for _ in range(args.runs)]
                for r in runs:
                    if r.ok:
                        e = r.extra
                        log(f"  d aisdl first commit {e['first_commit_s']:.3f} s, "
                            f"{e['finished_cnt']} objects in {e['seconds']:.0f} s, "
                            f"VmHWM {e['hwm_mib']:.1f} MiB")
                    else:
                        log(f"  d aisdl FAILED: {r.error}")
                        failed = True
                results["workloads"]["d"] = {"title": D_TITLE, "seconds": seconds,
                                             "runs": [asdict(r) for r in runs]}
                continue
            w = WORKLOADS[key]
            warm(bench.data, w.src)
            share = resident_share(bench.data, w.src)
            log(f"workload {key}: {w.title}; source {share:.0%} in page cache")
            cands = {t: c for t, c in candidates(w).items() if t in tools}
            calib: list[dict[str, Any]] = []
            best: dict[str, Candidate] = {}
            for tool, cs in cands.items():
                if len(cs) == 1 or args.no_calibrate:
                    best[tool] = cs[0]
                    continue
                walls: dict[str, list[float]] = {c.label: [] for c in cs}
                for _ in range(args.calib_runs):
                    for c in cs:
                        r = bench.run_once(w, c)
                        calib.append({"tool": tool, "label": c.label, "ok": r.ok,
                                      "wall": r.wall, "error": r.error})
                        if r.ok:
                            walls[c.label].append(r.wall)
                scored = [(min(walls[c.label]), i, c) for i, c in enumerate(cs) if walls[c.label]]
                best[tool] = min(scored)[2] if scored else cs[0]
            log(f"workload {key}: timed runs with " + "; ".join(
                f"{t} [{c.label}]" for t, c in best.items()))
            runs: list[RunResult] = []
            order = list(best)
            for rep in range(args.runs):
                rot = order[rep % len(order):] + order[:rep % len(order)]
                for tool in rot:
                    runs.append(bench.run_once(w, best[tool]))
            summary = {t: summarize(w, [r for r in runs if r.tool == t]) for t in order}
            failed |= any(s["failed"] for s in summary.values())
            wres: dict[str, Any] = {"title": w.title, "count": w.count, "size": w.size,
                                    "target": w.target, "source_cached": share,
                                    "calibration": calib, "summary": summary,
                                    "runs": [asdict(r) for r in runs]}
            peers = {t: s for t, s in summary.items() if t != "aisdl" and s.get("runs")}
            a = summary.get("aisdl", {})
            if peers and a.get("runs"):
                bp = min(peers, key=lambda t: peers[t]["median_wall_s"])
                wres["ratio"] = {
                    "best_peer": bp,
                    "speed": peers[bp]["median_wall_s"] / a["median_wall_s"],
                    "cpu": a["cpu_s_per_gb"] / peers[bp]["cpu_s_per_gb"],
                    "rss": a["peak_rss_mib"] / peers[bp]["peak_rss_mib"],
                    "aisdl_job_wall_s": a["median_job_wall_s"],
                    "speed_job_only": peers[bp]["median_wall_s"] / a["median_job_wall_s"],
                }
                log(f"workload {key}: aisdl {a['median_wall_s']:.3f} s vs best peer {bp} "
                    f"{peers[bp]['median_wall_s']:.3f} s -> speed ratio "
                    f"{wres['ratio']['speed']:.2f}")
            results["workloads"][key] = wres
    except KeyboardInterrupt:
        log("interrupted")
        failed = True
    finally:
        bench.teardown()
    results["elapsed_min"] = (time.monotonic() - started) / 60
    if "machine" in results:
        results["machine"]["loadavg_end"] = os.getloadavg()
        end_rev = aisdl_revision()
        if end_rev != results["machine"].get("aisdl_revision"):
            results["machine"]["aisdl_revision_end"] = end_rev
    if "machine" not in results:
        return 1
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot, note = make_plot(out)
    results["plot"], results["plot_note"] = plot, note
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(out, results)
    if not args.quick:   # keep every full run's raw numbers: one run on a shared box is noisy
        hist = out / "history"
        hist.mkdir(exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M")
        shutil.copy(out / "results.json", hist / f"{stamp}-{'-'.join(keys)}.json")
    log(f"report: {out / 'results.md'}" + (f", {out / plot}" if plot else f" ({note})"))
    if failed:
        print("!!! some runs FAILED (see the report and bench logs under "
              f"{bench.logs})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
