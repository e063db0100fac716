#!/usr/bin/env python3
"""Workload (e): one large file from an origin that caps each connection.

    uv run python bench/blob.py [--size 4GiB] [--rate 50m] [--conns 16] [--runs 2]
                                [--single-runs 1] [--tools aisdl,aria2c,rclone,curl]

nginx (bench/setup.sh installs it) serves one file of --size bytes (64 MiB of seeded random
bytes, repeated) with `limit_rate` --rate per connection, as a CDN caps each one. Contenders,
each writing to disk under --workdir:

  aisdl   `ais start download URL ais://bench/big.bin --blob-threshold 64MiB --blob-conns N`
          against an idle node (timed until the job's finished_time)
  aria2c  `-x N -s N` (its --max-connection-per-server is at most 16)
  rclone  http backend, `--multi-thread-streams N`
  curl    one stream (what a tool without ranged parts gets; --single-runs times, it is slow)

Runs are interleaved (each repetition runs every tool once, in a rotated order); every output
is checked (size and xxh3 of all bytes). The report (ratios against the best peer, medians)
goes to bench/results/blob/<date>.md, the raw runs to <date>.json beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402
    AIS,
    EPOCH,
    Nginx,
    Node,
    aisdl_revision,
    file_xxh,
    log,
    machine_busy,
    parse_rfc3339,
    run_child,
    start_job,
)

from aisdl.units import parse_size  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "blob"
MiB = 1 << 20
BLOCK = 64 * MiB
POLL = 0.25  # seconds between status polls (the job's end time comes from the node anyway)
TIMEOUT = 1800.0


class CappedNginx(Nginx):
    """nginx serving /blob/ at `rate` per connection (ranges, ETag and Last-Modified as for
    any static file)."""

    def __init__(self, prefix: Path, root: Path, rate: str) -> None:
        super().__init__(prefix, root)
        self.rate = rate

    def config(self) -> str:
        return super().config().replace(
            'location /d/ {', f'location /blob/ {{ autoindex on; limit_rate {self.rate}; }}\n'
                             '        location /d/ {')


@dataclass
class Run:
    tool: str
    label: str
    ok: bool
    wall: float = 0.0
    cpu: float = 0.0
    machine_cpu: float = 0.0
    error: str = ""


def make_file(path: Path, size: int) -> str:
    """The source file (xxh3 of its bytes), made once and kept between runs."""
    meta = path.with_suffix(".xxh3")
    if path.exists() and path.stat().st_size == size and meta.exists():
        return meta.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    block = random.Random(20261205).randbytes(BLOCK)
    h = xxhash.xxh3_64()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = block[:min(left, BLOCK)]
            f.write(piece)
            h.update(piece)
            left -= len(piece)
    meta.write_text(h.hexdigest())
    return h.hexdigest()


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = parse_size(args.size)
        self.work = Path(args.workdir)
        self.data = self.work / "data"
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.src = self.data / "blob" / "big.bin"
        self.digest = make_file(self.src, self.size)
        self.nginx = CappedNginx(self.work / "nginx", self.data, args.rate)
        self.url = ""

    def check(self, path: Path) -> None:
        if not path.exists() or path.stat().st_size != self.size:
            raise RuntimeError(f"{path}: missing or wrong size")
        if file_xxh(path) != self.digest:
            raise RuntimeError(f"{path}: content differs from the source")

    def out_dir(self, tool: str) -> Path:
        out = self.work / "out" / tool
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        return out

    def peer(self, tool: str) -> Run:
        n = str(self.args.conns)
        out = self.out_dir(tool)
        if tool == "aria2c":
            label = f"-x {n} -s {n}"
            argv = ["aria2c", "-q", "-x", n, "-s", n, "-d", str(out), "-o", "big.bin",
                    "--file-allocation=none", "--allow-overwrite=true",
                    "--auto-file-renaming=false", "--summary-interval=0",
                    "--console-log-level=error", self.url]
        elif tool == "rclone":
            label = f"--multi-thread-streams {n}"
            conf = self.work / "rclone.conf"
            conf.touch()
            argv = ["rclone", "copy", "--config", str(conf), "--http-url",
                    f"{self.nginx.base}/blob/", ":http:", str(out), "--multi-thread-streams", n,
                    "--no-check-dest", "-q"]
        elif tool == "curl":
            label = "one stream"
            argv = ["curl", "-s", "-S", "-f", "-o", str(out / "big.bin"), self.url]
        else:
            raise ValueError(tool)
        os.sync()
        busy0 = machine_busy()
        res = run_child(argv, self.logs / f"{tool}.log", timeout=TIMEOUT)
        busy = machine_busy() - busy0
        if res.rc != 0:
            return Run(tool, label, False, res.wall, res.cpu, busy, f"exit {res.rc}")
        self.check(out / "big.bin")
        shutil.rmtree(out, ignore_errors=True)
        return Run(tool, label, True, res.wall, res.cpu, busy)

    def aisdl(self) -> Run:
        n = self.args.conns
        label = f"--blob-threshold 64MiB --blob-conns {n}"
        base = self.out_dir("aisdl")
        node = Node(base, self.logs / "aisdl-node.log", [])
        try:
            argv = [str(AIS), "start", "download", self.url, "ais://bench/big.bin",
                    "--blob-threshold", "64MiB", "--blob-conns", str(n)]
            os.sync()
            cpu0, busy0 = node.cpu(), machine_busy()
            t0_wall, t0 = time.time(), time.perf_counter()
            job, cli = start_job(argv, self.logs / "aisdl.log", node)
            while True:
                st = node.status(job)
                if st["finished_time"] != EPOCH:
                    break
                if time.perf_counter() - t0 > TIMEOUT:
                    raise RuntimeError(f"job not finished after {TIMEOUT:.0f} s")
                time.sleep(POLL)
            cpu = node.cpu() - cpu0 + cli.cpu
            busy = machine_busy() - busy0
            wall = parse_rfc3339(st["finished_time"]) - t0_wall
            if st["error_cnt"] or st["finished_cnt"] != 1:
                return Run("aisdl", label, False, wall, cpu, busy, json.dumps(st)[:300])
            self.check(node.objects_dir() / "big.bin")
            return Run("aisdl", label, True, wall, cpu, busy)
        finally:
            node.stop()
            shutil.rmtree(base, ignore_errors=True)

    def run(self) -> list[Run]:
        self.nginx.start()
        self.url = f"{self.nginx.base}/blob/big.bin"
        tools = self.args.tools.split(",")
        runs: list[Run] = []
        try:
            warm(self.src)
            if self.args.warmup:  # the first big write after a pause pays the VM's page
                log("warm-up run (aria2c, not counted)")  # reporting (DESIGN, Performance)
                self.peer("aria2c")
            for i in range(max(self.args.runs, self.args.single_runs)):
                order = tools[i % len(tools):] + tools[:i % len(tools)]
                for tool in order:
                    if tool == "curl" and i >= self.args.single_runs:
                        continue
                    if tool != "curl" and i >= self.args.runs:
                        continue
                    r = self.aisdl() if tool == "aisdl" else self.peer(tool)
                    log(f"{tool:7s} {r.label:40s} {r.wall:7.2f} s "
                        f"{self.size / r.wall / 1e6 if r.ok else 0:8.1f} MB/s cpu {r.cpu:6.2f} s"
                        f"{'' if r.ok else '  FAILED ' + r.error}")
                    runs.append(r)
        finally:
            self.nginx.stop()
        return runs


def report(args: argparse.Namespace, size: int, runs: list[Run]) -> str:
    tools: dict[str, list[Run]] = {}
    for r in runs:
        if r.ok:
            tools.setdefault(r.tool, []).append(r)
    med = {t: statistics.median(r.wall for r in rs) for t, rs in tools.items()}
    peers = {t: w for t, w in med.items() if t != "aisdl"}
    best = min(peers, key=lambda t: peers[t]) if peers else None
    now = dt.datetime.now(dt.UTC)
    rev = aisdl_revision()
    if not rev.get("commit"):  # a git worktree: .git is a file, ask git
        rev["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                                       capture_output=True, text=True).stdout.strip()
    lines = [
        f"# (e) one {size / 2**30:.2f} GiB file, {args.rate} per connection "
        f"({now:%Y-%m-%d %H:%M} UTC)", "",
        f"nginx `limit_rate {args.rate}` per connection, on loopback; "
        f"{os.cpu_count()} cores ({platform.machine()}), the clients and nginx on the same "
        f"cores; written to disk under `{args.workdir}`. aisdl {rev.get('commit', '?')[:12]}. "
        f"Median of {args.runs} interleaved runs ({args.single_runs} for curl); wall time from "
        "the start of the tool's process (for aisdl: `ais start download` against an idle "
        "node) until the file is complete; every output checked (size, xxh3)"
        f"{'; one untimed aria2c run first' if args.warmup else ''}.", "",
        "| tool | options | wall (median) | MB/s | CPU s | runs (s) | vs best peer |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for t in sorted(med, key=lambda t: med[t]):
        rs = tools[t]
        ratio = f"{peers[best] / med[t]:.2f}×" if best else "-"
        lines.append(f"| {t} | `{rs[0].label}` | {med[t]:.2f} s | {size / med[t] / 1e6:.0f} | "
                     f"{statistics.median(r.cpu for r in rs):.2f} | "
                     f"{', '.join(f'{r.wall:.2f}' for r in rs)} | {ratio} |")
    failed = [r for r in runs if not r.ok]
    if failed:
        lines += ["", "Failed runs: " + "; ".join(f"{r.tool}: {r.error}" for r in failed)]
    if best:
        lines += ["", f"Best peer: {best}. Ratio = the best peer's wall time / the tool's "
                  "(above 1: faster than the best peer)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="4GiB")
    p.add_argument("--rate", default="50m", help="nginx limit_rate per connection")
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--single-runs", type=int, default=1, help="runs of curl (one stream)")
    p.add_argument("--tools", default="aisdl,aria2c,rclone,curl")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the untimed first download")
    p.add_argument("--workdir", default="/var/tmp/aisdl-bench-blob")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    bench = Bench(args)
    runs = bench.run()
    text = report(args, bench.size, runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M")
    (out / f"{stamp}.md").write_text(text)
    (out / f"{stamp}.json").write_text(json.dumps(
        {"args": vars(args), "size": bench.size, "runs": [asdict(r) for r in runs]}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
