"""Operations on many objects at once (AIS `ListRange`): delete-listrange, evict-listrange and
prefetch-listrange, through the `aistore` SDK (pinned version), the REST API and `ais`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aistore.sdk import Client as SdkClient
from aistore.sdk import ListObjectFlag
from aistore.sdk.errors import InvalidBckProvider
from aistore.sdk.multiobj import ObjectRange
from aistore.sdk.types import AggregatedJobSnap, JobStatus

from aisdl.db import Database
from aisdl.jobs.multiobj import ACT_DELETE, MultiObjOps, parse_selection
from aisdl.models import Bucket
from conftest import Ais, Node
from helpers import free_port, wait_job
from helpers_app import InProcessNode
from origin import payload

WAIT = 20.0  # seconds: an operation on a few objects ends far sooner


def until(check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll `check()` until it is truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not true within {timeout}s: {check}"
        time.sleep(0.05)
    return value


# -- an ais bucket, through the SDK ----------------------------------------------------------------


def _filled(sdk: SdkClient, name: str, objects: list[str]) -> Any:
    bck = sdk.bucket(name).create(exist_ok=True)
    for obj in objects:
        bck.object(obj).get_writer().put_content(obj.encode())
    return bck


def _names(bck: Any) -> list[str]:
    return sorted(e.name for e in bck.list_all_objects())


def test_sdk_delete_list_removes_the_listed_objects(sdk: SdkClient, inproc: InProcessNode) -> None:
    objs = [f"obj-{i}.txt" for i in range(5)] + ["dir/a b+c.txt"]
    bck = _filled(sdk, "del-list", objs)
    job = bck.objects(obj_names=objs[1:]).delete()
    assert isinstance(job, str) and job
    until(lambda: _names(bck) == ["obj-0.txt"])
    bucket_dir = inproc.config.data_dirs[0] / "ais" / "del-list"
    on_disk = sorted(str(p.relative_to(bucket_dir)) for p in bucket_dir.rglob("*"))
    assert on_disk == ["obj-0.txt"]  # the bytes are gone too, and the emptied directory


def test_sdk_delete_template_and_prefix(sdk: SdkClient) -> None:
    objs = [f"shard-{i:02d}.tar" for i in range(10)] + ["keep/a", "logs/1", "logs/2"]
    bck = _filled(sdk, "del-tmpl", objs)
    bck.objects(obj_template="shard-{02..07}.tar").delete()
    until(lambda: len(_names(bck)) == 7)
    assert _names(bck) == ["keep/a", "logs/1", "logs/2", "shard-00.tar", "shard-01.tar",
                           "shard-08.tar", "shard-09.tar"]
    bck.objects(obj_range=ObjectRange(prefix="logs/")).delete()  # a template with no range
    until(lambda: len(_names(bck)) == 5)
    assert "logs/1" not in _names(bck)


def test_delete_prefix_non_recursive(sdk: SdkClient, inproc: InProcessNode) -> None:
    bck = _filled(sdk, "del-nr", ["logs/1", "logs/2", "logs/old/3", "logsx"])
    r = requests.delete(f"{inproc.endpoint}/v1/buckets/del-nr", timeout=5, json={
        "action": "delete-listrange", "value": {"template": "logs/", "non-recurs": True}})
    assert r.status_code == 200, r.text
    until(lambda: _names(bck) == ["logs/old/3", "logsx"])


def test_evict_and_prefetch_refuse_an_ais_bucket(sdk: SdkClient, inproc: InProcessNode) -> None:
    bck = _filled(sdk, "no-backend", ["a"])
    with pytest.raises(InvalidBckProvider):  # the SDK refuses before asking
        bck.objects(obj_names=["a"]).evict()
    for method, action in (("DELETE", "evict-listrange"), ("POST", "prefetch-listrange")):
        r = requests.request(method, f"{inproc.endpoint}/v1/buckets/no-backend",
                             json={"action": action, "value": {"objnames": ["a"]}}, timeout=5)
        assert r.status_code == 400, r.text
        assert "expecting remote bucket (have ais://no-backend)" in r.json()["message"]
    assert _names(bck) == ["a"]


@pytest.mark.parametrize(("value", "says"), [
    ({"objnames": ["a"], "bogus": 1}, "unknown field 'bogus'"),
    ({"objnames": ["a"], "latest-ver": True}, "unknown field 'latest-ver'"),  # prefetch's only
    ({"objnames": "a"}, "'objnames' must be an array of strings"),
    ({"objnames": ["a", 5]}, "'objnames' must be an array of strings"),
    ({"objnames": ["a"], "template": "b"}, "mutually exclusive"),
    ({"objnames": ["../a"]}, 'invalid object name "../a"'),
    ({"template": "a-{1..}"}, "invalid 'bash' template"),
    ({"template": "a-{0..99999999}"}, "too many values"),
    ({"template": 5}, "'template' must be a string"),
    ({"objnames": ["a"], "coer": 1}, "'coer' must be true or false"),
    ({"objnames": ["a"], "num-workers": True}, "'num-workers' must be an integer"),
    ({"objnames": ["a"], "num-workers": -2}, "'num-workers' must not be negative"),
    (["a"], "'value' must be a JSON object"),
    (None, "'value' must be a JSON object"),
])
def test_bad_selection_is_refused_and_nothing_changes(sdk: SdkClient, inproc: InProcessNode,
                                                      value: Any, says: str) -> None:
    bck = _filled(sdk, "bad-input", ["a", "b"])
    r = requests.delete(f"{inproc.endpoint}/v1/buckets/bad-input",
                        json={"action": "delete-listrange", "value": value}, timeout=5)
    assert r.status_code == 400, r.text
    assert says in r.json()["message"]
    time.sleep(0.1)
    assert _names(bck) == ["a", "b"]


def test_a_list_is_bounded(sdk: SdkClient, inproc: InProcessNode) -> None:
    """A million names is the most; a longer list is refused whole (and parsed off the loop:
    the node answers meanwhile)."""
    bck = _filled(sdk, "bounded", ["a"])
    names = [f"n{i}" for i in range(1_000_001)]
    r = requests.delete(f"{inproc.endpoint}/v1/buckets/bounded",
                        json={"action": "delete-listrange", "value": {"objnames": names}},
                        timeout=60)
    assert r.status_code == 400, r.text
    assert "too many object names: 1000001 (at most 1000000" in r.json()["message"]
    r = requests.delete(f"{inproc.endpoint}/v1/buckets/bounded",
                        json={"action": "delete-listrange", "value": {"objnames": names[1:]}},
                        timeout=60)
    assert r.status_code == 200, r.text
    assert _names(bck) == ["a"]  # none of those million names was there


# -- the record of a delete: missing names reported for a list (AIS), not for a range ------------
def test_missing_listed_names_are_the_operations_error(tmp_path: Path) -> None:
    async def scenario() -> tuple[Any, Any]:
        from aisdl.store.store import Store

        db = Database(tmp_path / "db.sqlite")
        store = Store(db, [tmp_path / "mp"], "node1")
        bck = Bucket("ais", "b")
        await store.create_bucket(bck)

        async def chunks(data: bytes) -> Any:
            yield data

        for name in ("x-1", "x-2", "x-3"):
            await store.put_object(bck, name, chunks(b"12345"))
        ops = MultiObjOps(store)
        listed = ops.start(ACT_DELETE, bck, parse_selection(
            ACT_DELETE, {"objnames": ["x-1", "gone-1", "x-2", "x-1", "gone-2"]})[0])
        ranged = ops.start(ACT_DELETE, bck, parse_selection(
            ACT_DELETE, {"template": "x-{3..9}"})[0])
        await asyncio.gather(*ops._tasks.values())
        left = await store.list_objects(bck, "", "", 10)
        assert left == []
        db.close()
        return ops.get(listed), ops.get(ranged)

    listed, ranged = asyncio.run(scenario())
    assert (listed.objects, listed.bytes, listed.error_count) == (2, 10, 2)
    assert listed.status_json()["err"] == "ais://b/gone-1 does not exist (and 1 more error)"
    assert listed.status_json()["end_time"] > 0
    assert (ranged.objects, ranged.error_count, ranged.error) == (1, 0, "")
    # the forms status queries answer with, as the SDK reads them
    snaps = AggregatedJobSnap.model_validate({"t[node1]": [listed.snap_json()]})
    snap = snaps.list_snapshots()[0]
    assert (snap.id, snap.kind, snap.bucket.name) == (listed.id, "delete-listrange", "b")
    assert snap.stats is not None and (snap.stats.objects, snap.stats.bytes) == (2, 10)
    assert snaps.all_idle() and snap.end_time.startswith("20")
    status = JobStatus.model_validate(listed.status_json())
    assert status.uuid == listed.id and status.end_time > 0 and "gone-1" in status.err


# -- remote buckets: prefetch (a download job) and evict ----------------------------------------
@pytest.fixture
def gcs_node(tmp_path: Path, gcs_server: Any) -> Iterator[Node]:
    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--retry-delay", "50ms"), env=dict(gcs_server.env))
    n.start()
    yield n
    n.stop()


@pytest.fixture
def gais(gcs_node: Node, tmp_path: Path) -> Ais:
    home = tmp_path / "cli-home"
    home.mkdir()
    return Ais(gcs_node, home, tmp_path)


def _cached(sdk: SdkClient, bck: Any) -> list[str]:
    return sorted(e.name for e in bck.list_all_objects(flags=[ListObjectFlag.CACHED]))


def test_sdk_prefetch_then_evict_a_cloud_bucket(gcs_server: Any, gcs_node: Node) -> None:
    src = gcs_server.new_bucket()
    names = [f"img/{i}.jpg" for i in range(6)]
    gcs_server.put_many(src, [(n, payload(n, 700)) for n in names])
    sdk = SdkClient(gcs_node.endpoint)
    bck = sdk.bucket(src, provider="gcp")
    job = bck.objects(obj_names=names[1:]).prefetch()
    assert job.startswith("dnl-")
    st = wait_job(gcs_node, job)
    assert (st["finished_cnt"], st["error_cnt"], st["total"]) == (5, 0, 5), st
    assert _cached(sdk, bck) == names[1:]
    assert bck.object(names[3]).get_reader().read_all() == payload(names[3], 700)
    # the job is a download job like any other
    assert [j["id"] for j in gcs_node.client().list_downloads()] == [job]

    bck.objects(obj_names=names[1:3]).evict()
    until(lambda: _cached(sdk, bck) == names[3:])
    assert len(list(bck.list_all_objects())) == 6  # the remote keeps them all

    job = bck.objects(obj_template="img/{0..5}.jpg").prefetch()
    st = wait_job(gcs_node, job)
    assert (st["finished_cnt"], st["skipped_cnt"], st["error_cnt"]) == (6, 3, 0)
    assert _cached(sdk, bck) == names

    # ranges in a directory part: the names are kept whole (not cut to their last element)
    gcs_server.put_many(src, [(f"part-{i}/x.bin", payload(str(i), 50)) for i in range(2)])
    st = wait_job(gcs_node, bck.objects(obj_template="part-{0..1}/x.bin").prefetch())
    assert (st["finished_cnt"], st["error_cnt"]) == (2, 0)
    assert _cached(sdk, bck) == names + ["part-0/x.bin", "part-1/x.bin"]


def test_cli_prefetch_evict_rm(gcs_server: Any, gais: Ais) -> None:
    src = gcs_server.new_bucket()
    names = [f"shard-{i}.tar" for i in range(4)] + ["dir/x", "dir/y"]
    gcs_server.put_many(src, [(n, payload(n, 300)) for n in names])
    gais("create", "lpr")
    gais("bucket", "props", "set", "ais://lpr", f"backend_bck=gcp://{src}")

    out = gais("prefetch", "ais://lpr/dir/", "--wait").stdout
    assert out.startswith("prefetch-objects[dnl-")
    assert "Done: 2 objects (0 already up to date), 0 errors" in out
    out = gais("prefetch", "ais://lpr", "--template", "shard-{1..2}.tar", "--wait").stdout
    assert "Done: 2 objects" in out
    shown = gais("show", "job", "download").stdout
    assert "prefetch ais://lpr: template:shard-{1..2}.tar" in shown
    lpr = Bucket("ais", "lpr")

    def cached() -> list[str]:
        return [e["n"] for e in gais.node.client().list_objects(lpr, cached=True)]

    assert cached() == ["dir/x", "dir/y", "shard-1.tar", "shard-2.tar"]

    out = gais("evict", "ais://lpr", "--list", "dir/x,shard-1.tar").stdout
    assert out.startswith("evict-objects[") and "[dir/x shard-1.tar] evict from ais://lpr" in out
    until(lambda: cached() == ["dir/y", "shard-2.tar"])

    # a remote-backed bucket's objects are not deleted here: refused, nothing changes
    res = gais("object", "rm", "ais://lpr", "--list", "dir/y", check=False)
    assert res.returncode == 2 and res.stderr.startswith("Error: delete-listrange: ais://lpr")
    # a listed name that is not stored: prefetch's job counts it as that file's error
    res = gais("prefetch", "ais://lpr", "--list", "nope", "--wait", check=False)
    assert res.returncode == 1 and "1 errors" in res.stdout


def test_cli_rm_on_an_ais_bucket(ais: Ais) -> None:
    ais("create", "plain")
    for name in ("a", "b", "c", "sub/d", "sub/e"):
        ais.node.client().put_object(Bucket("ais", "plain"), name, b"x")

    def listed() -> list[str]:
        return [e["n"] for e in ais.node.client().list_objects(Bucket("ais", "plain"))]

    assert ais("object", "rm", "ais://plain/a").stdout == 'deleted "a" from ais://plain\n'
    out = ais("object", "rm", "ais://plain", "--list", "b,c").stdout
    assert out.startswith("delete-objects[") and out.endswith("[b c] rm from ais://plain\n")
    until(lambda: listed() == ["sub/d", "sub/e"])
    ais("object", "rm", "ais://plain/sub/")
    until(lambda: listed() == [])

    ais.node.client().put_object(Bucket("ais", "plain"), "z", b"x")
    res = ais("object", "rm", "ais://plain", check=False)  # every object: only with --all
    assert res.returncode == 2 and "--list, --template, --prefix or --all" in res.stderr
    res = ais("object", "rm", "ais://plain", "--list", "a", "--template", "b", check=False)
    assert res.returncode == 2 and "mutually exclusive" in res.stderr
    res = ais("evict", "ais://plain", "--list", "a", check=False)
    assert res.returncode == 2 and "expecting remote bucket (have ais://plain)" in res.stderr
    assert listed() == ["z"]
    ais("object", "rm", "ais://plain", "--all")
    until(lambda: listed() == [])


def test_sdk_waits_on_a_delete_and_reads_its_status(sdk: SdkClient) -> None:
    objs = [f"w-{i}" for i in range(4)]
    bck = _filled(sdk, "del-wait", objs)
    job = bck.objects(obj_names=objs[:2]).delete()
    sdk.job(job).wait(timeout=20, verbose=False)  # kind found by the id, as the SDK does
    assert _names(bck) == objs[2:]
    status = sdk.job(job, "delete-listrange").status()
    assert status.end_time > 0 and not status.err
    assert sdk.cluster().list_running_jobs("delete-listrange") == []  # it has ended
    missing = bck.objects(obj_names=["w-2", "nope"]).delete()
    sdk.job(missing, "delete-listrange").wait(timeout=20, verbose=False)
    assert "nope" in sdk.job(missing, "delete-listrange").status().err
    assert _names(bck) == ["w-3"]
