"""The store against a real SQLite catalog and real directories: names, commits, versions,
listing, bucket props."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import xxhash

from aisdl.db import Database
from aisdl.errors import BadRequest, Conflict, NotFound
from aisdl.models import Bucket
from aisdl.store.catalog_view import CatalogView
from aisdl.store.paths import check_object_name, normalize_object_name
from aisdl.store.store import Store

B = Bucket("ais", "b")


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "want"), [
    ("?objname", "?objname"),
    ("filename", "filename"),
    ("dir/file", "dir/file"),
    ("dir%2Ffile", "dir/file"),
    ("path1/path2/path3%2Fpath4%2Ffile", "path1/path2/path3/path4/file"),
    ("file?arg1=a&arg2=b", "file"),
    ("imagenet%2Fimagenet_train-000000.tgz?alt=media", "imagenet/imagenet_train-000000.tgz"),
    ("a+b c", "a+b c"),
    ("file:x.txt", "file:x.txt"),
])
def test_normalize_object_name(raw: str, want: str) -> None:
    assert normalize_object_name(raw) == want


@pytest.mark.parametrize("raw", ["..%2Foutside", "dir/../outside", "bad%zz", "", "dir/",
                                 "%2Fabs", "a%00b"])
def test_normalize_object_name_errors(raw: str) -> None:
    with pytest.raises(BadRequest):
        normalize_object_name(raw)


@pytest.mark.parametrize("name", ["", "a/", "/a", "~/a", ".", "..", "a/./b", "a/../b", "a//b",
                                  "a\x00b", "../x"])
def test_check_object_name_rejects(name: str) -> None:
    with pytest.raises(BadRequest, match="invalid object name"):
        check_object_name(name)


@pytest.mark.parametrize("name", ["a", "a/b/c", "~a", "a~/b", ".hidden", "a..b", "x y+z%20"])
def test_check_object_name_accepts(name: str) -> None:
    assert check_object_name(name) == name


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "t.db")
    yield database
    database.close()


@pytest.fixture
async def store(db: Database, tmp_path: Path) -> Store:
    s = Store(db, [tmp_path / "mp1", tmp_path / "mp2"], "node1")
    await s.create_bucket(B)
    return s


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def put(store: Store, name: str, data: bytes, bck: Bucket = B) -> None:
    await store.put_object(bck, name, chunks(data), expected_size=len(data))


# -- objects -------------------------------------------------------------------------------------
async def test_put_get_paths_and_versions(store: Store) -> None:
    attrs = await store.put_object(B, "dir/a b.txt", chunks(b"hello", b" world"),
                                   custom={"k": "v"}, expected_size=11)
    assert (attrs.size, attrs.version, attrs.cksum) == (11, "1", "45ab6734b21e6968")
    path = store.object_path(B, "dir/a b.txt")
    assert path.read_bytes() == b"hello world"
    assert path.relative_to(store.mountpath(B, "dir/a b.txt")) == Path("ais/b/dir/a b.txt")
    await put(store, "dir/a b.txt", b"again")
    again = await store.lookup(B, "dir/a b.txt")
    assert again is not None
    assert (again.version, again.size, again.custom) == ("2", 5, {})  # a PUT replaces custom
    assert again.cksum == xxhash.xxh64(b"again").hexdigest()
    assert await store.lookup(B, "nope") is None


async def test_short_body_commits_nothing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="received 3 of 10"):
        await store.put_object(B, "short", chunks(b"abc"), expected_size=10)
    assert await store.lookup(B, "short") is None
    assert not store.object_path(B, "short").exists()
    assert not any(p.is_file() for p in tmp_path.rglob(".work/put/*"))


async def test_checksum_mismatch_commits_nothing(store: Store) -> None:
    with pytest.raises(BadRequest, match="checksum mismatch"):
        await store.put_object(B, "x", chunks(b"abc"), cksum=("xxhash2", "0" * 16))
    md5 = ("md5", "900150983cd24fb0d6963f7d28e17f72")
    await store.put_object(B, "x", chunks(b"abc"), cksum=md5)
    assert await store.lookup(B, "x") is not None


async def test_commit_in_txn_renames_work_file(store: Store, db: Database) -> None:
    work = store.work_path(B, "deep/obj", "job1")
    assert work.parts[-4:-2] == (".work", "job1")  # the job's work area (a shard of it)
    assert store.work_path(B, "deep/obj", "job1") == work  # deterministic
    work.write_bytes(b"data")
    attrs = await db.run(lambda c: store.commit_in_txn(
        c, B, "deep/obj", work, 4, "ck", {"ETag": "e"}, 123))
    assert not work.exists()
    assert store.object_path(B, "deep/obj").read_bytes() == b"data"
    assert (attrs.version, attrs.custom, attrs.atime_ns) == ("1", {"ETag": "e"}, 123)
    found = await store.lookup_many(B, ["deep/obj", "missing"])
    assert list(found) == ["deep/obj"] and found["deep/obj"].cksum == "ck"


async def test_file_versus_directory_conflicts(store: Store, db: Database) -> None:
    await put(store, "a", b"1")
    with pytest.raises(Conflict):
        await put(store, "a/b", b"2")
    await put(store, "d/e", b"3")
    work = store.work_path(B, "d", "job")
    work.write_bytes(b"x")
    with pytest.raises(Conflict):
        await db.run(lambda c: store.commit_in_txn(c, B, "d", work, 1, "", {}, 0))
    assert work.exists()  # left for the caller
    assert await store.lookup(B, "d") is None and await store.lookup(B, "a/b") is None
    # Deleting `d/e` frees the name `d` (its empty directory is pruned).
    await store.delete_object(B, "d/e")
    await db.run(lambda c: store.commit_in_txn(c, B, "d", work, 1, "", {}, 0))
    assert store.object_path(B, "d").read_bytes() == b"x"


async def test_a_refused_overwrite_keeps_the_stored_object(store: Store, db: Database) -> None:
    """Someone put a directory of files where an object's bytes were: a new download of that
    object is refused, and the catalog still describes the object as it was."""
    await put(store, "o", b"old")
    before = await store.lookup(B, "o")
    path = store.object_path(B, "o")
    path.unlink()
    path.mkdir()
    (path / "by-hand").write_bytes(b"x")
    work = store.work_path(B, "o", "job")
    work.write_bytes(b"newer")

    def commit_in_a_batch(conn: sqlite3.Connection) -> str:
        try:  # a job's batch records the error and goes on: its transaction commits
            store.commit_in_txn(conn, B, "o", work, 5, "ck2", {"ETag": "n"}, 9)
        except Conflict as err:
            return err.message
        return "committed"

    refused = await db.run(commit_in_a_batch)
    assert refused == ("cannot store ais://b/o: other objects are named o/..."
                       " (an object cannot also be a directory)")
    assert work.exists()  # left for the caller
    assert await store.lookup(B, "o") == before  # size, checksum, version and metadata


async def test_one_batch_sees_its_own_commits(store: Store, db: Database) -> None:
    """A job commits a batch in one transaction with one read of the catalog: names repeated or
    nested within the batch get the versions and conflicts they would get one by one."""
    await put(store, "old", b"0")
    await put(store, "dir/in", b"0")
    names = ["x", "x", "n", "n/m", "p/q", "p", "old/y", "dir", "old"]

    def commit_all(conn: sqlite3.Connection) -> list[str]:
        view = CatalogView(conn, B, names)
        out = []
        for i, name in enumerate(names):
            work = store.work_file(B, name, "job", f".{i}")
            Path(work).write_bytes(name.encode())
            try:
                out.append(store.commit_in_txn(conn, B, name, work, 1, "", {}, 0, view).version)
            except Conflict as err:
                out.append(err.message)
                os.unlink(work)
        return out

    got = await db.run(commit_all)
    assert got[:3] == ["1", "2", "1"]
    assert "ais://b/n is an object" in got[3]
    assert got[4] == "1" and "it is a directory of other objects (e.g. ais://b/p/q)" in got[5]
    assert "ais://b/old is an object" in got[6]
    assert "(e.g. ais://b/dir/in)" in got[7]
    assert got[8] == "2"
    listed = [a.name for a in await store.list_objects(B, "", "", 100)]
    assert listed == ["dir/in", "n", "old", "p/q", "x"]
    assert store.object_path(B, "x").read_bytes() == b"x"


@pytest.mark.parametrize("mountpaths", [1, 2])
async def test_recorded_downloads_get_the_next_version(db: Database, tmp_path: Path,
                                                       mountpaths: int) -> None:
    """Objects a worker placed get version 1, then one more per overwrite (twice in one batch
    too), whether SQLite computes it (one mountpath) or the catalog view (several); none when
    the bucket's versioning is off."""
    store = Store(db, [tmp_path / f"mp{i}" for i in range(mountpaths)], "node1")
    await store.create_bucket(B)
    off = Bucket("ais", "off")
    await store.create_bucket(off, {"versioning": {"enabled": False}})
    await put(store, "put", b"0")
    await put(store, "odd", b"0")
    await db.run(lambda c: c.execute("UPDATE objects SET version = 'v7' WHERE name = 'odd'"))
    for bck in (B, off):
        await db.run(lambda c, b=bck: store.record_placed(
            c, b, [(n, 1, "ck", '{"source":"s"}', 5) for n in ["a", "b", "b", "put", "odd"]]))
        await db.run(lambda c, b=bck: store.record_placed(c, b, [("a", 2, "ck2", "{}", 6)]))
    got = {n: await store.lookup(B, n) for n in ["a", "b", "put", "odd"]}
    assert {n: a.version for n, a in got.items() if a} == {"a": "2", "b": "2", "put": "2",
                                                           "odd": "1"}
    a = got["a"]
    assert a is not None and (a.size, a.cksum, a.atime_ns, a.custom) == (2, "ck2", 6, {})
    assert {(await store.lookup(off, n) or a).version for n in ["a", "b"]} == {""}


async def test_too_long_name_is_a_bad_request(store: Store) -> None:
    with pytest.raises(BadRequest, match="too long"):
        await put(store, "d/" + "a" * 300, b"1")
    assert await store.list_objects(B, "", "", 10) == []


async def test_delete_object(store: Store) -> None:
    await put(store, "x/y", b"1")
    await store.delete_object(B, "x/y")
    assert not store.object_path(B, "x/y").exists()
    with pytest.raises(NotFound, match="ais://b/x/y doesn't exist"):
        await store.delete_object(B, "x/y")


async def test_missing_bucket_errors(store: Store) -> None:
    other = Bucket("ais", "nob")
    for call in (store.lookup(other, "o"), store.delete_object(other, "o"),
                 store.list_objects(other, "", "", 10), put(store, "o", b"", other)):
        with pytest.raises(NotFound, match='bucket "ais://nob" does not exist') as info:
            await call
        assert info.value.tcode == "ErrBckNotFound"
    err = store.object_not_found(B, "o")
    assert (err.message, err.tcode) == ("t[node1]: ais://b/o does not exist", "ErrNotFound")


async def test_listing_order_prefix_and_pages(store: Store) -> None:
    names = ["p/obj3", "p/obj1", "q", "p/obj0", "p/obj2", "p/obj4", "p0", "pz", "p/\u00e9"]
    for n in names:
        await put(store, n, n.encode())
    got = [a.name for a in await store.list_objects(B, "", "", 100)]
    assert got == sorted(names, key=lambda s: s.encode())
    page1 = await store.list_objects(B, "p/", "", 2)
    assert [a.name for a in page1] == ["p/obj0", "p/obj1"]
    page2 = await store.list_objects(B, "p/", page1[-1].name, 10)
    assert [a.name for a in page2] == ["p/obj2", "p/obj3", "p/obj4", "p/\u00e9"]
    assert page2[0].size == 6


# -- buckets -------------------------------------------------------------------------------------
async def test_bucket_lifecycle(store: Store, tmp_path: Path) -> None:
    with pytest.raises(Conflict, match='bucket "ais://b" already exists') as info:
        await store.create_bucket(B)
    assert info.value.tcode == "ErrBucketAlreadyExists"
    assert await store.ensure_bucket(Bucket("gcp", "g")) is True
    assert await store.ensure_bucket(Bucket("gcp", "g")) is False
    assert await store.list_buckets() == [B, Bucket("gcp", "g")]
    assert await store.list_buckets("gcp") == [Bucket("gcp", "g")]
    await put(store, "o", b"1")
    await store.destroy_bucket(B)
    assert not any((mp / "ais" / "b").exists() for mp in store.mountpaths)
    with pytest.raises(NotFound, match='bucket "ais://b" does not exist'):
        await store.destroy_bucket(B)
    await store.create_bucket(B)
    assert await store.list_objects(B, "", "", 10) == []


async def test_bucket_props(store: Store) -> None:
    props = await store.bucket_props(B)
    assert props["checksum"]["type"] == "xxhash2" and props["versioning"]["enabled"] is True
    assert isinstance(props["access"], str) and isinstance(props["created"], str)
    old, new = await store.set_bucket_props(
        B, {"backend_bck": {"name": "x", "provider": "gs"}, "versioning": {"enabled": False}})
    assert old["backend_bck"]["name"] == ""
    assert new["backend_bck"] == {"name": "x", "provider": "gcp",
                                  "namespace": {"uuid": "", "name": ""}}
    assert new["versioning"] == {**props["versioning"], "enabled": False}
    await put(store, "nv", b"1")
    assert (await store.lookup(B, "nv")).version == ""  # type: ignore[union-attr]
    with pytest.raises(BadRequest, match='Backend bucket "ais://y" must be remote'):
        await store.set_bucket_props(B, {"backend_bck": {"name": "y", "provider": "ais"}})
    with pytest.raises(BadRequest):
        await store.set_bucket_props(B, {"versioning": {"enabled": "yes"}})
    with pytest.raises(BadRequest):
        await store.set_bucket_props(B, {"nonsense": 1})
    _, detached = await store.set_bucket_props(B, {"backend_bck": {"name": "", "provider": ""}})
    assert detached["backend_bck"]["provider"] == ""
    await store.reset_bucket_props(B)
    assert (await store.bucket_props(B))["versioning"]["enabled"] is True


async def test_props_survive_restart(store: Store, db: Database, tmp_path: Path) -> None:
    await store.set_bucket_props(B, {"versioning": {"enabled": False}})
    again = Store(db, store.mountpaths, "node1")
    assert (await again.bucket_props(B))["versioning"]["enabled"] is False


# -- work files ----------------------------------------------------------------------------------
async def test_clean_work(store: Store) -> None:
    keep = store.work_path(B, "o", "job-keep")
    drop = store.work_path(B, "o", "job-drop")
    put_tmp = store.work_path(B, "o", "put")
    for p in (keep, drop, put_tmp):
        p.write_bytes(b"x")
    store.clean_work({"job-keep", "put"})
    assert keep.exists() and not drop.exists() and not put_tmp.exists()


def test_hrw_spreads_over_mountpaths(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db")
    try:
        s = Store(db, [tmp_path / f"mp{i}" for i in range(3)], "n")
        used = {s.mountpath(B, f"obj{i}") for i in range(100)}
        assert used == set(s.mountpaths)
        assert s.mountpath(B, "obj7") == s.mountpath(B, "obj7")
        assert os.path.commonpath([s.object_path(B, "x"), s.mountpath(B, "x")])
    finally:
        db.close()
