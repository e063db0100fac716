"""How a download job's status reads on a terminal (the lines of the user's document)."""

from __future__ import annotations

from typing import Any

from aisdl.units import iec

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


def status_lines(st: dict[str, Any], verbose: bool) -> list[str]:
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
            lines += [f"\t{_task_progress(t)}" for t in st["current_tasks"]]
        if st["error_cnt"] and not verbose:
            lines.append(f"Errors ({st['error_cnt']}) occurred during the download. To see"
                         f" detailed info run `ais show job download {job_id} -v`")
    if verbose and errors:
        lines.append("Errors:")
        lines += [f"\t{e['name']}: {e['error']}" for e in errors]
    elif is_finished(st) and st["error_cnt"]:
        lines.append(f"To see detailed info run `ais show job download {job_id} -v`")
    return lines


def _task_progress(t: dict[str, Any]) -> str:
    done, total = int(t["downloaded"]), int(t.get("total") or 0)
    where = f" (on {t['worker']})" if t.get("worker") else ""
    if total <= 0:
        return f"{t['name']}: {iec(done)}{where}"
    return f"{t['name']}: {iec(done)}/{iec(total)} ({100 * done / total:.2f}%){where}"


def job_status_word(st: dict[str, Any]) -> str:
    if st["aborted"]:
        return "Aborted"
    return "Finished" if is_finished(st) else "Running"


def sort_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Running first (oldest first), then finished ones by finish time."""
    return sorted(jobs, key=lambda j: (is_finished(j), j["finished_time"] if is_finished(j)
                                       else j["started_time"]))
