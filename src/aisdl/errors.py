"""Errors a user can cause, each with a message fit to print.

    AisdlError                 base: message + HTTP status (+ AIS tcode)
    ├── BadRequest (400)       also a ValueError: malformed JSON, template, name, limit ...
    ├── NotFound (404)         also a FileNotFoundError: bucket, object, job
    ├── Conflict (409)         bucket exists; name collides with a directory
    ├── TooLarge (413)         a request body over the node's bound
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
import json
import re
from typing import Any


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


class NotSupported(AisdlError):
    """A valid AIS request this node does not carry out (AIS's feature, not ours)."""

    status = 501


class Conflict(AisdlError):
    status = 409


class TooLarge(AisdlError):
    status = 413


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


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(raw: bytes, what: str) -> Any:
    """A JSON request body, or BadRequest naming `what`: invalid UTF-8, a syntax error, `NaN` or
    `Infinity` (not JSON), an integer too long to read, nesting too deep to parse (the parser
    recurses: 100,000 `[`s would otherwise surface as a RecursionError, a 500), or a lone
    surrogate (`"\\ud800"`: text that no file name, database, URL or header can hold)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{what} is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    try:
        body = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() of a number over 4,300 digits
        raise BadRequest(f"invalid JSON in {what}: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):  # only an escape makes one: UTF-8 cannot encode them
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequest(f"{what} is not valid Unicode: it holds a lone surrogate"
                             f" ({exc.object[exc.start]!r}, an unpaired \\ud800-\\udfff"
                             " escape)") from None
    return body


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


class SourceError(Exception):
    """A failed fetch. `transient` says whether another attempt may succeed."""

    def __init__(
        self, message: str, *, transient: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
