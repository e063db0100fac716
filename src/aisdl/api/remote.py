"""Cloud buckets as the node shows them: known on first use, listed from the cloud with the
objects we hold marked as cached."""

from __future__ import annotations

from aiohttp import web

from aisdl.api.keys import JOBS, STORE
from aisdl.errors import AisdlError, NotFound, SourceError
from aisdl.models import Bucket, ObjectAttrs


class RemoteError(AisdlError):
    """The cloud refused or failed (credentials, network); a 4xx so clients do not retry."""

    status = 424


async def known_bucket(app: web.Application, bck: Bucket) -> None:
    """A cloud bucket becomes known to the node the first time it is used, if it exists."""
    store = app[STORE]
    if store.has_bucket(bck) or not bck.is_remote:
        return
    try:
        exists = await app[JOBS].cloud.bucket_exists(bck)
    except SourceError as exc:
        raise RemoteError(exc.message) from exc
    if not exists:
        raise NotFound(f'{bck.provider} bucket "{bck.cname}" does not exist',
                       tcode="ErrRemoteBckNotFound")
    await store.ensure_bucket(bck)


async def list_remote(app: web.Application, bck: Bucket, remote: Bucket, prefix: str,
                      after: str, limit: int) -> tuple[list[ObjectAttrs], set[str]]:
    """One page of the remote bucket's objects after `after`, and which of them `bck` holds."""
    page: list[ObjectAttrs] = []
    try:
        async for chunk in app[JOBS].cloud.list(remote, prefix, after):
            for name, meta in chunk:
                page.append(ObjectAttrs(name=name, size=meta.size or 0,
                                        version=meta.version or "", cksum=""))
            if len(page) >= limit:
                break
    except SourceError as exc:
        raise RemoteError(exc.message) from exc
    page = page[:limit]
    held = await app[STORE].lookup_many(bck, [o.name for o in page])
    return page, set(held)
