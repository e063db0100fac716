"""Downloading one object into its work file: plan (fresh / resume / unchanged) → stream →
verify → hand back for commit. Retries transient failures; a retry resumes from the bytes
already on disk when the source honours `Range` + `If-Range`."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import xxhash

from aisdl.config import RetryPolicy
from aisdl.engine.limits import TokenBucket
from aisdl.engine.retry import backoff_delay, should_retry
from aisdl.errors import SourceError
from aisdl.sources.base import SourceObject
from aisdl.sources.registry import Sources

log = logging.getLogger("aisdl.engine")
CHUNK = 256 * 1024


class TaskEvents(Protocol):
    """How a transfer reports itself; accounting lives on the other side."""

    def started(self, offset: int, total: int | None) -> None: ...
    def advanced(self, nbytes: int) -> None: ...


@dataclass
class Fetched:
    unchanged: bool
    size: int = 0
    cksum: str = ""
    custom: dict[str, str] = field(default_factory=dict)


@dataclass
class FetchRequest:
    link: str
    work: Path
    stored: SourceObject | None = None       # validators of our current copy, if any
    headers: dict[str, list[str]] = field(default_factory=dict)
    timeout: float | None = None
    throttle: TokenBucket | None = None


def _sidecar(work: Path) -> Path:
    return work.with_name(work.name + ".validator")


def discard(work: Path) -> None:
    work.unlink(missing_ok=True)
    _sidecar(work).unlink(missing_ok=True)


class Fetcher:
    def __init__(self, sources: Sources, policy: RetryPolicy) -> None:
        self.sources = sources
        self.policy = policy

    async def fetch(self, req: FetchRequest, events: TaskEvents) -> Fetched:
        failures = 0
        while True:
            before = _size(req.work)
            try:
                return await self._attempt(req, events)
            except SourceError as err:
                if _size(req.work) > before:
                    failures = 0  # bytes arrived: the source is alive, renew the budget
                if not should_retry(self.policy, failures, err):
                    discard(req.work)
                    raise
                delay = backoff_delay(self.policy, failures, err)
                log.info("retrying %s in %.2fs: %s", req.link, delay, err.message)
                failures += 1
                await asyncio.sleep(delay)

    async def _attempt(self, req: FetchRequest, events: TaskEvents) -> Fetched:
        start, if_range = _resume_point(req.work)
        source = self.sources.for_link(req.link)
        async with source.open(req.link, start=start, if_range=if_range, stored=req.stored,
                                    headers=req.headers, timeout=req.timeout) as obj:
            if obj.not_modified or (req.stored is not None and not start
                                    and req.stored.same_as(obj.meta)):
                return Fetched(unchanged=True)
            validator = obj.meta.etag and f'"{obj.meta.etag}"' or obj.meta.last_modified
            if obj.offset == 0:
                _sidecar(req.work).write_text(validator or "")
            events.started(obj.offset, obj.meta.size)
            chunk = req.throttle.chunk_size if req.throttle else CHUNK
            with open(req.work, "r+b" if obj.offset else "wb") as f:
                f.seek(obj.offset)
                f.truncate()
                async for data in obj.chunks(chunk):
                    f.write(data)
                    events.advanced(len(data))
                    if req.throttle:
                        req.throttle.charge(len(data))
                        await req.throttle.wait_ready()
            meta = obj.meta
        size, cksum = await asyncio.get_running_loop().run_in_executor(
            None, _verify, req.work, meta)
        _sidecar(req.work).unlink(missing_ok=True)
        return Fetched(unchanged=False, size=size, cksum=cksum, custom=meta.custom(req.link))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _resume_point(work: Path) -> tuple[int, str | None]:
    """Bytes already on disk and the validator to send as If-Range, or (0, None)."""
    size = _size(work)
    try:
        validator = _sidecar(work).read_text()
    except FileNotFoundError:
        return 0, None
    return (size, validator) if size and validator else (0, None)


def _verify(work: Path, meta: SourceObject) -> tuple[int, str]:
    """Size and xxhash of the finished work file, checked against what the source promised."""
    xx, md5 = xxhash.xxh64(), hashlib.md5() if meta.md5 else None
    size = 0
    with open(work, "rb") as f:
        while data := f.read(4 << 20):
            size += len(data)
            xx.update(data)
            if md5:
                md5.update(data)
    if meta.size is not None and size != meta.size:
        discard(work)
        raise SourceError(f"got {size} bytes, the source announced {meta.size}", transient=True)
    if md5 and md5.hexdigest() != meta.md5:
        discard(work)
        raise SourceError("MD5 of the downloaded bytes does not match the source's", transient=True)
    return size, xx.hexdigest()
