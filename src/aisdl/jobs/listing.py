"""Items of a backend job: the remote bucket's listing, streamed page by page, and for `--sync`
merged with our copies so that objects gone at the source are evicted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from aisdl.jobs.request import Item, JobSpec
from aisdl.models import PROVIDER_SCHEME, Bucket
from aisdl.sources.base import SourceObject
from aisdl.store.store import Store

PAGE = 1000


class Lister(Protocol):
    def list(self, bucket: Bucket, prefix: str) -> AsyncIterator[
        list[tuple[str, SourceObject]]]: ...


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
