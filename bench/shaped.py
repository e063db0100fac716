#!/usr/bin/env python3
"""Workload (f): many small files through a shaped link. aisdl against wget2, curl -Z, rclone
(http backend) and aria2c, each fetching FILES x SIZE from an origin that answers every request
after LATENCY, behind a link of RATE.

    uv run python bench/shaped.py [--files 2000] [--size 1MiB] [--rate 1gbit]
                                  [--latency 20ms] [--conns 32,64] [--runs 1]
                                  [--tools aisdl,wget2,curl,rclone,aria2c]

Run as root (it creates a network namespace, a veth pair and tc qdiscs). Nothing leaves the
machine: the origin (bench/scale_origin.py's server, plus an HTML index of /f/ for rclone's
http backend) runs in namespace `aisshp` at 10.78.0.2, behind a veth pair shaped with tbf at
RATE on both ends; the clients run in the host namespace (10.78.0.1) and write to tmpfs. This
kernel has no netem, so the latency is the origin's own: it sleeps LATENCY before each
response's first byte (asyncio.sleep; measured with curl's time_starttransfer and recorded).
Everything is removed at the end and, as leftovers of a crashed run, at the start.

Results: bench/results/shaped/<date>.md and .json (--out to change): per tool its best wall
time over its settings and runs, and the ratio best/that (1.00 = the fastest).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import aisdl_revision, job_id_from, log, run_child, stop_process  # noqa: E402
from scale import cpu_times, rate_bits, sh, tree_cpu, wait_until  # noqa: E402
from scale_origin import block, content, make_app, run_server  # noqa: E402

from aisdl.units import parse_duration, parse_size  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
AIS, PYTHON = VENV_BIN / "ais", VENV_BIN / "python"
NS, HOST_VETH, NS_VETH = "aisshp", "aisshp-h", "aisshp-n"
HOST_IP, ORIGIN_IP = "10.78.0.1", "10.78.0.2"
ORIGIN_PORT = 8000
TBF_LATENCY = "50ms"            # tbf's queue bound, not the origin's latency
SHM = Path("/dev/shm/aisdl-shaped")
WORK = Path("/var/tmp/aisdl-shaped")
BUCKET = "shaped"
SAMPLE = 64                     # files whose bytes are checked per run
SAMPLE_EVERY = 0.1              # seconds between samples of the link's bytes
TOOLS = ("aisdl", "wget2", "curl", "rclone", "aria2c")


# -- the origin (run inside the namespace) ---------------------------------------------------
def serve_origin(host: str, port: int, size: int, latency: float, files: int) -> None:
    from aiohttp import web

    app = make_app(size, latency)
    index = ("<html><body>\n" + "".join(f'<a href="{i}">{i}</a>\n' for i in range(files))
             + "</body></html>\n").encode()

    async def listing(_request: web.Request) -> web.Response:
        return web.Response(body=index, content_type="text/html")

    app.router.add_get("/f/", listing)
    run_server(app, host, port)


def spawn(argv: list[str], log_path: Path, stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
    """A long-lived child in its own session (a Ctrl-C reaches only this harness, which then
    stops it)."""
    logf = open(log_path, "ab")  # noqa: SIM115 (the child holds it)
    logf.write(("$ " + " ".join(argv) + "\n").encode())
    logf.flush()
    return subprocess.Popen(argv, stdout=subprocess.PIPE if stdout_pipe else logf, stderr=logf,
                            stdin=subprocess.DEVNULL, start_new_session=True)


# -- the link -------------------------------------------------------------------------------
def net_down() -> None:
    with contextlib.suppress(RuntimeError):
        for pid in sh("ip", "netns", "pids", NS, check=False).split():
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid), signal.SIGKILL)
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "link", "del", HOST_VETH, check=False)


def net_up(rate: str) -> None:
    burst = str(max(64 * 1024, rate_bits(rate) // 8 // 250))  # a timer tick, a GSO packet
    tbf = ["root", "tbf", "rate", rate, "burst", burst, "latency", TBF_LATENCY]
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", NS_VETH)
    sh("ip", "link", "set", NS_VETH, "netns", NS)
    sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_VETH)
    sh("ip", "link", "set", HOST_VETH, "up")
    sh("ip", "-n", NS, "addr", "add", f"{ORIGIN_IP}/30", "dev", NS_VETH)
    sh("ip", "-n", NS, "link", "set", NS_VETH, "up")
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    sh("tc", "qdisc", "add", "dev", HOST_VETH, *tbf)                    # towards the origin
    sh("ip", "netns", "exec", NS, "tc", "qdisc", "add", "dev", NS_VETH, *tbf)  # from it


def link_bytes() -> int:
    """Bytes that came over the shaped link from the origin (the host end's receive count)."""
    return int(Path(f"/sys/class/net/{HOST_VETH}/statistics/rx_bytes").read_text())


def link_drops() -> int:
    """Packets the origin's tbf has dropped (its queue was full: too many flows at once)."""
    out = sh("ip", "netns", "exec", NS, "tc", "-s", "qdisc", "show", "dev", NS_VETH)
    m = re.search(r"dropped (\d+)", out)
    return int(m.group(1)) if m else 0


class Sampler:
    """The link's bytes every SAMPLE_EVERY seconds while a run goes on (and, for aisdl, the
    transfers in flight): where the time went, start-up, steady rate and tail."""

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.points.append((time.perf_counter() - self.t0, link_bytes()))
            self.stop.wait(SAMPLE_EVERY)

    def done(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        self.points.append((time.perf_counter() - self.t0, link_bytes()))
        (t_first, b0), (t_end, b_end) = self.points[0], self.points[-1]
        total = b_end - b0
        if total <= 0:
            return {}

        def when(frac: float) -> float:
            for t, b in self.points:
                if b - b0 >= frac * total:
                    return t
            return t_end

        t10, t90 = when(0.1), when(0.9)
        return {"first_byte_s": when(0.001) - t_first, "to_10pct_s": t10,
                "steady_gbits": 0.8 * total * 8 / max(1e-9, t90 - t10) / 1e9,
                "last_10pct_s": t_end - t90}


def first_byte_ms(base: str, n: int = 5) -> list[float]:
    """What one request waits for its first byte, as curl sees it (ms)."""
    out = []
    for i in range(n):
        t = sh("curl", "-s", "-o", "/dev/null", "-w", "%{time_starttransfer}", f"{base}/f/{i}")
        out.append(float(t) * 1000)
    return out


# -- the runs --------------------------------------------------------------------------------
@dataclass
class Run:
    tool: str
    setting: str
    wall: float
    cpu: float           # the tool's own CPU seconds (for aisdl: the node's tree and the CLI)
    machine_busy: float  # all CPUs busy during the run / wall (others' work included)
    load: float          # 1-minute load average at the start (others' work on this machine)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gbits(self) -> float:
        return self.extra["bytes"] * 8 / self.wall / 1e9


def check_files(out: Path, files: int, size: int, name: Any, tail: bytes) -> None:
    got = sum(1 for _ in out.iterdir())
    if got != files:
        raise RuntimeError(f"{out}: {got} files, expected {files}")
    for i in random.Random(files).sample(range(files), min(SAMPLE, files)):
        if (out / name(i)).read_bytes() != content(i, size, tail):
            raise RuntimeError(f"{out / name(i)}: wrong bytes")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = f"http://{ORIGIN_IP}:{ORIGIN_PORT}"
        self.urls = [f"{self.base}/f/{i}" for i in range(args.files)]
        self.tail = block(args.size)
        self.logs = WORK / "logs"

    def peer_argv(self, tool: str, n: int, out: Path) -> list[str]:
        lst = WORK / "urls.txt"
        lst.write_text("\n".join(self.urls) + "\n")
        if tool == "wget2":
            return ["wget2", "-q", "--no-robots", "-nd", "--no-xattr", "--no-hsts", "--no-hpkp",
                    f"--max-threads={n}", "-i", str(lst), "-P", str(out)]
        if tool == "curl":
            cfg = WORK / "curl.cfg"
            cfg.write_text("".join(f'url = "{u}"\noutput = "{out}/{i}"\n'
                                   for i, u in enumerate(self.urls)))
            return ["curl", "-Z", "--parallel-max", str(n), "--parallel-immediate", "-s", "-S",
                    "-f", "-K", str(cfg)]
        if tool == "rclone":
            conf = WORK / "rclone.conf"
            conf.touch()
            # --http-no-head: without it rclone HEADs every listed file first (2 round trips)
            return ["rclone", "copy", "--config", str(conf), "--http-url", f"{self.base}/f/",
                    ":http:", str(out), "--transfers", str(n), "--checkers", str(n),
                    "--http-no-head", "--no-check-dest", "-q"]
        if tool == "aria2c":
            return ["aria2c", "-q", "-i", str(lst), "-d", str(out), "-j", str(n), "-x", "1",
                    "--auto-save-interval=0", "--file-allocation=none",
                    "--allow-overwrite=true", "--auto-file-renaming=false",
                    "--deferred-input=true", "--summary-interval=0",
                    "--console-log-level=error"]
        raise ValueError(tool)

    def measure(self, tool: str, setting: str, go: Any) -> Run:
        load = os.getloadavg()[0]
        sent0, busy0, drops0 = link_bytes(), cpu_times()["busy"], link_drops()
        t0 = time.perf_counter()
        sampler = Sampler()
        cpu, extra = go()
        wall = time.perf_counter() - t0
        extra.update(sampler.done())
        busy = cpu_times()["busy"] - busy0
        extra["bytes"] = link_bytes() - sent0
        extra["drops"] = link_drops() - drops0
        ncpu = os.cpu_count() or 1
        return Run(tool, setting, wall, cpu, busy / wall / ncpu, load, extra)

    def run_peer(self, tool: str, n: int, rep: int) -> Run:
        out = SHM / tool
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        argv = self.peer_argv(tool, n, out)
        lp = self.logs / f"{tool}-{n}-{rep}.log"

        def go() -> tuple[float, dict[str, Any]]:
            r = run_child(argv, lp, timeout=900)
            if r.rc != 0 or r.timed_out:
                raise RuntimeError(f"{tool}: exit code {r.rc}; see {lp}")
            return r.cpu, {"argv": " ".join(argv[:1] + argv[1:12])}

        setting = {"wget2": f"--max-threads={n}", "curl": f"-Z --parallel-max {n}",
                   "rclone": f"--transfers {n} --checkers {n} --http-no-head",
                   "aria2c": f"-i list -j {n} -x 1"}[tool]
        run = self.measure(tool, setting, go)
        check_files(out, self.args.files, self.args.size, str, self.tail)
        shutil.rmtree(out, ignore_errors=True)
        return run

    def run_aisdl(self, conns: int, rep: int, start: str) -> Run:
        import requests

        home, mount = WORK / "aisdl-home", SHM / "aisdl"
        for d in (home, mount):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        port = 51180
        extra = ["--max-conns", str(conns)] if conns else []
        lp = self.logs / f"aisdl-node-{conns}-{start}-{rep}.log"
        node = spawn([str(AIS), "serve", "--port", str(port), "--home", str(home),
                      "--mountpath", str(mount), "--allow-private-egress", *extra], lp)
        endpoint = f"http://127.0.0.1:{port}"
        session = requests.Session()
        session.trust_env = False
        try:
            wait_until("aisdl node", lambda: session.get(f"{endpoint}/v1/health",
                                                           timeout=1).ok, 90, node, lp)
            env = dict(os.environ, AIS_ENDPOINT=endpoint)
            cli_log = self.logs / f"aisdl-cli-{conns}-{start}-{rep}.log"
            cpu0 = tree_cpu(node.pid)

            def go() -> tuple[float, dict[str, Any]]:
                t0 = time.perf_counter()
                template = f"{self.base}/f/{{0..{self.args.files - 1}}}"
                if start == "rest":  # as the SDK would: no CLI to start
                    r = session.post(f"{endpoint}/v1/download", json={
                        "type": "range", "bucket": {"name": BUCKET}, "template": template},
                        timeout=30)
                    r.raise_for_status()
                    job = r.json()["id"]
                else:
                    with open(cli_log, "w") as f:
                        rc = subprocess.run([str(AIS), "start", "download", template,
                                             f"ais://{BUCKET}/"],
                                            stdout=f, stderr=f, env=env).returncode
                    if rc != 0:
                        raise RuntimeError(f"`ais start download` exited {rc}; see {cli_log}")
                    job = job_id_from(cli_log)
                cli_s = time.perf_counter() - t0
                in_flight = []
                while True:
                    st = session.get(f"{endpoint}/v1/download",
                                     json={"id": job, "only_active_tasks": True},
                                     timeout=30).json()
                    if not st["finished_time"].startswith("1970"):
                        break
                    in_flight.append(len(st.get("current_tasks", [])))
                    time.sleep(0.05)
                if st["error_cnt"] or st["finished_cnt"] != self.args.files:
                    raise RuntimeError(f"aisdl job {job}: {st}")
                return tree_cpu(node.pid) - cpu0, {
                    "job": job, "cli_s": cli_s, "in_flight_mean": statistics.mean(in_flight or [0]),
                    "in_flight_max": max(in_flight or [0])}

            setting = f"--max-conns {conns}" if conns else "defaults"
            if start == "rest":
                setting += ", started by POST /v1/download"
            run = self.measure("aisdl", setting, go)
            check_files(mount / "ais" / BUCKET, self.args.files, self.args.size, str, self.tail)
            return run
        finally:
            stop_process(node, signal.SIGTERM, 30)
            shutil.rmtree(mount, ignore_errors=True)


def summarize(runs: list[Run]) -> dict[str, dict[str, Any]]:
    best: dict[str, Run] = {}
    for r in runs:
        if r.tool not in best or r.wall < best[r.tool].wall:
            best[r.tool] = r
    fastest = min(r.wall for r in best.values())
    return {tool: {"setting": r.setting, "wall_s": r.wall, "ratio": fastest / r.wall,
                   "gbits": r.gbits, "cpu_s": r.cpu, "machine_busy": r.machine_busy,
                   "load": r.load,
                   "walls": [x.wall for x in runs if x.tool == tool],
                   "median_wall_s": statistics.median(x.wall for x in runs if x.tool == tool)}
            for tool, r in sorted(best.items(), key=lambda kv: kv[1].wall)}


def write_report(out: Path, facts: dict[str, Any], runs: list[Run]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M")
    summary = summarize(runs)
    data = {"facts": facts, "summary": summary,
            "runs": [{**r.__dict__, "gbits": r.gbits} for r in runs]}
    (out / f"{stamp}.json").write_text(json.dumps(data, indent=1) + "\n")
    a = facts["args"]
    lines = [f"# (f) {a['files']} x {a['size']} through a shaped link ({stamp} UTC)", "",
             f"Origin in namespace `{NS}` behind veth + tbf {a['rate']} both ways; it sleeps"
             f" {a['latency']} before each first byte (measured first byte:"
             f" {', '.join(f'{x:.1f}' for x in facts['first_byte_ms'])} ms). Clients in the"
             " host namespace, writing to tmpfs. Machine: "
             f"{facts['cpus']} CPUs ({facts['machine']}), shared with other work: the load"
             " column is the 1-minute load average when the run started.", "",
             "| tool | best setting | wall s | Gbit/s | ratio (best/this) | tool CPU s |"
             " machine busy | load | all walls s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for tool, s in summary.items():
        lines.append(f"| {tool} | `{s['setting']}` | {s['wall_s']:.2f} | {s['gbits']:.3f} |"
                     f" {s['ratio']:.2f} | {s['cpu_s']:.1f} | {s['machine_busy']:.0%} |"
                     f" {s['load']:.1f} | {', '.join(f'{w:.2f}' for w in s['walls'])} |")
    lines += ["", "Every run: wall, mean rate on the link, the tool's CPU; where the time went"
              " (link bytes sampled every 0.1 s): the first byte, 10 % of the bytes, the"
              " rate from 10 % to 90 %, the last 10 %; aisdl: transfers in flight (its"
              " status, mean and max):", ""]
    for r in runs:
        e = r.extra
        flight = (f", in flight {e['in_flight_mean']:.0f} (max {e['in_flight_max']}),"
                  f" starting the job {e['cli_s']:.2f} s"
                  if "in_flight_mean" in e else "")
        lines.append(f"- {r.tool} `{r.setting}`: {r.wall:.2f} s, {r.gbits:.3f} Gbit/s, CPU"
                     f" {r.cpu:.1f} s, load {r.load:.1f}; first byte"
                     f" {e.get('first_byte_s', 0):.2f} s, 10 % at {e.get('to_10pct_s', 0):.2f}"
                     f" s, steady {e.get('steady_gbits', 0):.3f} Gbit/s, last 10 %"
                     f" {e.get('last_10pct_s', 0):.2f} s, {e.get('drops', 0)} packets dropped"
                     f" at the link{flight}")
    lines += ["", f"aisdl: {facts['aisdl']}", f"tools: {facts['tools']}", ""]
    path = out / f"{stamp}.md"
    path.write_text("\n".join(lines))
    return path


def tool_version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
    return "?"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", default="1MiB")
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--latency", default="20ms")
    ap.add_argument("--conns", default="32,64", help="parallelism of each peer tool")
    ap.add_argument("--aisdl-conns", default="0", help="aisdl --max-conns (0: the default)")
    ap.add_argument("--aisdl-start", default="cli,rest",
                    help="start aisdl's job with `ais start download` (cli), a POST (rest)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "shaped")
    return ap.parse_args()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "origin":
        _, _, host, port, size, latency, files = sys.argv
        serve_origin(host, int(port), int(size), float(latency), int(files))
        return 0
    args = parse_args()
    if os.geteuid() != 0:
        print("bench/shaped.py needs root (network namespaces and tc)", file=sys.stderr)
        return 2
    tools = args.tools.split(",")
    for t in tools:
        if t != "aisdl" and shutil.which(t) is None:
            print(f"{t} is not installed", file=sys.stderr)
            return 2
    size, latency = parse_size(args.size), parse_duration(args.latency)
    args.size_text, args.size = args.size, size
    for d in (WORK, SHM):
        shutil.rmtree(d, ignore_errors=True)
    (WORK / "logs").mkdir(parents=True)
    net_down()
    net_up(args.rate)
    origin = None
    try:
        origin = spawn(["ip", "netns", "exec", NS, str(PYTHON), __file__, "origin", ORIGIN_IP,
                        str(ORIGIN_PORT), str(size), str(latency), str(args.files)],
                       WORK / "logs" / "origin.log", stdout_pipe=True)
        assert origin.stdout is not None
        ready, _, _ = select.select([origin.stdout], [], [], 30)
        if not ready or origin.stdout.readline().strip() != b"ready":
            raise RuntimeError("the origin did not start; see its log")
        bench = Bench(args)
        fb = first_byte_ms(bench.base)
        log(f"first byte: {', '.join(f'{x:.1f}' for x in fb)} ms")
        runs: list[Run] = []
        for rep in range(args.runs):
            for tool in tools:
                if tool == "aisdl":
                    todo = [(int(n), how) for how in args.aisdl_start.split(",")
                            for n in args.aisdl_conns.split(",")]
                else:
                    todo = [(int(n), "") for n in args.conns.split(",")]
                for n, how in todo:
                    r = bench.run_aisdl(n, rep, how) if tool == "aisdl" else \
                        bench.run_peer(tool, n, rep)
                    log(f"{tool} {r.setting}: {r.wall:.2f} s, {r.gbits:.3f} Gbit/s,"
                        f" CPU {r.cpu:.1f} s, load {r.load:.1f}")
                    runs.append(r)
        facts = {"args": {"files": args.files, "size": args.size_text, "rate": args.rate,
                          "latency": args.latency, "conns": args.conns},
                 "first_byte_ms": fb, "cpus": os.cpu_count(), "machine": platform.machine(),
                 "aisdl": {**aisdl_revision(), "commit": sh(
                     "git", "-C", str(REPO), "rev-parse", "--short", "HEAD").strip()},
                 "tools": {t: tool_version([t, "--version"] if t != "rclone"
                                           else [t, "version"])
                           for t in tools if t != "aisdl"}}
        path = write_report(args.out, facts, runs)
        log(f"wrote {path}")
        return 0
    finally:
        if origin is not None:
            stop_process(origin, signal.SIGTERM, 10)
        net_down()
        shutil.rmtree(SHM, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
