#!/usr/bin/env python3
"""CPU per file of the node process alone, and of node + fetch workers, on a job whose source
answers at once (nginx `/d/`: a 1-byte body), written to a tmpfs: what is left is the per-file
cost of our own code, which caps small-file jobs once there are enough cores for the workers.

    uv run python bench/node_cpu.py [--files 20000] [--runs 3] [--procs 1,2]

Needs nginx (bench/setup.sh). Prints one line per run and the medians; `--json FILE` keeps them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import AIS, BUCKET, EPOCH, Nginx, Node, proc_cpu, start_job  # noqa: E402


def one_run(nginx: Nginx, base: Path, files: int, procs: int) -> dict[str, float]:
    node = Node(base, base / "node.log", ["--fetch-procs", str(procs)])
    try:
        kids = [p for p in node.pids() if p != node.pid]
        node0, kids0 = proc_cpu(node.pid), sum(proc_cpu(p) for p in kids)
        argv = [str(AIS), "start", "download", f"{nginx.base}/d/f{{0..{files - 1}}}",
                f"ais://{BUCKET}/"]
        t0 = time.perf_counter()
        job, _ = start_job(argv, base / "cli.log", node)
        while (st := node.status(job))["finished_time"] == EPOCH:
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        node_cpu = proc_cpu(node.pid) - node0
        kids_cpu = sum(proc_cpu(p) for p in kids) - kids0
        if st["finished_cnt"] != files or st["error_cnt"]:
            raise RuntimeError(f"job ended {st}")
        return {"procs": procs, "files": files, "wall_s": wall, "files_per_s": files / wall,
                "node_us_per_file": node_cpu / files * 1e6,
                "workers_us_per_file": kids_cpu / files * 1e6,
                "all_us_per_file": (node_cpu + kids_cpu) / files * 1e6}
    finally:
        node.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--procs", default="1,2", help="fetch processes to try, comma-separated")
    ap.add_argument("--json", help="write the runs to this file")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="aisdl-nodecpu-", dir="/dev/shm"))
    nginx = Nginx(root / "nginx", root / "www")
    (root / "www").mkdir(parents=True)
    nginx.start()
    runs = []
    try:
        for i in range(args.runs):
            for procs in (int(p) for p in args.procs.split(",")):
                try:
                    r = one_run(nginx, root / f"run{i}-{procs}", args.files, procs)
                finally:  # in RAM: a run's objects would shrink the page cache of what follows
                    shutil.rmtree(root / f"run{i}-{procs}", ignore_errors=True)
                runs.append(r)
                print(f"procs={procs} {r['files_per_s']:8.0f} files/s  node "
                      f"{r['node_us_per_file']:5.1f} µs/file  workers "
                      f"{r['workers_us_per_file']:5.1f}  all {r['all_us_per_file']:5.1f}",
                      flush=True)
    finally:
        nginx.stop()
        shutil.rmtree(root, ignore_errors=True)
    for procs in sorted({int(r["procs"]) for r in runs}):
        mine = [r for r in runs if r["procs"] == procs]
        print(f"median procs={procs}: " + ", ".join(
            f"{k} {statistics.median(r[k] for r in mine):.1f}"
            for k in ("files_per_s", "node_us_per_file", "workers_us_per_file",
                      "all_us_per_file")))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
