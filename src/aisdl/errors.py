"""Errors a user can cause, each with a message fit to print.

    AisdlError                 base: message + HTTP status (+ AIS tcode)
    ├── BadRequest (400)       also a ValueError: malformed JSON, template, name, limit ...
    ├── NotFound (404)         also a FileNotFoundError: bucket, object, job
    ├── Conflict (409)         bucket exists; name collides with a directory
    ├── InsufficientStorage (507)
    ├── DatabaseRefused (503, 507 when its disk is full)   worth trying again later
    └── SourceError            a fetch from a source failed (not an API error)
        ├── transient=True     worth retrying (connection errors, 5xx, 429, timeouts)
        └── transient=False    terminal (404, 403, other 4xx, blocked egress)

The API turns AisdlError into AIS error JSON with its status; the CLI prints the message and
exits 2. SourceError never leaves the engine: it becomes a per-file error of a job.
"""

from __future__ import annotations

import errno


class AisdlError(Exception):
    status = 500
    tcode = ""

    def __init__(self, message: str, *, tcode: str = "") -> None:
        super().__init__(message)
        self.message = message
        if tcode:
            self.tcode = tcode


class BadRequest(AisdlError, ValueError):
    status = 400


class NotFound(AisdlError, FileNotFoundError):
    status = 404


class Conflict(AisdlError):
    status = 409


class InsufficientStorage(AisdlError):
    status = 507


class DatabaseRefused(AisdlError):
    """The node's database cannot take a write now: another program holds its lock, or the
    disk under it is full."""

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.status = 507 if full else 503


def disk_error(exc: OSError, doing: str) -> AisdlError:
    """The disk refused: 507 when it has no room left, else a plain server error; the message
    says what was being done and what the disk said."""
    out_of_room = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return (InsufficientStorage if out_of_room else AisdlError)(f"{doing}: {exc.strerror or exc}")


class SourceError(Exception):
    """A failed fetch. `transient` says whether another attempt may succeed."""

    def __init__(
        self, message: str, *, transient: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
