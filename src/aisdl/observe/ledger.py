"""The node's accounting: the one place its metrics are counted (`GET /metrics`, api/metrics.py
reads it at scrape time).

It is fed where things become true, never by increments spread through the code: a job's
outcomes once their batch has committed (`recorded`, on the database thread), a chunk's
retries as its fetch processes report them (`retried`, when the chunk ends; a chunk still
running is read from its watch), and every transaction of the database (`transaction`). Jobs
keep their own counts (jobs/run.py); a job's tally here starts from them, so its figures are
the job's own, and a removed job's tally goes (`forget`). Nothing here touches the database:
a scrape reads memory only.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import Histogram

from aisdl.engine.chunks import Row

RATE_WINDOW = 10.0  # seconds over which files/s, bytes/s and the event loop's lag are shown
OUTCOMES = ("downloaded", "skipped", "evicted", "error")
ERROR_CLASSES = ("not_found", "denied", "http_4xx", "http_5xx", "network", "blocked", "verify",
                 "too_large", "name", "storage", "listing", "internal", "other")
# Seconds a transaction of the database takes, BEGIN to COMMIT (a batch of outcomes is one)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0, 10.0)

Clock = Callable[[], float]
_STATUS = re.compile(r"with (\d{3}) status code")
# (class, what its messages say): the wordings of sources/, engine/ and store/, in order
_CLASSES = tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in (
    ("listing", r"^listing failed"),
    ("internal", r"internal error|counts do not add up"),
    ("not_found", r"does not exist"),
    ("blocked", r"^dload: "),
    ("too_large", r"larger than the node's limit"),
    ("verify", r"the source announced|of the downloaded bytes|checksum|the listing says"
               r"|is not the listing's|the source changed during"),
    ("network", r"timed out|download timeout|cannot connect|connection lost|cannot resolve"
                r"|TLS certificate|slower than|too many redirects|request failed|different range"
                r"|no valid HTTP status"),
    ("name", r"invalid object name|invalid link|invalid cloud link"),
    ("storage", r"cannot write the object|cannot store|cannot record|no room|disk"),
))


def error_class(message: str) -> str:
    """The class of a file's error (one of ERROR_CLASSES), from its message."""
    if status := _STATUS.search(message):
        code = int(status.group(1))
        return ("not_found" if code == 404 else "denied" if code in (401, 403)
                else "http_5xx" if code >= 500 else "http_4xx")
    for name, pattern in _CLASSES:
        if pattern.search(message):
            return name
    return "other"


class RateWindow:
    """A rate over the last `window` seconds, from samples of a running total."""

    def __init__(self, window: float = RATE_WINDOW, clock: Clock = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self.samples: deque[tuple[float, float]] = deque()

    def sample(self, total: float) -> None:
        now = self.clock()
        self.samples.append((now, total))
        # Keep one sample at or beyond the window's start: the rate spans the whole window.
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()

    def rate(self) -> float:
        """Per second over the window: from the last sample at or before its start (or the
        first one) to the newest; 0 with nothing recent, or when the total fell."""
        if len(self.samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        if t1 <= t0 or t1 < self.clock() - self.window:
            return 0.0
        return max(0.0, (v1 - v0) / (t1 - t0))


class WorstWindow:
    """The largest value seen over the last `window` seconds (the event loop's lag)."""

    def __init__(self, window: float = RATE_WINDOW, clock: Clock = time.monotonic) -> None:
        self.window, self.clock = window, clock
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, value: float) -> None:
        now = self.clock()
        self.samples.append((now, value))
        while self.samples and self.samples[0][0] < now - self.window:
            self.samples.popleft()

    def worst(self) -> float:
        now = self.clock()
        return max((v for t, v in self.samples if t >= now - self.window), default=0.0)


def _add(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


@dataclass
class Tally:
    """Figures of the whole node or of one job."""

    files: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    bytes: int = 0        # of objects downloaded (placed and recorded)
    download_ns: int = 0  # their transfer time, start to end (AIS's dl.ns.total)
    errors: dict[str, int] = field(default_factory=dict)   # by class
    retries: dict[str, int] = field(default_factory=dict)  # by cause

    @property
    def done(self) -> int:
        return sum(self.files.values())


@dataclass
class JobTally(Tally):
    bucket: str = ""  # the destination bucket, as AIS names it (`ais://b`)
    files_rate: RateWindow = field(default_factory=RateWindow)
    bytes_rate: RateWindow = field(default_factory=RateWindow)
    sampled_until: float = 0.0  # a job that ended is sampled one window more (its rates fall)


@dataclass
class BucketTally:
    """AIS's downloader counters of one destination bucket (dl.size, dl.ns.total)."""

    bytes: int = 0
    download_ns: int = 0


class Ledger:
    """The node's figures since it started, and those of each job it has run, until removed."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()  # commits land on the database thread, scrapes on the loop
        self.node = Tally()
        self.buckets: dict[str, BucketTally] = {}
        self.jobs: dict[str, JobTally] = {}
        self.files_rate = RateWindow(clock=clock)
        self.bytes_rate = RateWindow(clock=clock)
        self.loop_lag = WorstWindow(clock=clock)
        self.refused = 0  # transactions the database refused (tried again, or answered 503/507)
        self.commit_seconds = Histogram(
            "aisdl_database_transaction_seconds", "Seconds a transaction of the node's database"
            " takes, BEGIN to COMMIT (a batch of a job's outcomes is one)", buckets=COMMIT_BUCKETS,
            registry=None)

    # -- fed by the jobs and the database ---------------------------------------------------
    def open_job(self, job_id: str, bucket: str, finished: int, skipped: int,
                 errors: int) -> JobTally:
        """A job starts or resumes in this node: its tally starts from the job's counts."""
        with self._lock:
            tally = self.jobs.get(job_id)
            if tally is None:
                tally = self.jobs[job_id] = JobTally(
                    bucket=bucket, files_rate=RateWindow(clock=self.clock),
                    bytes_rate=RateWindow(clock=self.clock))
                tally.files.update(downloaded=finished - skipped, skipped=skipped, error=errors)
            return tally

    def recorded(self, tally: JobTally, rows: Iterable[Row]) -> None:
        """A job's batch of outcomes has committed (on the database thread)."""
        files = dict.fromkeys(OUTCOMES, 0)
        errors: dict[str, int] = {}
        size = ns = 0
        for row in rows:
            if row.error:
                files["error"] += 1
                cls = error_class(row.error)
                errors[cls] = errors.get(cls, 0) + 1
            elif row.skipped:
                files["skipped"] += 1
            elif row.placed:
                files["downloaded"] += 1
                size += row.size
                ns += max(0, row.end_ns - row.start_ns)
            else:  # nothing fetched, nothing failed: an object the source no longer has
                files["evicted"] += 1
        with self._lock:
            for t in (tally, self.node):
                _add(t.files, files)
                _add(t.errors, errors)
                t.bytes += size
                t.download_ns += ns
            bucket = self.buckets.setdefault(tally.bucket, BucketTally())
            bucket.bytes += size
            bucket.download_ns += ns

    def retried(self, tally: JobTally, retries: Mapping[str, int]) -> None:
        """A chunk of the job has ended: its fetches' retries, by cause."""
        if retries:
            with self._lock:
                _add(tally.retries, retries)
                _add(self.node.retries, retries)

    def job_bytes(self, job_id: str) -> int | None:
        """Bytes of the job's objects recorded since the node started (None: not known here)."""
        with self._lock:
            tally = self.jobs.get(job_id)
            return tally.bytes if tally is not None else None

    def forget(self, job_id: str) -> None:
        """The job is removed: its series go (the node's totals keep what it did)."""
        with self._lock:
            self.jobs.pop(job_id, None)

    def transaction(self, seconds: float, refused: bool) -> None:
        """Every transaction of the node's database (TransactionObserver, db.py)."""
        self.commit_seconds.observe(seconds)
        if refused:
            with self._lock:
                self.refused += 1

    # -- sampled once a second --------------------------------------------------------------
    def sample(self, in_flight_bytes: Mapping[str, int], lag: float) -> None:
        """Samples for the rates of the node and of the jobs that run (`in_flight_bytes` has
        them all; bytes in flight count as they arrive), and the loop's lag."""
        now = self.clock()
        with self._lock:
            for job_id, tally in self.jobs.items():
                if job_id in in_flight_bytes:
                    tally.sampled_until = now + tally.files_rate.window
                elif now > tally.sampled_until:  # its rates have fallen to 0: nothing to do
                    continue
                tally.files_rate.sample(tally.done)
                tally.bytes_rate.sample(tally.bytes + in_flight_bytes.get(job_id, 0))
            self.files_rate.sample(self.node.done)
            self.bytes_rate.sample(self.node.bytes + sum(in_flight_bytes.values()))
        self.loop_lag.add(lag)

    def snapshot(self) -> tuple[Tally, dict[str, BucketTally], dict[str, JobTally]]:
        """Consistent copies for a scrape."""
        with self._lock:
            node = Tally(dict(self.node.files), self.node.bytes, self.node.download_ns,
                         dict(self.node.errors), dict(self.node.retries))
            buckets = {b: BucketTally(t.bytes, t.download_ns) for b, t in self.buckets.items()}
            jobs = {j: JobTally(dict(t.files), t.bytes, t.download_ns, dict(t.errors),
                                dict(t.retries), t.bucket, t.files_rate, t.bytes_rate)
                    for j, t in self.jobs.items()}
        return node, buckets, jobs
