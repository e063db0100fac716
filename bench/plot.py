"""Bar chart of bench/results/results.json: throughput per tool and workload.

Run by bench/run.py in a throwaway environment (`uv run --no-project --with matplotlib`), so
matplotlib never enters the project's .venv.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"aisdl": "#d62728", "wget2": "#1f77b4", "curl": "#2ca02c", "rclone": "#9467bd",
          "aria2c": "#8c564b"}


def main(src: str, dst: str) -> None:
    res = json.load(open(src))
    wls = [(k, w) for k, w in sorted(res["workloads"].items()) if k != "d" and w.get("summary")]
    d = res["workloads"].get("d")
    panels = len(wls) + (1 if d else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(4.2 * max(panels, 1), 4.2),
                             squeeze=False)
    for ax, (key, w) in zip(axes[0], wls, strict=False):
        metric, unit = ("mb_per_s", "MB/s") if key == "a" else ("files_per_s", "files/s")
        tools = [t for t, s in w["summary"].items() if s.get("runs")]
        vals = [w["summary"][t][metric] for t in tools]
        bars = ax.bar(tools, vals, color=[COLORS.get(t, "grey") for t in tools])
        # whiskers: the range of the runs (throughput at max and min wall time)
        for i, t in enumerate(tools):
            s = w["summary"][t]
            total = s[metric] * s["median_wall_s"]
            ax.plot([i, i], [total / s["max_wall_s"], total / s["min_wall_s"]], color="black",
                    lw=1)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=8)
        ax.set_title(f"({key}) {w['title']}", fontsize=9)
        ax.set_ylabel(unit + " (median of runs; bar = min–max)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    if d:
        ax = axes[0][panels - 1]
        ok = [r for r in d["runs"] if r["ok"]]
        if ok:
            ex = sorted(ok, key=lambda r: r["extra"]["first_commit_s"])[len(ok) // 2]["extra"]
            text = (f"(d) 10M-name template, aisdl\n\n"
                    f"first object committed after\n{ex['first_commit_s']:.2f} s (median run)\n\n"
                    f"node VmHWM after {d['seconds']:.0f} s:\n{ex['hwm_mib']:.0f} MiB\n\n"
                    f"{ex['files_per_s']:,.0f} files/s")
        else:
            text = "(d) all runs failed"
        ax.axis("off")
        ax.text(0.05, 0.5, text, fontsize=10, va="center")
    m = res.get("machine", {})
    fig.suptitle(f"aisdl vs peers — {m.get('nproc')} cores, {m.get('date')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
