#!/usr/bin/env python3
"""What watching a node costs: workload (c) of bench/run.py (5,000 x 64 KiB to tmpfs, aisdl
with its defaults) plain, and with what a dashboard and Prometheus do alongside: `GET /metrics`
once a second, and once a second the job list and the full status of each running job
(`GET /v1/download`, errors and finished tasks included).

    uv run python bench/metrics_overhead.py [--pairs 8] [--out bench/results/metrics]

Runs alternate in pairs (plain then watched, watched then plain, ...), so a noisy minute on a
shared machine hits both alike; each run is checked as bench/run.py checks it. The report
(`<out>/<UTC date>.md`) gives every run, the medians and the loss. Scratch data: the source
files of bench/run.py (`/var/tmp/aisdl-bench/src`, made by it once), its own nginx, node homes
and tmpfs folder (`/var/tmp/aisdl-bench-metrics`, `/dev/shm/aisdl-bench-metrics`), so that it
can run while bench/run.py does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402 - bench/run.py, beside this file

WATCH_EVERY = 1.0  # seconds: a dashboard's poll and a (fast) Prometheus scrape interval
SRC = Path("/var/tmp/aisdl-bench/src")
WORK = Path("/var/tmp/aisdl-bench-metrics")
TMPFS = Path("/dev/shm/aisdl-bench-metrics")


class Watcher(threading.Thread):
    """Prometheus and a dashboard: each second a scrape, the job list and each running job's
    full status."""

    def __init__(self, endpoint: str, what: frozenset[str]) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.what = endpoint, what
        self.stopped = threading.Event()
        self.scrapes: list[tuple[float, int]] = []  # (seconds, bytes) of each /metrics answer
        self.polls: list[float] = []                # seconds of each status round
        self.failures: list[str] = []

    def run(self) -> None:
        with requests.Session() as s:
            s.trust_env = False
            while not self.stopped.wait(WATCH_EVERY):
                try:
                    t0 = time.perf_counter()
                    if "metrics" in self.what:
                        r = s.get(f"{self.endpoint}/metrics", timeout=10)
                        r.raise_for_status()
                        self.scrapes.append((time.perf_counter() - t0, len(r.content)))
                    if "status" not in self.what:
                        continue
                    t0 = time.perf_counter()
                    jobs = s.get(f"{self.endpoint}/v1/download", json={}, timeout=10).json()
                    for job in jobs:
                        if job["finished_time"] == bench.EPOCH:
                            s.get(f"{self.endpoint}/v1/download", json={"id": job["id"]},
                                  timeout=10).raise_for_status()
                    self.polls.append(time.perf_counter() - t0)
                except (requests.RequestException, ValueError) as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self.stopped.set()
        self.join(15)


WATCHED = threading.Event()   # whether the next node is watched
WATCH: set[str] = {"metrics", "status"}  # what the watcher asks for
LAST: dict[str, Any] = {}     # what the watcher of the last watched node saw


class WatchedNode(bench.Node):
    """bench/run.py's node, with a watcher from the moment it answers until it stops."""

    def __init__(self, base: Path, log_path: Path, extra: list[str]) -> None:
        super().__init__(base, log_path, extra)
        self.watcher = Watcher(self.endpoint, frozenset(WATCH)) if WATCHED.is_set() else None
        if self.watcher is not None:
            self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            LAST.update(scrapes=self.watcher.scrapes, polls=self.watcher.polls,
                        failures=self.watcher.failures)
        super().stop()


def one_run(b: bench.Bench, w: bench.Workload, watched: bool) -> dict[str, Any]:
    LAST.clear()
    if watched:
        WATCHED.set()
    else:
        WATCHED.clear()
    res = b.run_once(w, bench.Candidate("aisdl", "defaults (--max-conns 64)", {}))
    if not res.ok:
        raise SystemExit(f"a run failed: {res.error}")
    return {"watched": watched, "wall": res.wall, "cpu": res.cpu,
            "node_cpu": res.extra["node_cpu"], "others_cores": res.others_cores,
            "job_wall": res.extra["job_wall"], "cli_wall": res.extra["cli_wall"], **LAST}


def scrape_cost(jobs: int, repeats: int = 50) -> float:
    """Seconds of CPU one scrape's collection and encoding take with `jobs` finished jobs'
    series (in this process: a node's collector over a ledger, no HTTP)."""
    from types import SimpleNamespace

    from aiohttp import web
    from prometheus_client import generate_latest

    from aisdl.api import metrics
    from aisdl.api.keys import DB, JOBS, NODE_ID
    from aisdl.engine.chunks import Row
    from aisdl.observe.ledger import Ledger

    ledger = Ledger()
    for j in range(jobs):
        tally = ledger.open_job(f"dnl-{j:09d}", "ais://bench", 0, 0, 0)
        ledger.recorded(tally, [Row(i, f"o{i}", 0, 1000, size=65536, placed=True)
                                for i in range(100)])
        ledger.retried(tally, {"5xx": 1})
    app = web.Application()
    app[JOBS] = SimpleNamespace(ledger=ledger, runs={},  # type: ignore[assignment]
                                pool=SimpleNamespace(restarts=0,
                                                     budget=SimpleNamespace(waiting=0)))
    app[NODE_ID] = "bench"
    app[DB] = SimpleNamespace(waiting=0)  # type: ignore[assignment]
    registry = metrics.CollectorRegistry(auto_describe=False)
    registry.register(metrics.NodeCollector(app))
    t0 = time.process_time()
    for _ in range(repeats):
        generate_latest(registry)
    return (time.process_time() - t0) / repeats


def request_cost(b: bench.Bench, w: bench.Workload, repeats: int = 200) -> dict[str, float]:
    """Seconds of the node's CPU per request, after a run of the workload (its job holds 1,000
    finished tasks, as a dashboard shows them): a scrape, and a dashboard's status round."""
    base = b.prepare(w)
    node = bench.Node(base, b.logs / "cost-node.log", [])
    try:
        argv = [str(bench.AIS), "start", "download", w.template(b.nginx.base),
                f"ais://{bench.BUCKET}/"]
        job, _ = bench.start_job(argv, b.logs / "cost-cli.log", node)
        while node.status(job)["finished_time"] == bench.EPOCH:
            time.sleep(0.25)
        costs = {}
        with requests.Session() as s:
            s.trust_env = False
            for what, path, body in (("scrape", "/metrics", None),
                                     ("status", "/v1/download", {"id": job})):
                cpu0 = bench.proc_cpu(node.pid)
                for _ in range(repeats):
                    s.get(node.endpoint + path, json=body, timeout=10).raise_for_status()
                costs[what] = (bench.proc_cpu(node.pid) - cpu0) / repeats
        return costs
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(out: Path, runs: list[dict[str, Any]], facts: dict[str, Any]) -> Path:
    plain = [r for r in runs if not r["watched"]]
    watched = [r for r in runs if r["watched"]]
    scrapes = [s for r in watched for s in r.get("scrapes", [])]
    polls = [p for r in watched for p in r.get("polls", [])]
    lines = [
        "# Watching a node: /metrics and a dashboard's polls during workload (c)",
        "",
        f"{facts['when']} · aisdl {facts['revision']} · {facts['machine']} · load average"
        f" at the start {facts['load']}",
        "",
        "Workload (c) of bench/run.py: 5,000 × 64 KiB from a local nginx to tmpfs, aisdl with"
        " its defaults. *Watched*: `GET /metrics` and the job list plus each running job's full"
        " status (`GET /v1/download`), once a second each, from the node's start to its stop."
        " Runs alternate in pairs (plain/watched, then watched/plain). Command:"
        f" `{facts['command']}`.",
        "",
        "| run | watched | wall (s) | of it, the job (s) | node + workers CPU (s) |"
        " others (cores) | scrapes |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {'yes' if r['watched'] else 'no'} | {r['wall']:.3f} |"
                     f" {r['job_wall']:.3f} | {r['node_cpu']:.2f} | {r['others_cores']:.2f} |"
                     f" {len(r.get('scrapes', []))} |")
    wall_loss = median(watched, "wall") / median(plain, "wall") - 1
    cpu_loss = median(watched, "node_cpu") / median(plain, "node_cpu") - 1
    lines += [
        "",
        "| | plain | watched | loss |",
        "|---|---|---|---|",
        f"| median wall (s) | {median(plain, 'wall'):.3f} | {median(watched, 'wall'):.3f} |"
        f" {100 * wall_loss:+.1f}% |",
        f"| median job (s) | {median(plain, 'job_wall'):.3f} |"
        f" {median(watched, 'job_wall'):.3f} |"
        f" {100 * (median(watched, 'job_wall') / median(plain, 'job_wall') - 1):+.1f}% |",
        f"| median node CPU (s) | {median(plain, 'node_cpu'):.2f} |"
        f" {median(watched, 'node_cpu'):.2f} | {100 * cpu_loss:+.1f}% |",
        "",
    ]
    if scrapes:
        lines.append(f"A scrape answered in {1000 * statistics.median(s for s, _ in scrapes):.1f}"
                     f" ms (median; worst {1000 * max(s for s, _ in scrapes):.1f} ms) with"
                     f" {statistics.median(n for _, n in scrapes) / 1024:.1f} KiB.")
    if polls:
        lines.append(f"A status round (list + running jobs) answered in"
                     f" {1000 * statistics.median(polls):.1f} ms (median).")
    per_request = facts.get("request_cost", {})
    if per_request:
        # once a second during the job: its share of the CPU the run costs without it
        share = {k: 100 * c * median(plain, "job_wall") / median(plain, "node_cpu")
                 for k, c in per_request.items()}
        lines.append("")
        lines.append(f"The node's CPU per request, after a run (its job showing 1,000 finished"
                     f" tasks): a scrape {1000 * per_request['scrape']:.2f} ms, a job's full"
                     f" status {1000 * per_request['status']:.2f} ms. Once a second each, on a"
                     f" run that keeps the node and its workers busy for"
                     f" {median(plain, 'node_cpu'):.2f} s of CPU over"
                     f" {median(plain, 'job_wall'):.2f} s, that is {share['scrape']:.2f}% of"
                     f" its CPU for the scrapes and {share['status']:.2f}% for the status"
                     " polls.")
    costs = facts.get("scrape_cost", {})
    if costs:
        lines.append("")
        lines.append("CPU of one scrape in the node (collect and encode, no HTTP), by the number"
                     " of jobs whose series it holds: " + ", ".join(
                         f"{n} jobs {1000 * c:.2f} ms" for n, c in costs.items()) + ".")
    failures = [f for r in watched for f in r.get("failures", [])]
    if failures:
        lines.append(f"Failed watcher requests: {len(failures)} (first: {failures[0]}).")
    path = out / f"{facts['date']}.md"
    path.write_text("\n".join(lines) + "\n")
    (out / f"{facts['date']}.json").write_text(json.dumps(
        {"facts": facts, "runs": [{k: v for k, v in r.items() if k not in ("scrapes", "polls")}
                                  | {"scrape_seconds": [s for s, _ in r.get("scrapes", [])]}
                                  for r in runs]}, indent=1))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8, help="plain/watched pairs (default 8)")
    ap.add_argument("--out", default=str(bench.BENCH / "results" / "metrics"))
    ap.add_argument("--watch", default="metrics,status",
                    help="what the watcher asks for: metrics, status or both (the default)")
    args = ap.parse_args()
    WATCH.clear()
    WATCH.update(w.strip() for w in args.watch.split(",") if w.strip())
    if not (SRC / "manifest.json").exists():
        ap.error(f"no source data in {SRC}: run bench/run.py once (it makes it)")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(bench.REPO / "src")],
                   check=True, stdout=subprocess.DEVNULL)
    WORK.mkdir(parents=True, exist_ok=True)
    if not (WORK / "src").exists():
        (WORK / "src").symlink_to(SRC)
    TMPFS.mkdir(parents=True, exist_ok=True)
    b = bench.Bench(argparse.Namespace(workdir=str(WORK)))
    b.tmpfs = TMPFS
    b.target_root = lambda w: TMPFS  # type: ignore[method-assign]
    bench.Node = WatchedNode  # type: ignore[misc]
    w = bench.WORKLOADS["c"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    facts = {"when": now.strftime("%Y-%m-%d %H:%M UTC"), "date": now.strftime("%Y-%m-%d"),
             "revision": subprocess.run(["git", "-C", str(bench.REPO), "describe", "--always",
                                        "--dirty"], capture_output=True, text=True).stdout.strip(),
             "machine": f"{os.cpu_count()} cores",
             "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
             "command": "uv run python bench/metrics_overhead.py " + " ".join(sys.argv[1:]),
             "watch": sorted(WATCH)}
    runs: list[dict[str, Any]] = []
    try:
        b.manifest = bench.make_data(b.data)
        b.nginx.start()
        bench.warm(b.data, w.src)
        one_run(b, w, watched=False)  # a warm-up, not counted: first imports, page cache
        for i in range(args.pairs):
            for watched in ((False, True) if i % 2 == 0 else (True, False)):
                runs.append(one_run(b, w, watched))
                bench.log(f"pair {i + 1}: {'watched' if watched else 'plain'} "
                          f"{runs[-1]['wall']:.3f} s, node cpu {runs[-1]['node_cpu']:.2f} s")
    finally:
        b.nginx.stop()
        shutil.rmtree(TMPFS / "run", ignore_errors=True)
    facts["scrape_cost"] = {n: scrape_cost(n) for n in (1, 100, 1000)}
    b.nginx.start()
    try:
        facts["request_cost"] = request_cost(b, w)
    finally:
        b.nginx.stop()
    bench.log(f"report: {report(out, runs, facts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
