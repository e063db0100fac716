"""Items of a backend job: the remote bucket's listing, streamed page by page, and for `--sync`
merged with our copies so that objects gone at the source are evicted. With `--latest`, each
object we already hold is described by the source itself (one HEAD: its version or
generation, which no listing carries) rather than by the listing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Protocol

from aisdl.errors import SourceError
from aisdl.jobs.request import Item, JobSpec
from aisdl.models import PROVIDER_SCHEME, Bucket
from aisdl.sources.base import SourceObject
from aisdl.store.store import Store

PAGE = 1000
LATEST_BATCH = 256  # listed names looked up in the catalog at once (--latest)
LATEST_HEADS = 16   # HEADs in flight at once (--latest): one per object we hold


class Lister(Protocol):
    def list(self, bucket: Bucket, prefix: str) -> AsyncIterator[
        list[tuple[str, SourceObject]]]: ...

    async def head(self, link: str) -> SourceObject: ...


def source_link(bucket: Bucket, name: str) -> str:
    return f"{PROVIDER_SCHEME[bucket.provider]}://{bucket.name}/{name}"


async def _remote(spec: JobSpec, lister: Lister) -> AsyncIterator[tuple[str, SourceObject]]:
    assert spec.source is not None
    async for page in lister.list(spec.source, spec.prefix):
        for name, meta in page:
            if name.endswith(spec.suffix) and not name.endswith("/"):
                yield name, meta


async def _local_from_source(spec: JobSpec, store: Store) -> AsyncIterator[str]:
    """Our objects under the prefix that were downloaded from the job's source bucket."""
    assert spec.source is not None
    origin = source_link(spec.source, "")
    after = ""
    while page := await store.list_objects(spec.bucket, spec.prefix, after, PAGE):
        for o in page:
            if o.name.endswith(spec.suffix) and o.custom.get("link", "").startswith(origin):
                yield o.name
        after = page[-1].name


async def backend_items(spec: JobSpec, lister: Lister, store: Store,
                        start: int = 0) -> AsyncIterator[Item]:
    """Items in name order (the order every provider lists in), numbered from 0; those below
    `start` were done before a restart and are not produced again."""
    items = _numbered(spec, lister, store, start)
    if spec.latest:  # after the numbering: what was done before a restart is not asked again
        items = _latest(spec, lister, store, items)
    async for item in items:
        yield item


async def _numbered(spec: JobSpec, lister: Lister, store: Store,
                    start: int) -> AsyncIterator[Item]:
    assert spec.source is not None
    index = 0
    async for name, meta, evict in _merged(spec, lister, store):
        if index >= start:
            yield Item(index, name, source_link(spec.source, name), listed=meta, evict=evict)
        index += 1


async def _merged(spec: JobSpec, lister: Lister,
                  store: Store) -> AsyncIterator[tuple[str, SourceObject | None, bool]]:
    remote = _remote(spec, lister)
    if not spec.sync:
        async for name, meta in remote:
            yield name, meta, False
        return
    local = _local_from_source(spec, store)
    r = await anext(remote, None)
    lo = await anext(local, None)
    while r is not None or lo is not None:
        if lo is None or (r is not None and r[0] <= lo):
            assert r is not None
            if lo == r[0]:
                lo = await anext(local, None)
            yield r[0], r[1], False
            r = await anext(remote, None)
        else:
            yield lo, None, True
            lo = await anext(local, None)


async def _latest(spec: JobSpec, lister: Lister, store: Store,
                  items: AsyncIterator[Item]) -> AsyncIterator[Item]:
    """`items` in order, those we hold described by a HEAD of their source. A listing says
    size and ETag; a new version with the same bytes (a re-upload to a versioned bucket, a
    new GCS generation) shows only in the object's own metadata."""
    batch: list[Item] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= LATEST_BATCH:
            for done in await _asked(spec, lister, store, batch):
                yield done
            batch = []
    for done in await _asked(spec, lister, store, batch):
        yield done


async def _asked(spec: JobSpec, lister: Lister, store: Store, batch: list[Item]) -> list[Item]:
    if not batch:
        return []
    held = await store.lookup_many(spec.bucket, [i.name for i in batch if not i.evict])
    heads = asyncio.Semaphore(LATEST_HEADS)

    async def ask(item: Item) -> Item:
        if item.evict or item.name not in held:
            return item  # a --sync eviction, or not ours yet (fetched anyway)
        async with heads:
            # A HEAD that fails leaves the listing's word: the fetch then checks the object
            # with a conditional GET and reports an error of its own if there is one.
            with contextlib.suppress(SourceError):
                return replace(item, listed=await lister.head(item.link))
        return item

    return list(await asyncio.gather(*(ask(i) for i in batch)))
