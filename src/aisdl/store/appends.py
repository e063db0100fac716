"""Open appends: what a handle of `PUT ?append_type=append` names until its flush.

AIS packs the work file's path and the checksum state into the handle it gives the client; a
path from a client is a path we would have to trust. Here a handle is a random token that names
an entry of this table, which holds the work file, its size and its running XXH64. The table
lives in memory: a node that restarts forgets its handles, and its start-up removes their work
files (`Store.clean_work`).

Bounded three ways, so abandoned appends cannot fill a disk: at most `max_open` handles, each at
most the node's object-size limit, each dropped (work file and all) once idle for
`idle_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from aisdl.errors import AisdlError, BadRequest
from aisdl.models import Bucket

MAX_OPEN_APPENDS = 1024
APPEND_IDLE_TIMEOUT = 3600.0  # seconds; a writer that pauses longer starts over


class TooManyAppends(AisdlError):
    status = 429


@dataclass
class OpenAppend:
    bck: Bucket
    name: str
    work: Path
    size: int
    digest: xxhash.xxh64
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    busy: int = 0  # requests holding the entry: it is not expired under them
    closed: bool = False  # flushed or expired while a request waited for `lock`


class Appends:
    """The open appends of one node. Used on the event loop only."""

    def __init__(self, max_open: int = MAX_OPEN_APPENDS,
                 idle_timeout: float = APPEND_IDLE_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_open = max_open
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._open: dict[str, OpenAppend] = {}

    def __len__(self) -> int:
        return len(self._open)

    def check_room(self) -> None:
        """Before a new append writes anything: refuse when `max_open` are open."""
        if len(self._open) >= self.max_open:
            raise TooManyAppends(f"too many open appends ({self.max_open}): flush or abandon"
                                 " some (an idle one is dropped after"
                                 f" {self.idle_timeout:g}s), then try again")

    def open(self, entry: OpenAppend) -> str:
        self.check_room()
        handle = secrets.token_urlsafe(18)
        entry.last_used = self._clock()
        self._open[handle] = entry
        return handle

    def take(self, handle: str, bck: Bucket, name: str) -> OpenAppend:
        """The entry of a handle, held (`busy`) until `release`; 400 when the handle is unknown
        or names another object."""
        entry = self._open.get(handle)
        if entry is None:
            raise BadRequest(f"unknown or expired append handle {handle[:64]!r} (a handle lasts"
                             " until its flush, an idle time of"
                             f" {self.idle_timeout:g}s, or a node restart)")
        if (entry.bck, entry.name) != (bck, name):
            raise BadRequest(f"append handle {handle[:64]!r} belongs to"
                             f" {entry.bck.cname}/{entry.name}, not {bck.cname}/{name}")
        entry.busy += 1
        return entry

    def check_open(self, entry: OpenAppend, handle: str) -> None:
        """Under the entry's lock: it was not flushed or dropped while the request waited."""
        if entry.closed:
            raise BadRequest(f"unknown or expired append handle {handle[:64]!r} (flushed or"
                             " dropped while this request waited)")

    def release(self, entry: OpenAppend) -> None:
        entry.busy -= 1
        entry.last_used = self._clock()

    def close(self, handle: str, entry: OpenAppend) -> None:
        entry.closed = True
        self._open.pop(handle, None)

    def expired(self) -> list[OpenAppend]:
        """Remove and return the entries idle for longer than `idle_timeout`."""
        now = self._clock()
        gone = [h for h, e in self._open.items()
                if not e.busy and now - e.last_used > self.idle_timeout]
        out = [self._open.pop(h) for h in gone]
        for entry in out:
            entry.closed = True
        return out
