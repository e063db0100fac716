"""Progress bars for a running job: one bar of files and one bar per file in flight, redrawn
from each polled status (the node does the accounting; this only renders).

The bar of files fills with the files that are in the bucket: downloaded, or skipped as
unchanged (counted as downloaded, as in `Done: 3 files downloaded, skipped: 1`). Failed files
are counted beside it, never in it: a job with errors ends short of 100%."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
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
from aisdl.units import iec


class AmountColumn(ProgressColumn):
    """`64/141` on the files bar, `431.7/1.8 GiB` on a file's bar."""

    _bytes = DownloadColumn(binary_units=True)

    def render(self, task: Task) -> Text:
        if task.fields.get("kind") == "count":
            return Text(f"{int(task.completed)}/{int(task.total or 0)}")
        return self._bytes.render(task)


class CountsColumn(ProgressColumn):
    """`skipped: 3, failed: 2` on the files bar; failures stand out."""

    def render(self, task: Task) -> Text:
        if task.fields.get("kind") != "count":
            return Text("")
        failed = int(task.fields["failed"])
        text = Text(f"skipped: {task.fields['skipped']}, ")
        text.append(f"failed: {failed}", style="bold red" if failed else "")
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
    """Speed in binary units, as the rest of the CLI prints sizes (`1.4MiB/s`)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{iec(speed, 1)}/s")


def _bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), AmountColumn(), BarColumn(bar_width=None),
        TaskProgressColumn(), FileOnly(TimeRemainingColumn()), FileOnly(SpeedColumn()),
        CountsColumn(),
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


def show_progress(client: Client, job_id: str, refresh: float,
                  console: Console | None = None) -> dict[str, Any]:
    """Draw bars until the job finishes; return its final status."""
    console = console or Console(stderr=False)
    with _bars(console) as progress:
        bars = JobBars(progress)
        while True:
            st = client.download_status(job_id, only_active=True)
            bars.update(st)
            if is_finished(st):
                break
            time.sleep(refresh)
    return client.download_status(job_id)
