"""Progress bars for a running job: one bar of files and one bar per file in flight, redrawn
from each polled status (the node does the accounting; this only renders).

The bar of files fills with the files that are in the bucket: downloaded, or skipped as
unchanged (counted as downloaded, as in `Done: 3 files downloaded, skipped: 1`). Failed files
are counted beside it, never in it: a job with errors ends short of 100%.

Bars redraw only on a terminal; elsewhere (a pipe, a file) rich prints them once, at the end,
without escape codes. `--no-color` / NO_COLOR leave out every text style, bold included."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from aisdl.cli.jobview import display_total, is_finished
from aisdl.client import Client
from aisdl.units import format_amount, format_rate


class AmountColumn(ProgressColumn):
    """`64/141` on the files bar, `0.4/1.8 GiB` (in the --units asked for) on a file's bar."""

    def __init__(self, units: str) -> None:
        super().__init__()
        self.units = units

    def render(self, task: Task) -> Text:
        if task.fields.get("kind") == "count":
            return Text(f"{int(task.completed)}/{int(task.total or 0)}")
        total = None if task.total is None else int(task.total)
        return Text(format_amount(int(task.completed), total, self.units),
                    style="progress.download")


class CountsColumn(ProgressColumn):
    """`skipped: 3, failed: 2` on the files bar; failures stand out (in color)."""

    def __init__(self, color: bool) -> None:
        super().__init__()
        self.failed_style = "bold red" if color else ""

    def render(self, task: Task) -> Text:
        if task.fields.get("kind") != "count":
            return Text("")
        failed = int(task.fields["failed"])
        text = Text(f"skipped: {task.fields['skipped']}, ")
        text.append(f"failed: {failed}", style=self.failed_style if failed else "")
        return text


class FileOnly(ProgressColumn):
    """Speed and ETA make sense for bytes of a file, not for the count of files."""

    def __init__(self, inner: ProgressColumn) -> None:
        super().__init__()
        self.inner = inner

    def render(self, task: Task) -> Text:
        if task.fields.get("kind") == "count":
            return Text("")
        rendered = self.inner.render(task)
        return rendered if isinstance(rendered, Text) else Text(str(rendered))


class SpeedColumn(ProgressColumn):
    """Speed in the units the rest of the output uses (`1.4MiB/s`, `1.5MB/s`, `1468006B/s`)."""

    def __init__(self, units: str) -> None:
        super().__init__()
        self.units = units

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else format_rate(speed, self.units))


def _bars(console: Console, units: str = "") -> Progress:
    return Progress(
        TextColumn("{task.description}"), AmountColumn(units), BarColumn(bar_width=None),
        TaskProgressColumn(), FileOnly(TimeRemainingColumn()), FileOnly(SpeedColumn(units)),
        CountsColumn(color=not console.no_color),
        console=console, expand=True,
    )


class JobBars:
    """Keeps rich tasks in step with a job's status snapshots."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.total_bar: TaskID | None = None
        self.files: dict[str, TaskID] = {}

    def update(self, st: dict[str, Any]) -> None:
        total = display_total(st)
        if total > 1:
            label = "Files downloaded:" if int(st["total"]) > 0 else "Files downloaded (estimated):"
            skipped, failed = int(st["skipped_cnt"]), int(st["error_cnt"])
            if self.total_bar is None:
                self.total_bar = self.progress.add_task(label, total=total, kind="count",
                                                        skipped=skipped, failed=failed)
            self.progress.update(self.total_bar, completed=int(st["finished_cnt"]), total=total,
                                 skipped=skipped, failed=failed)
        current = {t["name"]: t for t in st.get("current_tasks") or []}
        for name in list(self.files):
            if name not in current:
                self.progress.remove_task(self.files.pop(name))
        for name, t in current.items():
            done, size = int(t["downloaded"]), int(t.get("total") or 0)
            if name not in self.files:
                self.files[name] = self.progress.add_task(name, total=size or None, kind="bytes")
            self.progress.update(self.files[name], completed=done, total=size or None)


def show_progress(client: Client, job_id: str, refresh: float, units: str = "",
                  no_color: bool = False, stderr: bool = False) -> dict[str, Any]:
    """Draw bars until the job finishes (on stderr when stdout is kept for JSON); return the
    job's final status."""
    console = Console(stderr=stderr, no_color=no_color or None)
    with _bars(console, units) as progress:
        bars = JobBars(progress)
        while True:
            st = client.download_status(job_id, only_active=True)
            bars.update(st)
            if is_finished(st):
                break
            time.sleep(refresh)
    return client.download_status(job_id)
