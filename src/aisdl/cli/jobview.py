"""How a download job's status reads on a terminal (the lines of the user's document)."""

from __future__ import annotations

from typing import Any

from aisdl.units import format_size

EPOCH = "1970-01-01T00:00:00Z"


def is_finished(st: dict[str, Any]) -> bool:
    return bool(st.get("finished_time")) and st["finished_time"] != EPOCH


def done_count(st: dict[str, Any]) -> int:
    return int(st["finished_cnt"]) + int(st["error_cnt"])


def display_total(st: dict[str, Any]) -> int:
    return int(st["total"]) if int(st["total"]) > 0 else int(st["scheduled_cnt"])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary_line(st: dict[str, Any]) -> str:
    """`Done: 120 files downloaded, 21 errors`, `Done: 3 files downloaded, skipped: 1`."""
    head = "Aborted" if st["aborted"] else "Done"
    line = f"{head}: {_plural(int(st['finished_cnt']), 'file')} downloaded"
    if st["skipped_cnt"]:
        line += f", skipped: {st['skipped_cnt']}"
    if st["error_cnt"]:
        line += f", {_plural(int(st['error_cnt']), 'error')}"
    return line


def progress_line(st: dict[str, Any]) -> str:
    total = display_total(st)
    if total <= 0:
        return f"Download progress: {done_count(st)}/?"
    return f"Download progress: {done_count(st)}/{total} ({100 * done_count(st) / total:.2f}%)"


def status_lines(st: dict[str, Any], verbose: bool, units: str = "") -> list[str]:
    job_id = st["id"]
    errors = st.get("download_errors") or []
    if is_finished(st):
        lines = [summary_line(st)]
    else:
        lines = [progress_line(st)]
        if st.get("waiting"):  # e.g. for the Dask scheduler that runs its chunks
            lines.append(f"Waiting {st['waiting']}")
        if verbose and st.get("current_tasks"):
            lines.append("Progress of files that are currently being downloaded:")
            lines += [f"\t{_task_progress(t, units)}" for t in st["current_tasks"]]
        if st["error_cnt"] and not verbose:
            lines.append(f"Errors ({st['error_cnt']}) occurred during the download. To see"
                         f" detailed info run `ais show job download {job_id} -v`")
    if verbose and errors:
        lines.append("Errors:")
        lines += [f"\t{e['name']}: {e['error']}" for e in errors]
    elif is_finished(st) and st["error_cnt"]:
        lines.append(f"To see detailed info run `ais show job download {job_id} -v`")
    return lines


def _task_progress(t: dict[str, Any], units: str) -> str:
    done, total = int(t["downloaded"]), int(t.get("total") or 0)
    where = f" (on {t['worker']})" if t.get("worker") else ""
    if total <= 0:
        return f"{t['name']}: {format_size(done, units)}{where}"
    return (f"{t['name']}: {format_size(done, units)}/{format_size(total, units)}"
            f" ({100 * done / total:.2f}%){where}")


def job_status_word(st: dict[str, Any]) -> str:
    if st["aborted"]:
        return "Aborted"
    return "Finished" if is_finished(st) else "Running"


def sort_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Running first (oldest first), then finished ones by finish time."""
    return sorted(jobs, key=lambda j: (is_finished(j), j["finished_time"] if is_finished(j)
                                       else j["started_time"]))


# -- JSON for scripts (README.md, "Output for scripts") ------------------------------------------
# The node's own JSON (AIStore's dload.JobInfo and StatusResp), with the fields it leaves out
# when empty filled in, so that a script finds every documented field in every answer.
def job_json(job: dict[str, Any]) -> dict[str, Any]:
    """One job of the list: AIS's JobInfo fields (and `waiting`) in a fixed order."""
    out = {"waiting": ""}
    out.update((k, v) for k, v in job.items() if k not in STATUS_LISTS)
    return _ordered(out, JOB_FIELDS)


def status_json(st: dict[str, Any], verbose: bool) -> dict[str, Any]:
    """One job's status: the job, its files in flight and, with `verbose`, its errors and
    recently finished files (the node's status with only_active_tasks off)."""
    lists = STATUS_LISTS if verbose else STATUS_LISTS[:1]
    out = {**job_json(st), **{name: st.get(name) or [] for name in lists}}
    return _ordered(out, JOB_FIELDS + lists)


JOB_FIELDS = ("id", "xaction_id", "description", "started_time", "finished_time", "finished_cnt",
              "scheduled_cnt", "skipped_cnt", "error_cnt", "total", "all_dispatched", "aborted",
              "waiting")
STATUS_LISTS = ("current_tasks", "download_errors", "finished_tasks")


def _ordered(d: dict[str, Any], first: tuple[str, ...]) -> dict[str, Any]:
    """`first` in its order, then whatever else the node sent."""
    return {**{k: d[k] for k in first if k in d}, **d}
