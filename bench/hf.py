#!/usr/bin/env python3
"""Benchmark (g): a model-shaped Hugging Face repository from a Hub whose file store caps each
connection, as the Hub's CDN does.

    uv run python bench/hf.py [--size-mib 1024] [--rate-mb 50] [--runs 1]
                              [--ais-flag=--blob-threshold=64MiB ...] [--tools aisdl,hf,hf_transfer]

The repository: 3 LFS files of --size-mib each and 20 small files, on the fake Hub of the
tests (tests/fake_hub.py: tree API, resolve URLs, 302s); the LFS files are served by nginx with
`limit_rate` (--rate-mb MB/s per connection). Tools, each timed from the start of its process
until its last file is complete:
  aisdl        `ais start download --hf-model bench/model ais://hfbench/` against an idle node
               (until the job's finished_time); --ais-flag passes more flags (e.g. blob ones)
  hf           huggingface_hub.snapshot_download (the project's pinned version; 8 workers)
  hf_transfer  huggingface_hub 0.36 with HF_HUB_ENABLE_HF_TRANSFER=1 (ranged parallel GETs),
               in the venv bench/setup.sh makes (hub >= 1.0 no longer uses hf_transfer)
Runs are interleaved. Every output is checked (names, sizes; the peers' LFS files by sha256,
ours by the node, which verifies each against the Hub's sha256). Writes
bench/results/hf/<date>.md and .json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from aisdl.client import Client  # noqa: E402
from aisdl.models import Bucket  # noqa: E402
from fake_hub import BLOCK, FakeHub, Virtual  # noqa: E402

AIS = REPO / ".venv" / "bin" / "ais"
PY = REPO / ".venv" / "bin" / "python"
MiB = 1 << 20
REPO_ID = "bench/model"
BUCKET = "hfbench"
TOOLS = ("aisdl", "hf", "hf_transfer")
RUN_TIMEOUT = 1800.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


class Nginx:
    """The Hub's file store: /blobs/SHA256 from disk, `limit_rate` bytes/s per connection."""

    def __init__(self, prefix: Path, root: Path, rate: int) -> None:
        self.prefix, self.root, self.rate = prefix, root, rate
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        p = self.prefix
        (p / "tmp").mkdir(parents=True, exist_ok=True)
        (p / "nginx.conf").write_text(f"""
worker_processes 2;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off; sendfile on; tcp_nopush on; keepalive_timeout 120s;
    default_type application/octet-stream;
    client_body_temp_path {p}/tmp/body; proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi; uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location /blobs/ {{ limit_rate {self.rate}; }}
    }}
}}
""")
        log_f = open(p / "stderr.log", "ab")  # noqa: SIM115 (lives with nginx)
        self.proc = subprocess.Popen(["nginx", "-p", str(p), "-c", str(p / "nginx.conf"),
                                      "-g", "daemon off;"], stdout=log_f, stderr=log_f)
        wait_http(self.base)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def make_repo(hub: FakeHub, store: Path, size: int) -> dict[str, tuple[int, str]]:
    """3 LFS files of `size` bytes (written to the store once) and 20 small files; returns
    name -> (size, sha256 of an LFS file or "")."""
    files: dict[str, Any] = {f"model-{i + 1:05d}-of-00003.safetensors": Virtual(size, f"w{i}")
                             for i in range(3)}
    lfs = set(files)
    for i in range(20):
        files[f"{'tokenizer/' if i % 2 else ''}small-{i:02d}.json"] = \
            json.dumps({"i": i, "pad": "x" * (1000 * (i + 1))}).encode()
    hub.add_repo(REPO_ID, files, lfs=lfs)
    out: dict[str, tuple[int, str]] = {}
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name in lfs:
            sha = hub.blob_of(REPO_ID, name)
            path = store / "blobs" / sha
            if not path.exists() or path.stat().st_size != size:
                log(f"writing {name} ({size / MiB:.0f} MiB)")
                block = content.block()
                with open(path, "wb") as f:
                    for _ in range(size // BLOCK):
                        f.write(block)
                    f.write(block[:size % BLOCK])
            out[name] = (size, sha)
        else:
            out[name] = (len(content), "")
    return out


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(8 * MiB):
            h.update(data)
    return h.hexdigest()


def check_dir(root: Path, manifest: dict[str, tuple[int, str]]) -> None:
    got = {str(p.relative_to(root)): p for p in root.rglob("*")
           if p.is_file() and ".cache" not in p.relative_to(root).parts}
    if set(got) != set(manifest):
        raise AssertionError(f"names differ: {sorted(set(got) ^ set(manifest))[:5]}")
    for name, (size, sha) in manifest.items():
        if got[name].stat().st_size != size or (sha and sha256_of(got[name]) != sha):
            raise AssertionError(f"{name}: wrong size or sha256")


class Node:
    def __init__(self, home: Path, hub_url: str) -> None:
        self.port = free_port()
        self.home = home
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HF_ENDPOINT": hub_url, "AIS_ENDPOINT": self.endpoint}
        for var in ("HF_TOKEN", "HF_TOKEN_PATH"):
            self.env.pop(var, None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        log_f = open(self.home.parent / "node.log", "ab")  # noqa: SIM115 (lives with the node)
        self.proc = subprocess.Popen([str(AIS), "serve", "--port", str(self.port), "--home",
                                      str(self.home)], stdout=log_f, stderr=log_f, env=self.env)
        wait_http(f"{self.endpoint}/v1/health", 60)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def status(self, job: str) -> dict[str, Any]:
        return Client(self.endpoint).download_status(job)


def parse_rfc3339(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def run_aisdl(node: Node, flags: list[str], manifest: dict[str, tuple[int, str]]) -> float:
    client = Client(node.endpoint)
    if client.bucket_exists(Bucket("ais", BUCKET)):  # a fresh bucket: nothing to skip
        client.destroy_bucket(Bucket("ais", BUCKET))
    t0 = time.time()
    out = subprocess.run([str(AIS), "start", "download", "--hf-model", REPO_ID,
                          f"ais://{BUCKET}/", *flags], capture_output=True, text=True,
                         env=node.env, timeout=60)
    if out.returncode:
        raise RuntimeError(f"ais start download failed: {out.stderr.strip()}")
    job = out.stdout.split()[0]
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        st = node.status(job)
        if not st["finished_time"].startswith(("1970", "0001")):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job} did not finish")
        time.sleep(0.1)
    if st["error_cnt"] or st["finished_cnt"] != len(manifest):
        raise AssertionError(f"job {job}: {st['finished_cnt']} done, {st['error_cnt']} errors:"
                             f" {st.get('download_errors')}")
    return parse_rfc3339(st["finished_time"]) - t0


SNAPSHOT = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], endpoint=sys.argv[2], local_dir=sys.argv[3],
                  cache_dir=sys.argv[4], max_workers=8)
"""


def run_hub(python: Path, hub: FakeHub, out: Path, transfer: bool,
            manifest: dict[str, tuple[int, str]]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HF_HUB_ENABLE_HF_TRANSFER": "1" if transfer else "0",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": str(out / ".hf-home")}
    env.pop("HF_TOKEN", None)
    t0 = time.perf_counter()
    proc = subprocess.run([str(python), "-c", SNAPSHOT, REPO_ID, hub.url, str(out / "files"),
                           str(out / "cache")], capture_output=True, text=True, env=env,
                          timeout=RUN_TIMEOUT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"snapshot_download failed: {proc.stderr.strip()[-2000:]}")
    check_dir(out / "files", manifest)
    return wall


def write_report(out: Path, res: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    payload = res["payload_bytes"]
    rows = {t: statistics.median(w) for t, w in res["walls"].items() if w}
    best_peer = min((w for t, w in rows.items() if t != "aisdl"), default=None)
    lines = [f"# Benchmark (g): Hugging Face model repository, {res['date']}", "",
             f"Repository: 3 x {res['size_mib']} MiB LFS files + 20 small files "
             f"({payload / 1e9:.2f} GB) on the fake Hub (tests/fake_hub.py); LFS files from "
             f"nginx capped at {res['rate_mb']} MB/s per connection. {res['runs']} run(s), "
             f"interleaved; medians. aisdl flags: `{' '.join(res['ais_flags']) or '(none)'}`. "
             f"Machine: {res['machine']}.", "",
             "| tool | wall s | MB/s | vs best peer |", "|---|---|---|---|"]
    for tool, wall in rows.items():
        ratio = f"{best_peer / wall:.2f}x" if best_peer else "-"
        lines.append(f"| {tool} | {wall:.2f} | {payload / wall / 1e6:.1f} | {ratio} |")
    lines += ["", "All walls: " + json.dumps(res["walls"]), ""]
    out.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="size of each LFS file")
    ap.add_argument("--rate-mb", type=float, default=50.0, help="MB/s per connection")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--ais-flag", action="append", default=[],
                    help="one more flag for `ais start download` (repeat; use --ais-flag=--x)")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/aisdl-bench-hf"))
    ap.add_argument("--out", type=Path,
                    default=REPO / "bench" / "results" / "hf" / f"{dt.date.today()}.md")
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    hft_python = args.workdir / "venv-hft" / "bin" / "python"
    if "hf_transfer" in tools and not hft_python.exists():
        ap.error(f"{hft_python} is missing: run bench/setup.sh")
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    nginx = Nginx(work / "nginx", work / "store", int(args.rate_mb * 1e6))
    hub = FakeHub()
    hub.store_url = ""  # set once nginx has its port
    node = Node(work / "node-home", "")
    walls: dict[str, list[float]] = {t: [] for t in tools}
    try:
        log("making the repository")
        hub.start()
        manifest = make_repo(hub, work / "store", args.size_mib * MiB)
        nginx.start()
        hub.store_url = nginx.base
        node.env["HF_ENDPOINT"] = hub.url
        node.start()
        for run in range(args.runs):
            order = tools[run % len(tools):] + tools[:run % len(tools)]
            for tool in order:
                subprocess.run(["sync"], check=False)
                if tool == "aisdl":
                    wall = run_aisdl(node, args.ais_flag, manifest)
                else:
                    python = hft_python if tool == "hf_transfer" else PY
                    wall = run_hub(python, hub, work / f"out-{tool}", tool == "hf_transfer",
                                   manifest)
                walls[tool].append(round(wall, 3))
                log(f"run {run + 1} {tool}: {wall:.2f} s")
    finally:
        node.stop()
        nginx.stop()
        hub.stop()
    payload = sum(size for size, _ in manifest.values())
    write_report(args.out, {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "size_mib": args.size_mib,
        "rate_mb": args.rate_mb, "runs": args.runs, "ais_flags": args.ais_flag,
        "payload_bytes": payload, "walls": walls,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Linux "
                   f"{platform.release()}"})
    log(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
