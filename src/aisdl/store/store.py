"""Buckets and objects on mountpaths, with their metadata in the node's SQLite catalog.

Object bytes live at `<mountpath>/<provider>/<bucket>/<name>` so a dataset can be read straight
from disk. Bytes first land in a work file (`<mountpath>/.work/<tag>/...`, same filesystem) and
are renamed into place in the same database transaction that records them, so nothing partial is
ever visible and the catalog never names a file that is not there.

Every rename, unlink and catalog write runs on the database thread (`Database.run`), which also
serializes them: creating `a/b` cannot race with pruning the empty directory `a`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

import msgspec
import xxhash

from aisdl.db import Database
from aisdl.errors import BadRequest, Conflict, NotFound, TooLarge, disk_error
from aisdl.models import Bucket, ObjectAttrs
from aisdl.store import archive
from aisdl.store.appends import Appends, OpenAppend
from aisdl.store.catalog_view import CatalogView
from aisdl.store.layout import WORK_DIR, Layout
from aisdl.store.paths import check_object_name
from aisdl.store.props import Props, default_props, merge_props, with_defaults

T = TypeVar("T")
log = logging.getLogger("aisdl.store")

PUT_TAG = "put"
APPEND_TAG = "append"
TRASH_TAG = "trash"
_WRITE_BUFFER = 1 << 20  # hand the disk 1 MiB at a time: one executor hop per MiB, not per chunk
_LOOKUP_BATCH = 500
_COLUMNS = "name, size, version, cksum_type, cksum, atime, custom"
_JSON = msgspec.json.Encoder()  # custom metadata: a flat dict of str, 7x faster than json

# What a listing entry is (AIS entry flags: a directory, an archive, a file inside one).
OBJECT, DIR, ARCHIVE, MEMBER = "object", "dir", "archive", "member"


class Entry(NamedTuple):
    """One entry of an object listing: a stored object, or what AIS lists besides."""

    attrs: ObjectAttrs
    kind: str


def bucket_not_found(bck: Bucket) -> NotFound:
    """The 404 AIS sends for a missing bucket (the SDK picks its exception from this text)."""
    if bck.is_remote:
        return NotFound(f'{bck.provider} bucket "{bck.cname}" does not exist',
                        tcode="ErrRemoteBckNotFound")
    return NotFound(f'bucket "{bck.cname}" does not exist', tcode="ErrBckNotFound")


def _row_to_attrs(row: sqlite3.Row) -> ObjectAttrs:
    return ObjectAttrs(
        name=row["name"], size=row["size"], version=row["version"],
        cksum_type=row["cksum_type"], cksum=row["cksum"], atime_ns=row["atime"],
        custom=json.loads(row["custom"]),
    )


class Store:
    """Buckets, objects and work files of one node."""

    def __init__(self, db: Database, mountpaths: list[Path], node_id: str,
                 appends: Appends | None = None) -> None:
        if not mountpaths:
            raise ValueError("a store needs at least one mountpath")
        self.db = db
        self.mountpaths = [Path(p) for p in mountpaths]
        self.node_id = node_id
        for mp in self.mountpaths:
            mp.mkdir(parents=True, exist_ok=True)
        self.layout = Layout([str(p) for p in self.mountpaths])
        # Bucket props, mirrored from the catalog; changed only on the database thread.
        self._buckets: dict[Bucket, Props] = db.run_sync(self._load_buckets)
        self.appends = appends if appends is not None else Appends()
        self._reaper: asyncio.Task[None] | None = None  # drops idle appends while any are open

    @staticmethod
    def _load_buckets(conn: sqlite3.Connection) -> dict[Bucket, Props]:
        rows = conn.execute("SELECT provider, name, props FROM buckets").fetchall()
        return {Bucket(r["provider"], r["name"]): json.loads(r["props"]) for r in rows}

    # -- paths ---------------------------------------------------------------------------------
    def mountpath(self, bck: Bucket, name: str) -> Path:
        """The mountpath of an object: highest rendezvous (HRW) hash of `provider/bucket/name`."""
        return self.mountpaths[self.layout.mountpath_index(bck, name)]

    def object_path(self, bck: Bucket, name: str) -> Path:
        return Path(self.layout.object_file(bck, name))

    def object_file(self, bck: Bucket, name: str) -> str:
        return self.layout.object_file(bck, name)

    def work_path(self, bck: Bucket, name: str, tag: str, suffix: str = "") -> Path:
        return Path(self.layout.work_file(bck, name, tag, suffix))

    def work_file(self, bck: Bucket, name: str, tag: str, suffix: str = "") -> str:
        return self.layout.work_file(bck, name, tag, suffix)

    def drop_work(self, tag: str) -> None:
        """A job is over: remove its work directories (and whatever an abort left in them)."""
        self.layout.forget_work(tag)
        for mp in self.mountpaths:
            shutil.rmtree(mp / WORK_DIR / tag, ignore_errors=True)

    def clean_work(self, keep_tags: set[str]) -> None:
        """Start-up: drop work files of jobs that no longer exist, of PUTs and appends (their
        handles lived in the memory of the node that stopped), and the trash."""
        for mp in self.mountpaths:
            work = mp / WORK_DIR
            if not work.is_dir():
                continue
            for child in work.iterdir():
                if child.name in keep_tags and child.name not in (PUT_TAG, APPEND_TAG, TRASH_TAG):
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    # -- buckets -------------------------------------------------------------------------------
    def has_bucket(self, bck: Bucket) -> bool:
        return bck in self._buckets

    def require_bucket(self, bck: Bucket) -> Props:
        """The bucket's stored props, or the AIS 404 for a missing bucket."""
        props = self._buckets.get(bck)
        if props is None:
            raise bucket_not_found(bck)
        return props

    async def create_bucket(self, bck: Bucket, props: dict[str, Any] | None = None) -> None:
        def create(conn: sqlite3.Connection) -> None:
            if bck in self._buckets:
                raise Conflict(f'bucket "{bck.cname}" already exists',
                               tcode="ErrBucketAlreadyExists")
            self._insert_bucket(conn, bck, props)

        await self.db.run(create)

    async def ensure_bucket(self, bck: Bucket) -> bool:
        """Create the bucket unless it exists; True if this call created it."""
        def ensure(conn: sqlite3.Connection) -> bool:
            if bck in self._buckets:
                return False
            self._insert_bucket(conn, bck, None)
            return True

        if bck in self._buckets:
            return False
        return await self.db.run(ensure)

    def _insert_bucket(self, conn: sqlite3.Connection, bck: Bucket,
                       initial: dict[str, Any] | None) -> None:
        created = time.time_ns()
        bid = (1 << 40) + len(self._buckets) + 1
        props = default_props(bck, created, bid)
        if initial:
            props = merge_props(bck, props, initial)
        conn.execute("INSERT INTO buckets (provider, name, props, created) VALUES (?, ?, ?, ?)",
                     (bck.provider, bck.name, json.dumps(props), created))
        self._buckets[bck] = props

    async def destroy_bucket(self, bck: Bucket) -> None:
        """Forget the bucket and its objects; the bytes go to the trash, removed off the loop."""
        def destroy(conn: sqlite3.Connection) -> list[Path]:
            self.require_bucket(bck)
            conn.execute("DELETE FROM objects WHERE provider = ? AND bucket = ?",
                         (bck.provider, bck.name))
            conn.execute("DELETE FROM buckets WHERE provider = ? AND name = ?",
                         (bck.provider, bck.name))
            del self._buckets[bck]
            return self._trash_bucket_dirs(bck)

        trashed = await self.db.run(destroy)
        await self._in_executor(functools.partial(_remove_trees, trashed))

    def _trash_bucket_dirs(self, bck: Bucket) -> list[Path]:
        """Rename the bucket's directories away (instant), so a new bucket of the same name
        starts empty while the old bytes are still being deleted."""
        trashed = []
        for mp in self.mountpaths:
            src = mp / bck.provider / bck.name
            if not src.exists():
                continue
            dst = mp / WORK_DIR / TRASH_TAG / secrets.token_hex(8)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            trashed.append(dst)
        return trashed

    async def list_buckets(self, provider: str = "") -> list[Bucket]:
        return sorted(b for b in self._buckets if not provider or b.provider == provider)

    def remote_of(self, bck: Bucket) -> Bucket | None:
        """The remote bucket behind `bck`: itself for a cloud bucket, else its `backend_bck`."""
        if bck.is_remote:
            return bck
        backend = self.require_bucket(bck).get("backend_bck") or {}
        if not backend.get("name"):
            return None
        return Bucket.of(backend["name"], backend["provider"])

    async def bucket_props(self, bck: Bucket) -> dict[str, Any]:
        return self._full_props(bck, self.require_bucket(bck))

    def _full_props(self, bck: Bucket, stored: Props) -> Props:
        return with_defaults(stored, default_props(bck, 0, 0))

    async def set_bucket_props(
        self, bck: Bucket, partial: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Apply a partial props update; returns (old, new) full props."""
        def update(conn: sqlite3.Connection) -> tuple[Props, Props]:
            old = self._full_props(bck, self.require_bucket(bck))
            new = merge_props(bck, old, partial)
            self._save_props(conn, bck, new)
            return old, new

        return await self.db.run(update)

    async def reset_bucket_props(self, bck: Bucket) -> None:
        """Back to the defaults; creation time, id and backend bucket are kept."""
        def reset(conn: sqlite3.Connection) -> None:
            old = self.require_bucket(bck)
            new = default_props(bck, int(old["created"]), int(old["bid"]))
            new["backend_bck"] = old["backend_bck"]
            self._save_props(conn, bck, new)

        await self.db.run(reset)

    def _save_props(self, conn: sqlite3.Connection, bck: Bucket, props: Props) -> None:
        conn.execute("UPDATE buckets SET props = ? WHERE provider = ? AND name = ?",
                     (json.dumps(props), bck.provider, bck.name))
        self._buckets[bck] = props

    # -- objects: reads ------------------------------------------------------------------------
    def object_not_found(self, bck: Bucket, name: str) -> NotFound:
        return NotFound(f"t[{self.node_id}]: {bck.cname}/{name} does not exist",
                        tcode="ErrNotFound")

    async def lookup(self, bck: Bucket, name: str) -> ObjectAttrs | None:
        self.require_bucket(bck)

        def get(conn: sqlite3.Connection) -> ObjectAttrs | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM objects WHERE provider = ? AND bucket = ? AND name = ?",
                (bck.provider, bck.name, name)).fetchone()
            return _row_to_attrs(row) if row else None

        return await self.db.run(get)

    async def lookup_many(self, bck: Bucket, names: list[str]) -> dict[str, ObjectAttrs]:
        """The stored attributes of those of `names` that exist (one transaction)."""
        self.require_bucket(bck)

        def get(conn: sqlite3.Connection) -> dict[str, ObjectAttrs]:
            found: dict[str, ObjectAttrs] = {}
            for i in range(0, len(names), _LOOKUP_BATCH):
                batch = names[i:i + _LOOKUP_BATCH]
                marks = ",".join("?" * len(batch))
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM objects WHERE provider = ? AND bucket = ?"
                    f" AND name IN ({marks})", (bck.provider, bck.name, *batch))
                found.update((r["name"], _row_to_attrs(r)) for r in rows)
            return found

        return await self.db.run(get) if names else {}

    async def list_objects(self, bck: Bucket, prefix: str, start_after: str,
                           limit: int) -> list[ObjectAttrs]:
        """Up to `limit` objects named `prefix...` and greater than `start_after`, by name."""
        self.require_bucket(bck)
        sql = (f"SELECT {_COLUMNS} FROM objects WHERE provider = ? AND bucket = ?"
               " AND name > ? AND name >= ?")
        args: list[Any] = [bck.provider, bck.name, start_after, prefix]
        upper = _prefix_upper_bound(prefix)
        if upper is not None:
            sql += " AND name < ?"
            args.append(upper)
        sql += " ORDER BY name LIMIT ?"
        args.append(limit)

        def query(conn: sqlite3.Connection) -> list[ObjectAttrs]:
            return [_row_to_attrs(r) for r in conn.execute(sql, args)]

        return await self.db.run(query)

    async def list_entries(self, bck: Bucket, prefix: str, after: str, limit: int, *,
                           recursive: bool = True, arch_dir: bool = False) -> list[Entry]:
        """Up to `limit` listing entries after `after`, in the order AIS lists them.

        Not `recursive`: the objects directly under `prefix`'s directory, and each directory
        below it once, as `dir/` (AIS: a prefix naming a directory without its `/` lists that
        directory). `arch_dir`: each archive is followed by its files, `shard.tar/member`; a page
        may end inside an archive, and `after` is then that member's entry name."""
        self.require_bucket(bck)
        if not recursive and prefix and not prefix.endswith("/"):
            if await self.db.run(functools.partial(_has_names_under, bck=bck,
                                                   prefix=prefix + "/")):
                prefix += "/"
        out: list[Entry] = []
        start: str | None = after + "\x00" if after else ""  # names hold no NUL: next name up
        shard = await self._archive_of(bck, after) if arch_dir and after else None
        if shard is not None:  # the last page ended on this archive or inside it
            await self._add_members(bck, shard, after[len(shard) + 1:], out, limit)
            start = shard + "\x00"
        while start is not None and len(out) < limit:
            want = limit - len(out)
            page = await self.db.run(functools.partial(
                _entries_from, bck=bck, prefix=prefix, after=after, start=start, limit=want,
                recursive=recursive))
            if not page:
                break
            for entry in page:
                if arch_dir and entry.kind == OBJECT and archive.kind_by_name(entry.attrs.name):
                    out.append(Entry(entry.attrs, ARCHIVE))
                    await self._add_members(bck, entry.attrs.name, "", out, limit)
                else:
                    out.append(entry)
                if len(out) >= limit:
                    break
            last = page[-1]
            start = (_prefix_upper_bound(last.attrs.name) if last.kind == DIR
                     else last.attrs.name + "\x00")
            if len(page) < want:
                break
        return out[:limit]

    async def _archive_of(self, bck: Bucket, name: str) -> str | None:
        """The stored archive that entry `name` is (`shard.tar`) or is a member of
        (`shard.tar/member`), if any. An object cannot also be a directory, so at most one
        prefix of `name` is a stored object."""
        if archive.kind_by_name(name) and await self.lookup(bck, name) is not None:
            return name
        for ext in archive.EXTENSIONS:
            cut = name.find(ext + "/")
            while cut >= 0:
                if await self.lookup(bck, name[:cut + len(ext)]) is not None:
                    return name[:cut + len(ext)]
                cut = name.find(ext + "/", cut + 1)
        return None

    async def _add_members(self, bck: Bucket, shard: str, after: str, out: list[Entry],
                           limit: int) -> None:
        """Append the archive's files named after `after`, up to `limit` entries in all (AIS:
        with their uncompressed sizes)."""
        kind = archive.kind_by_name(shard)
        assert kind is not None
        path, label = self.object_file(bck, shard), f"{bck.cname}/{shard}"
        try:
            members = await self._in_executor(
                functools.partial(archive.list_members, path, kind, label))
        except FileNotFoundError:
            return  # deleted since the catalog named it
        for m in members:
            if len(out) >= limit:
                return
            if m.name > after:
                out.append(Entry(ObjectAttrs(name=f"{shard}/{m.name}", size=m.size, version="",
                                             cksum=""), MEMBER))

    # -- objects: writes -----------------------------------------------------------------------
    def commit_in_txn(self, conn: sqlite3.Connection, bck: Bucket, name: str, work: str | Path,
                      size: int, cksum: str, custom: dict[str, str], atime_ns: int,
                      view: CatalogView | None = None) -> ObjectAttrs:
        """Rename the object's work file into place and record it, inside the caller's
        transaction (on the database thread). On error the work file stays for the caller.
        `view`: the catalog as read for the caller's batch of names, this one among them."""
        view = view or CatalogView(conn, bck, [name])
        self.place(bck, name, work, view)
        return self.record_in_txn(conn, bck, name, size, cksum, custom, atime_ns, view)

    def place(self, bck: Bucket, name: str, work: str | Path, view: CatalogView) -> None:
        """Rename a work file into place, unless the name clashes with objects the catalog has.
        Bytes first, row second: when the disk refuses the name (a clash, too long, no room for
        its directory) the catalog stays as it was, old object and all. Both land in the
        caller's transaction, so a crash before it commits leaves the same state either way."""
        self.require_bucket(bck)
        if view.version(name) is None:
            view.check_no_dir_clash(name)
        self.layout.place(bck, name, work)

    def record_in_txn(self, conn: sqlite3.Connection, bck: Bucket, name: str, size: int,
                      cksum: str, custom: dict[str, str], atime_ns: int,
                      view: CatalogView) -> ObjectAttrs:
        """The catalog row of an object just placed: its next version and attributes."""
        props = self.require_bucket(bck)
        attrs = ObjectAttrs(name=name, size=size, version=_next_version(view.version(name), props),
                            cksum_type="xxhash2", cksum=cksum, atime_ns=atime_ns,
                            custom=dict(custom))
        self._upsert(conn, bck, attrs)
        view.committed(name, attrs.version)
        return attrs

    def record_placed(self, conn: sqlite3.Connection, bck: Bucket,
                      objects: list[tuple[str, int, str, str, int]]) -> dict[int, str]:
        """The catalog rows of objects already renamed into place (name, size, checksum,
        custom metadata as JSON, atime), in one statement. Returns the refused ones by
        position, with why: a name that clashes with objects of the catalog (possible across
        mountpaths, where the disk cannot see it) is removed from the disk again."""
        props = self.require_bucket(bck)
        if len(self.mountpaths) == 1:  # its disk refused every clash at the rename
            conn.executemany(_UPSERT_VERSIONED if _versioned(props) else _UPSERT_UNVERSIONED, [
                (bck.provider, bck.name, name, size, cksum, atime_ns, custom)
                for name, size, cksum, custom, atime_ns in objects])
            return {}
        view = CatalogView(conn, bck, [o[0] for o in objects])
        refused: dict[int, str] = {}
        rows = []
        for i, (name, size, cksum, custom, atime_ns) in enumerate(objects):
            previous = view.version(name)
            if previous is None:
                try:
                    view.check_no_dir_clash(name)
                except Conflict as err:
                    refused[i] = err.message
                    with contextlib.suppress(OSError):
                        os.unlink(self.layout.object_file(bck, name))
                    continue
            version = _next_version(previous, props)
            rows.append((bck.provider, bck.name, name, size, version, "xxhash2", cksum, atime_ns,
                         custom))
            view.committed(name, version)
        conn.executemany(
            "INSERT OR REPLACE INTO objects (provider, bucket, name, size, version, cksum_type,"
            " cksum, atime, custom) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return refused

    def _upsert(self, conn: sqlite3.Connection, bck: Bucket, a: ObjectAttrs) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO objects (provider, bucket, name, size, version, cksum_type,"
            " cksum, atime, custom) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (bck.provider, bck.name, a.name, a.size, a.version, a.cksum_type, a.cksum,
             a.atime_ns, json.dumps(a.custom)))

    async def put_object(
        self, bck: Bucket, name: str, chunks: AsyncIterator[bytes],
        custom: dict[str, str] | None = None, expected_size: int | None = None,
        cksum: tuple[str, str] | None = None,
    ) -> ObjectAttrs:
        """Store a user's upload. The custom metadata becomes exactly `custom` (a PUT replaces
        the source validators a download recorded). `cksum` = (type, value) to verify."""
        check_object_name(name)
        self.require_bucket(bck)
        work = await self._new_work_file(bck, name, PUT_TAG)
        committed = False
        try:
            try:
                size, digest = await self._receive(work, chunks)
            except OSError as exc:
                raise disk_error(exc, f"cannot store {bck.cname}/{name}") from exc
            if expected_size is not None and size != expected_size:
                raise BadRequest(f"{bck.cname}/{name}: received {size} of {expected_size}"
                                 " bytes; nothing stored")
            await self._in_executor(
                functools.partial(_verify_checksum, cksum, digest.hexdigest(), work))
            now = time.time_ns()
            attrs = await self.db.run(lambda conn: self.commit_in_txn(
                conn, bck, name, work, size, digest.hexdigest(), custom or {}, now))
            committed = True
            return attrs
        finally:
            if not committed:
                await self._in_executor(lambda: work.unlink(missing_ok=True))

    async def _new_work_file(self, bck: Bucket, name: str, tag: str) -> Path:
        """A work file of its own for one request (PUTs and appends of a name may overlap)."""
        base = await self._in_executor(functools.partial(self.work_path, bck, name, tag))
        return base.with_name(f"{base.name}.{secrets.token_hex(6)}")

    async def _receive(self, work: Path,
                       chunks: AsyncIterator[bytes]) -> tuple[int, xxhash.xxh64]:
        """Write the chunks to a new `work` file, hashing as they go."""
        digest = xxhash.xxh64()
        f = await self._in_executor(lambda: open(work, "wb"))  # noqa: SIM115
        try:
            size = await self._write_chunks(f, chunks, digest, 0)
        finally:
            await self._in_executor(f.close)
        return size, digest

    async def _write_chunks(self, f: IO[bytes], chunks: AsyncIterator[bytes],
                            digest: xxhash.xxh64, limit: int) -> int:
        """Write and hash the chunks; more than `limit` bytes (0: no limit) is a 413. The disk
        is touched off the loop."""
        def flush(data: bytes) -> None:
            f.write(data)
            digest.update(data)

        size, buf = 0, bytearray()
        async for chunk in chunks:
            size += len(chunk)
            if limit and size > limit:
                raise TooLarge(f"more than {limit} bytes: over the node's object size limit")
            buf += chunk
            if len(buf) >= _WRITE_BUFFER:
                data, buf = bytes(buf), bytearray()
                await self._in_executor(functools.partial(flush, data))
        await self._in_executor(lambda: flush(bytes(buf)))
        return size

    async def _open_stored(self, bck: Bucket, name: str) -> tuple[ObjectAttrs, IO[bytes]]:
        """An object's catalog row and its bytes, opened together on the database thread. Every
        rename into place runs there too, so the open file is the one the row describes, even
        when the object is overwritten while the caller reads it."""
        self.require_bucket(bck)

        def get(conn: sqlite3.Connection) -> tuple[ObjectAttrs, IO[bytes]]:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM objects WHERE provider = ? AND bucket = ? AND name = ?",
                (bck.provider, bck.name, name)).fetchone()
            if row is None:
                raise self.object_not_found(bck, name)
            try:
                f = open(self.object_file(bck, name), "rb")  # noqa: SIM115 - closed by caller
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise self.object_not_found(bck, name) from None  # removed by hand
            return _row_to_attrs(row), f

        return await self.db.run(get)

    # -- objects: copy -------------------------------------------------------------------------
    async def copy_object(self, src_bck: Bucket, src_name: str, dst_bck: Bucket,
                          dst_name: str) -> ObjectAttrs:
        """Copy an object's bytes and custom metadata to another name (in any bucket of this
        node); the copy gets the destination's next version. The bytes land in a work file and
        are committed like a PUT: a failed copy leaves the destination as it was."""
        check_object_name(src_name)
        check_object_name(dst_name)
        if (src_bck, src_name) == (dst_bck, dst_name):
            raise BadRequest(f"cannot copy {src_bck.cname}/{src_name} onto itself")
        self.require_bucket(dst_bck)
        attrs, src = await self._open_stored(src_bck, src_name)
        work: Path | None = None
        committed = False
        try:
            work = await self._new_work_file(dst_bck, dst_name, PUT_TAG)
            digest = xxhash.xxh64()
            try:
                size = await self._in_executor(
                    functools.partial(_copy_into, src, work, digest))
            except OSError as exc:
                raise disk_error(exc, f"cannot copy to {dst_bck.cname}/{dst_name}") from exc
            now = time.time_ns()
            copied = await self.db.run(lambda conn: self.commit_in_txn(
                conn, dst_bck, dst_name, work, size, digest.hexdigest(), attrs.custom, now))
            committed = True
            return copied
        finally:
            await self._in_executor(src.close)
            if work is not None and not committed:
                await self._in_executor(functools.partial(work.unlink, missing_ok=True))

    # -- objects: append and flush -------------------------------------------------------------
    async def append(self, bck: Bucket, name: str, handle: str, chunks: AsyncIterator[bytes],
                     limit: int) -> str:
        """Append the chunks to the object's pending bytes and return the handle to go on with.
        No handle: a new append, starting from the object's stored bytes if it has any. The
        bytes stay in a work file, invisible, until `flush_append`. A chunk that fails (cut
        short, over `limit` bytes in all, a full disk) is taken back whole."""
        check_object_name(name)
        self.require_bucket(bck)
        if not handle:
            return await self._new_append(bck, name, chunks, limit)
        entry = self.appends.take(handle, bck, name)
        try:
            async with entry.lock:
                self.appends.check_open(entry, handle)
                await self._append_chunks(entry, chunks, limit)
        finally:
            self.appends.release(entry)
        return handle

    async def _new_append(self, bck: Bucket, name: str, chunks: AsyncIterator[bytes],
                          limit: int) -> str:
        self.appends.check_room()  # before writing anything
        work = await self._new_work_file(bck, name, APPEND_TAG)
        entry = OpenAppend(bck, name, work, 0, xxhash.xxh64(), 0.0)
        try:
            try:
                stored: IO[bytes] | None = (await self._open_stored(bck, name))[1]
            except NotFound:
                stored = None
            try:
                if stored is None:
                    await self._in_executor(work.touch)
                else:
                    entry.size = await self._in_executor(
                        functools.partial(_copy_into, stored, work, entry.digest))
            except OSError as exc:
                raise disk_error(exc, f"cannot append to {bck.cname}/{name}") from exc
            finally:
                if stored is not None:
                    await self._in_executor(stored.close)
            if limit and entry.size > limit:
                raise TooLarge(f"{bck.cname}/{name} is over the node's object size limit")
            await self._append_chunks(entry, chunks, limit)
            handle = self.appends.open(entry)
        except BaseException:
            await self._in_executor(functools.partial(work.unlink, missing_ok=True))
            raise
        self._arm_reaper()
        return handle

    async def _append_chunks(self, entry: OpenAppend, chunks: AsyncIterator[bytes],
                             limit: int) -> None:
        before, digest = entry.size, entry.digest.copy()
        f = await self._in_executor(lambda: open(entry.work, "ab"))  # noqa: SIM115
        try:
            try:
                added = await self._write_chunks(f, chunks, digest,
                                                 limit - before if limit else 0)
            finally:
                await self._in_executor(f.close)
        except OSError as exc:
            await self._in_executor(functools.partial(os.truncate, entry.work, before))
            raise disk_error(exc, f"cannot append to {entry.bck.cname}/{entry.name}") from exc
        except BaseException:
            await self._in_executor(functools.partial(os.truncate, entry.work, before))
            raise
        entry.size, entry.digest = before + added, digest

    async def flush_append(self, bck: Bucket, name: str, handle: str,
                           cksum: tuple[str, str] | None) -> ObjectAttrs:
        """Commit an append's bytes as the object (its next version, custom metadata cleared as
        by a PUT). `cksum` = (type, value) of the whole object to verify. On any refusal the
        handle stays open, its bytes as they were."""
        check_object_name(name)
        self.require_bucket(bck)
        if not handle:
            raise BadRequest("a flush needs the append_handle its appends returned")
        entry = self.appends.take(handle, bck, name)
        try:
            async with entry.lock:
                self.appends.check_open(entry, handle)
                digest = entry.digest.hexdigest()
                await self._in_executor(
                    functools.partial(_verify_checksum, cksum, digest, entry.work))
                now = time.time_ns()
                attrs = await self.db.run(lambda conn: self.commit_in_txn(
                    conn, bck, name, entry.work, entry.size, digest, {}, now))
                self.appends.close(handle, entry)
                return attrs
        finally:
            self.appends.release(entry)

    def _arm_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_appends())

    async def _reap_appends(self) -> None:
        """While appends are open: drop those idle too long, with their work files."""
        while len(self.appends):
            await asyncio.sleep(self.appends.idle_timeout / 2)
            for entry in self.appends.expired():
                await self._in_executor(functools.partial(entry.work.unlink, missing_ok=True))
                log.info("append to %s/%s dropped: no flush within %gs (%d bytes pending)",
                         entry.bck.cname, entry.name, self.appends.idle_timeout, entry.size)

    async def update_custom(self, bck: Bucket, name: str, value: dict[str, str],
                            replace: bool) -> ObjectAttrs:
        """Merge (or with `replace`, set) the object's custom metadata."""
        self.require_bucket(bck)

        def update(conn: sqlite3.Connection) -> ObjectAttrs:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM objects WHERE provider = ? AND bucket = ? AND name = ?",
                (bck.provider, bck.name, name)).fetchone()
            if row is None:
                raise self.object_not_found(bck, name)
            attrs = _row_to_attrs(row)
            attrs.custom = dict(value) if replace else {**attrs.custom, **value}
            self._upsert(conn, bck, attrs)
            return attrs

        return await self.db.run(update)

    async def delete_object(self, bck: Bucket, name: str) -> None:
        self.require_bucket(bck)

        def delete(conn: sqlite3.Connection) -> None:
            if not _delete_row(conn, bck, name):
                raise NotFound(f"{bck.cname}/{name} doesn't exist")
            self._remove_file(bck, name)

        await self.db.run(delete)

    async def delete_objects(self, bck: Bucket, names: list[str]) -> tuple[int, int, list[str]]:
        """Remove those of `names` that are stored, in one transaction: (how many, their bytes,
        the names that were not stored). Files go once the rows are gone for good."""
        self.require_bucket(bck)

        def delete(conn: sqlite3.Connection) -> tuple[dict[str, int], list[str]]:
            found: dict[str, int] = {}
            for i in range(0, len(names), _LOOKUP_BATCH):
                batch = names[i:i + _LOOKUP_BATCH]
                marks = ",".join("?" * len(batch))
                found.update((r["name"], r["size"]) for r in conn.execute(
                    f"DELETE FROM objects WHERE provider = ? AND bucket = ? AND name IN ({marks})"
                    " RETURNING name, size", (bck.provider, bck.name, *batch)))
            return found, [n for n in names if n not in found]

        def unlink(result: tuple[dict[str, int], list[str]]) -> None:
            for name in result[0]:
                self._remove_file(bck, name)

        found, missing = await self.db.run(delete, then=unlink) if names else ({}, [])
        return len(found), sum(found.values()), missing

    def _remove_file(self, bck: Bucket, name: str) -> None:
        """Unlink an object's file and prune the directories it leaves empty, so the names of
        those directories are free for objects again."""
        path = self.object_path(bck, name)
        path.unlink(missing_ok=True)
        top = path.parents[len(Path(name).parts) - 1]  # the bucket directory
        parent = path.parent
        while parent != top:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def _in_executor(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn)


def _entries_from(conn: sqlite3.Connection, bck: Bucket, prefix: str, after: str, start: str,
                  limit: int, recursive: bool) -> list[Entry]:
    """Up to `limit` entries named `prefix...` from `start` on (inclusive). Not `recursive`:
    a name below a subdirectory of the prefix stands for that directory, listed once (when it
    sorts after `after`), and the scan jumps past everything under it."""
    sql = (f"SELECT {_COLUMNS} FROM objects WHERE provider = ? AND bucket = ?"
           " AND name >= ? AND name >= ?")
    base: list[Any] = [bck.provider, bck.name, prefix]
    upper = _prefix_upper_bound(prefix)
    if upper is not None:
        sql += " AND name < ?"
        base.append(upper)
    sql += " ORDER BY name LIMIT ?"
    out: list[Entry] = []
    lo: str | None = start
    while lo is not None and len(out) < limit:
        batch = max(limit - len(out), 1) if recursive else min(limit - len(out), 256)
        rows = conn.execute(sql, (*base[:2], lo, *base[2:], batch)).fetchall()
        if not rows:
            break
        for row in rows:
            name = row["name"]
            cut = -1 if recursive else name.find("/", len(prefix))
            if cut < 0:
                out.append(Entry(_row_to_attrs(row), OBJECT))
                lo = name + "\x00"  # names hold no NUL: the next name up
                if len(out) >= limit:
                    break
                continue
            directory = name[:cut + 1]
            if directory > after:
                out.append(Entry(ObjectAttrs(name=directory, size=0, version="", cksum=""), DIR))
            lo = _prefix_upper_bound(directory)  # past every name under it
            break
        else:
            if len(rows) < batch:
                break
    return out


def _has_names_under(conn: sqlite3.Connection, bck: Bucket, prefix: str) -> bool:
    args: list[Any] = [bck.provider, bck.name, prefix]
    sql = "SELECT 1 FROM objects WHERE provider = ? AND bucket = ? AND name >= ?"
    upper = _prefix_upper_bound(prefix)
    if upper is not None:
        sql += " AND name < ?"
        args.append(upper)
    return conn.execute(sql + " LIMIT 1", args).fetchone() is not None


def _delete_row(conn: sqlite3.Connection, bck: Bucket, name: str) -> bool:
    """Remove an object's catalog row; False when there was none."""
    return conn.execute("DELETE FROM objects WHERE provider = ? AND bucket = ? AND name = ?",
                        (bck.provider, bck.name, name)).rowcount > 0


def _upsert_sql(new: str, overwritten: str) -> str:
    """An object's row, inserted or replacing the one of its name, its version computed by
    SQLite (as `_next_version` does): no query of the old versions first."""
    return ("INSERT INTO objects (provider, bucket, name, size, version, cksum_type, cksum, atime,"
            f" custom) VALUES (?, ?, ?, ?, {new}, 'xxhash2', ?, ?, ?) ON CONFLICT DO UPDATE SET"
            f" size = excluded.size, version = {overwritten}, cksum_type = excluded.cksum_type,"
            " cksum = excluded.cksum, atime = excluded.atime, custom = excluded.custom")


_UPSERT_VERSIONED = _upsert_sql(
    "'1'", "CASE WHEN version <> '' AND version NOT GLOB '*[^0-9]*'"
    " THEN CAST(CAST(version AS INTEGER) + 1 AS TEXT) ELSE '1' END")
_UPSERT_UNVERSIONED = _upsert_sql("''", "''")


def _versioned(props: Props) -> bool:
    return bool(props.get("versioning", {}).get("enabled", True))


def _next_version(previous: str | None, props: Props) -> str:
    """`1` for a new object, previous + 1 on overwrite; empty when versioning is off."""
    if not _versioned(props):
        return ""
    if previous is None or not previous.isdigit():
        return "1"
    return str(int(previous) + 1)


def _copy_into(src: IO[bytes], work: Path, digest: xxhash.xxh64) -> int:
    """Copy an open file into a new `work` file, hashing as it goes; the bytes copied."""
    size = 0
    with open(work, "wb") as out:
        while chunk := src.read(_WRITE_BUFFER):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return size


def _verify_checksum(cksum: tuple[str, str] | None, xxh64: str, work: Path) -> None:
    """Check a client-given checksum; only the XXH64 we compute anyway and none are known."""
    if cksum is None or cksum[0] in ("", "none"):
        return
    kind, value = cksum[0].lower(), cksum[1].lower()
    if kind in ("xxhash", "xxhash2"):
        actual = xxh64
    elif kind in ("md5", "sha256", "sha512"):
        with open(work, "rb") as f:
            actual = hashlib.file_digest(f, kind).hexdigest()
    else:
        raise BadRequest(f"unsupported checksum type {cksum[0]!r} for a PUT")
    if actual != value:
        raise BadRequest(f"checksum mismatch: {kind} of the received bytes is {actual},"
                         f" the request said {value}; nothing stored")


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with `prefix` (None: no
    bound), so a prefix listing is an index range scan that stops at the prefix's end."""
    chars = list(prefix)
    while chars:
        nxt = ord(chars.pop()) + 1
        if 0xD800 <= nxt < 0xE000:
            nxt = 0xE000  # skip surrogates: they are not characters and cannot be stored
        if nxt <= 0x10FFFF:
            return "".join(chars) + chr(nxt)
    return None


def _remove_trees(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
