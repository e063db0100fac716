"""The node's SQLite database: one connection, owned by one thread, so the event loop never blocks
on disk and every write is serialized. Callers hand it functions to run in a transaction."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from aisdl.errors import DatabaseRefused

T = TypeVar("T")
# What makes the database refuse a write for a while: a lock held elsewhere (past sqlite3's 5 s
# wait), a full disk, an I/O error or a read-only remount of the disk under it.
_REFUSALS = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL,
             sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY}

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    provider TEXT NOT NULL, name TEXT NOT NULL, props TEXT NOT NULL, created INTEGER NOT NULL,
    PRIMARY KEY (provider, name));
CREATE TABLE IF NOT EXISTS objects (
    provider TEXT NOT NULL, bucket TEXT NOT NULL, name TEXT NOT NULL,
    size INTEGER NOT NULL, version TEXT NOT NULL, cksum_type TEXT NOT NULL, cksum TEXT NOT NULL,
    atime INTEGER NOT NULL, custom TEXT NOT NULL,
    PRIMARY KEY (provider, bucket, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, spec TEXT NOT NULL, description TEXT NOT NULL,
    started INTEGER NOT NULL, finished INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL, scheduled INTEGER NOT NULL DEFAULT 0,
    finished_cnt INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0, all_dispatched INTEGER NOT NULL DEFAULT 0,
    aborted INTEGER NOT NULL DEFAULT 0, cursor TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS job_errors (
    job_id TEXT NOT NULL, name TEXT NOT NULL, error TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS job_errors_by_job ON job_errors (job_id);
CREATE TABLE IF NOT EXISTS job_tasks (
    job_id TEXT NOT NULL, name TEXT NOT NULL, downloaded INTEGER NOT NULL, total INTEGER NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS job_tasks_by_job ON job_tasks (job_id);
"""


class TransactionObserver(Protocol):
    """Told of each transaction on the database thread, as it ends (the node's metrics)."""

    def transaction(self, seconds: float, refused: bool) -> None: ...


class Database:
    def __init__(self, path: Path) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self.conn: sqlite3.Connection = self._pool.submit(self._open, path).result()
        self.observer: TransactionObserver | None = None
        self.waiting = 0  # calls handed to the database thread and not yet done (its queue)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        # Created the owner's only: it keeps the jobs' links and request headers (credentials);
        # SQLite gives its -wal and -shm files the database's own mode.
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:  # worded as SQLite words the same failure
            raise sqlite3.OperationalError(
                f"unable to open database file {path}: {exc.strerror or exc}") from exc
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        return conn

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], T],
                        then: Callable[[T], None] | None = None) -> T:
        began = time.perf_counter()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self.conn)
                self.conn.execute("COMMIT")  # may fail too (a full disk): nothing of fn stays
            except BaseException:
                if self.conn.in_transaction:  # (some failures have rolled it back already)
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
            if self.observer is not None:
                self.observer.transaction(time.perf_counter() - began, code in _REFUSALS)
            if code in _REFUSALS:
                raise DatabaseRefused(f"the node's database refused the write ({exc});"
                                      " try again later", full=code == sqlite3.SQLITE_FULL) from exc
            raise
        if self.observer is not None:
            self.observer.transaction(time.perf_counter() - began, False)
        if then is not None:
            then(result)
        return result

    async def run(self, fn: Callable[[sqlite3.Connection], T],
                  then: Callable[[T], None] | None = None) -> T:
        """Run `fn(conn)` in one transaction on the database thread, then `then(result)` on
        that thread once the transaction has committed (in the order the calls were made)."""
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            return await loop.run_in_executor(self._pool, self._in_transaction, fn, then)
        finally:
            self.waiting -= 1

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Same as `run`, for start-up code that has no loop yet."""
        return self._pool.submit(self._in_transaction, fn).result()

    def close(self) -> None:
        self._pool.submit(self.conn.close).result()
        self._pool.shutdown()
