"""Job rows in the node's database: counters, resume cursor, per-file errors, recent tasks.
Every function runs inside a `Database.run` transaction."""

from __future__ import annotations

import bisect
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

RECENT_TASKS = 1000  # finished-task infos kept per job


@dataclass
class Counters:
    finished: int = 0   # downloaded + skipped
    skipped: int = 0
    errors: int = 0


@dataclass
class Cursor:
    """Which items of a job are done: every index below `low`, plus those in `above`.

    Items complete out of order, but dispatch is in order with a bounded window, so `above`
    stays as small as the number of tasks in flight."""

    low: int = 0
    above: set[int] = field(default_factory=set)

    def mark_all(self, indexes: list[int]) -> None:
        """These items are done. The new low is found by a binary search over the sorted
        indexes above it, not one step per index (a job marks every file it ends)."""
        above = self.above
        above.update(indexes)
        if self.low not in above:
            return
        ordered = sorted(above)
        ordered = ordered[bisect.bisect_left(ordered, self.low):]  # below it: done already
        # Distinct, so ordered[k] - k only grows; it is `low` while the indexes are contiguous
        run = bisect.bisect_right(range(len(ordered)), 0, key=lambda k: ordered[k] - k - self.low)
        self.low += run
        self.above = set(ordered[run:])

    def done(self, index: int) -> bool:
        return index < self.low or index in self.above

    def to_json(self) -> str:
        return json.dumps({"low": self.low, "above": sorted(self.above)})

    @classmethod
    def from_json(cls, text: str) -> Cursor:
        d = json.loads(text or "{}")
        return cls(d.get("low", 0), set(d.get("above", [])))


@dataclass(frozen=True)
class TaskInfo:
    name: str
    downloaded: int
    total: int
    start_ns: int
    end_ns: int


def insert_job(conn: sqlite3.Connection, job_id: str, spec_json: str, description: str,
               total: int, started_ns: int) -> None:
    conn.execute("INSERT INTO jobs (id, spec, description, started, total) VALUES (?,?,?,?,?)",
                 (job_id, spec_json, description, started_ns, total))


# A finished task as saved: name, downloaded, total, start_ns, end_ns (a plain tuple: a job
# makes one per file)
TaskRow = tuple[str, int, int, int, int]


def save_progress(conn: sqlite3.Connection, job_id: str, counters: Counters, cursor: Cursor,
                  errors: Iterable[tuple[str, str]], tasks: Iterable[TaskRow]) -> None:
    conn.executemany("INSERT INTO job_errors (job_id, name, error) VALUES (?,?,?)",
                     [(job_id, n, e) for n, e in errors])
    rows = [(job_id, *t) for t in tasks]
    if rows:
        conn.executemany("INSERT INTO job_tasks VALUES (?,?,?,?,?,?)", rows)
        conn.execute("DELETE FROM job_tasks WHERE job_id = ? AND rowid <= (SELECT rowid FROM "
                     "job_tasks WHERE job_id = ? ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                     (job_id, job_id, RECENT_TASKS))
    conn.execute("UPDATE jobs SET finished_cnt = ?, skipped = ?, errors = ?, cursor = ? "
                 "WHERE id = ?", (counters.finished, counters.skipped, counters.errors,
                                  cursor.to_json(), job_id))


def mark_finished(conn: sqlite3.Connection, job_id: str, finished_ns: int, aborted: bool,
                  all_dispatched: bool) -> None:
    conn.execute("UPDATE jobs SET finished = ?, aborted = ?, all_dispatched = ? WHERE id = ?",
                 (finished_ns, int(aborted), int(all_dispatched), job_id))


def mark_aborted(conn: sqlite3.Connection, job_id: str) -> None:
    """The abort is decided (a job that has finished meanwhile stays as it ended)."""
    conn.execute("UPDATE jobs SET aborted = 1 WHERE id = ? AND finished = 0", (job_id,))


def fail_job(conn: sqlite3.Connection, job_id: str, name: str, error: str,
             finished_ns: int) -> None:
    """The job cannot run at all: one error of the job itself, and it is over."""
    conn.execute("INSERT INTO job_errors (job_id, name, error) VALUES (?,?,?)",
                 (job_id, name, error))
    conn.execute("UPDATE jobs SET errors = errors + 1, finished = ? WHERE id = ?",
                 (finished_ns, job_id))


def get_job(conn: sqlite3.Connection, job_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row


def all_jobs(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM jobs ORDER BY started").fetchall()


def job_states(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every job without its spec (which may list millions of objects), oldest first; the
    destination bucket as `provider` and `bucket`."""
    return conn.execute(
        "SELECT id, description, started, finished, aborted, finished_cnt, skipped, errors,"
        " json_extract(spec, '$.bucket.provider') AS provider,"
        " json_extract(spec, '$.bucket.name') AS bucket FROM jobs ORDER BY started").fetchall()


def unfinished_jobs(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM jobs WHERE finished = 0 ORDER BY started").fetchall()


def job_errors(conn: sqlite3.Connection, job_id: str) -> list[tuple[str, str]]:
    rows = conn.execute("SELECT name, error FROM job_errors WHERE job_id = ? ORDER BY name",
                        (job_id,))
    return [(r[0], r[1]) for r in rows]


def recent_tasks(conn: sqlite3.Connection, job_id: str) -> list[TaskInfo]:
    rows = conn.execute("SELECT name, downloaded, total, start_ns, end_ns FROM job_tasks "
                        "WHERE job_id = ? ORDER BY rowid", (job_id,))
    return [TaskInfo(*r) for r in rows]


def delete_job(conn: sqlite3.Connection, job_id: str) -> None:
    for table, key in (("jobs", "id"), ("job_errors", "job_id"), ("job_tasks", "job_id")):
        conn.execute(f"DELETE FROM {table} WHERE {key} = ?", (job_id,))  # noqa: S608
