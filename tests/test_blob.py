"""Blob downloads (`--blob-threshold`, `--blob-conns`): a large object fetched as ranged parts
over several connections at once, each part resumable at its own byte, the whole verified
before it is visible. Real nodes against the fault-injecting origin (and moto for s3)."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from aisdl.engine.blob import BlobSettings, layout, wants_blob
from aisdl.errors import BadRequest
from aisdl.jobs.request import parse_start_request
from aisdl.models import Bucket
from aisdl.sources.base import SourceObject
from helpers import wait_job
from origin import Origin, virtual_bytes

MiB = 1 << 20
BCK = Bucket("ais", "b")
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


@contextlib.contextmanager
def counting(origin: Origin) -> Iterator[dict[str, int]]:
    """How many part requests (a closed `Range`) the origin serves at once, at most."""
    state = {"now": 0, "most": 0}
    lock = threading.Lock()
    real = origin._serve

    async def serve(request: Any, *args: Any) -> Any:
        part = bool(_RANGE.fullmatch(request.headers.get("Range", "")))
        if part:
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
        try:
            return await real(request, *args)
        finally:
            if part:
                with lock:
                    state["now"] -= 1

    origin._serve = serve  # type: ignore[method-assign]
    try:
        yield state
    finally:
        del origin._serve


def parts_asked(origin: Origin, path: str) -> list[tuple[int, int]]:
    """The [start, end] of every part request the origin got, in order."""
    out = []
    for r in origin.requests(path, "GET"):
        m = _RANGE.fullmatch(r.headers.get("Range", ""))
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return out


def blob_job(c: Any, link: str, threshold: int = MiB, conns: int = 4,
             **extra: Any) -> str:
    job: str = c.start_download({"type": "single", "bucket": {"name": "b"}, "link": link,
                                 "object_name": "big", "blob-threshold": threshold,
                                 "blob-num-workers": conns, **extra})
    return job


def no_work_left(node: Any) -> None:
    left = [p for p in node.home.rglob("*") if ".work" in p.parts and p.is_file()
            and p.suffix != ".jnl"]
    assert left == []


# -- the decisions, table-driven -------------------------------------------------------------
@pytest.mark.parametrize(("size", "conns", "sizes"), [
    (6 * MiB, 4, [3 * MiB // 2] * 4),          # small: one part per connection
    (512 * 1024, 8, [512 * 1024]),             # never under 1 MiB
    (2 * MiB + 1, 8, [MiB, MiB, 1]),
    (64 * MiB, 4, [8 * MiB] * 8),              # none under 8 MiB
])
def test_layout(size: int, conns: int, sizes: list[int]) -> None:
    starts = layout(size, conns)
    assert [b - a for a, b in zip(starts, [*starts[1:], size], strict=True)] == sizes


def test_layout_of_a_large_object() -> None:
    size, conns = 4 << 30, 16
    starts = layout(size, conns)
    sizes = [b - a for a, b in zip(starts, [*starts[1:], size], strict=True)]
    assert sizes[:conns] == [8 * MiB] * conns      # the first ones end soon
    assert max(sizes) == sizes[conns] == 32 * MiB  # then equal ones while much is left
    assert sizes[-2] == 8 * MiB                    # small ones at the end
    assert sizes == sorted(sizes[:conns]) + sorted(sizes[conns:], reverse=True)
    assert len(sizes) < 200
    assert all(s % (64 << 10) == 0 for s in starts)


@pytest.mark.parametrize(("settings", "meta", "ranges", "blob"), [
    (BlobSettings(MiB, 8), SourceObject(size=MiB, etag="e"), True, True),
    (BlobSettings(MiB, 8), SourceObject(size=MiB - 1, etag="e"), True, False),
    (BlobSettings(MiB, 8), SourceObject(size=MiB, etag="e"), False, False),  # no ranges
    (BlobSettings(MiB, 8), SourceObject(size=MiB), True, False),  # nothing to hold parts to
    (BlobSettings(MiB, 8), SourceObject(etag="e"), True, False),  # size unknown
    (BlobSettings(MiB, 1), SourceObject(size=MiB, etag="e"), True, False),
    (None, SourceObject(size=MiB, etag="e"), True, False),
])
def test_wants_blob(settings: BlobSettings | None, meta: SourceObject, ranges: bool,
                    blob: bool) -> None:
    assert wants_blob(settings, meta, ranges) is blob


@pytest.mark.parametrize(("fields", "error"), [
    ({"blob-threshold": "1MiB"}, "'blob-threshold' must be an integer"),
    ({"blob-threshold": -1}, "'blob-threshold' must be between 0 and"),
    ({"blob-threshold": MiB, "blob-num-workers": 129}, "'blob-num-workers' must be between"),
    ({"blob-num-workers": 4}, "takes effect only with 'blob-threshold'"),
])
def test_bad_blob_fields_are_refused(fields: dict[str, Any], error: str) -> None:
    body = {"type": "single", "bucket": {"name": "b"}, "link": "http://h/x", **fields}
    with pytest.raises(BadRequest, match=re.escape(error)):
        parse_start_request(__import__("json").dumps(body).encode(), 64)


def test_blob_fields_survive_the_stored_job() -> None:
    body = b'{"type": "single", "bucket": {"name": "b"}, "link": "http://h/x",' \
           b' "blob-threshold": 1048576, "blob-num-workers": 3}'
    spec = parse_start_request(body, 64)
    again = type(spec).from_json(spec.to_json())
    assert (again.blob_threshold, again.blob_conns) == (MiB, 3)


# -- end to end ------------------------------------------------------------------------------
def test_big_object_arrives_over_parallel_ranged_parts(origin, node, ais):
    size = 8 * MiB
    origin.add_virtual("/big", size, seed=1, etag="v1")
    origin.fault("/big", "slow", rate=4 * MiB)  # per connection: parts overlap for a while
    with counting(origin) as seen:
        ais("start", "download", "--blob-threshold", "1MiB", "--blob-conns", "8",
            origin.url_for("/big"), "ais://b/big", "--wait")
    # All eight at once: more than a new host's first limit (it has shown no overload)
    assert seen["most"] == 8
    starts = layout(size, 8)
    assert sorted(parts_asked(origin, "/big")) == [
        (s, e - 1) for s, e in zip(starts, [*starts[1:], size], strict=True)]
    assert node.client().get_object(BCK, "big").content == virtual_bytes(1, size)
    no_work_left(node)


def test_blob_flags_need_each_other(ais):
    r = ais("start", "download", "--blob-conns", "4", "http://h/x", "ais://b/x", check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == \
        "Error: --blob-conns takes effect only with --blob-threshold"
    r = ais("start", "download", "--blob-threshold", "1MiB", "--blob-conns", "0",
            "http://h/x", "ais://b/x", check=False)
    assert r.returncode == 2 and "--blob-conns" in r.stderr and "Traceback" not in r.stderr


def test_source_without_ranges_falls_back_to_one_stream(origin, node):
    size = 3 * MiB
    origin.add_virtual("/plain", size, seed=2, etag="p1")
    origin.fault("/plain", "reset_at", at=size + 1, honour_range=False)  # 200 to any Range
    c = node.client()
    st = wait_job(c, blob_job(c, origin.url_for("/plain")))
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0)
    assert len(origin.requests("/plain", "GET")) == 1  # the first answer was the object
    assert c.get_object(BCK, "big").content == virtual_bytes(2, size)


def test_small_and_empty_objects_of_a_blob_job_come_whole(origin, node):
    origin.add("/empty", b"")  # `Range: bytes=0-` of nothing: 416
    origin.add_virtual("/small", 300_000, seed=9)
    c = node.client()
    job = c.start_download({"type": "multi", "bucket": {"name": "b"}, "blob-threshold": MiB,
                            "objects": {"empty": origin.url_for("/empty"),
                                        "small": origin.url_for("/small")}})
    st = wait_job(c, job)
    assert (st["finished_cnt"], st["error_cnt"]) == (2, 0), st.get("download_errors")
    assert c.get_object(BCK, "empty").content == b""
    assert c.get_object(BCK, "small").content == virtual_bytes(9, 300_000)
    assert len(origin.requests("/small", "GET")) == 1  # one answer, the whole object
    assert parts_asked(origin, "/small") == []


def test_a_part_cut_midway_is_retried_at_its_own_byte(origin, node):
    size = 6 * MiB
    origin.add_virtual("/cut", size, seed=3, etag="c1")
    origin.add_fault("/cut", "slow", rate=1 << 40, n=1)  # the first answer: as it is
    origin.add_fault("/cut", "reset", n=1)               # one part: cut at its middle
    c = node.client()
    st = wait_job(c, blob_job(c, origin.url_for("/cut")))
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0)
    part = layout(size, 4)[1]  # four parts of this size
    asked = parts_asked(origin, "/cut")
    assert len(asked) == 5  # four parts and one retry
    cut = [(s, e) for s, e in asked if s % part]
    assert len(cut) == 1
    start, end = cut[0]
    assert start == start // part * part + part // 2  # from the byte where it was cut
    assert end == min(start // part * part + part, size) - 1
    assert c.get_object(BCK, "big").content == virtual_bytes(3, size)


def test_node_killed_mid_blob_resumes_its_parts(origin, node):
    size = 8 * MiB
    origin.add_virtual("/k", size, seed=4, etag="k1")
    origin.fault("/k", "slow", rate=MiB)
    c = node.client()
    job = blob_job(c, origin.url_for("/k"))
    deadline = time.monotonic() + 30
    done = 0
    while done < 3 * MiB:
        assert time.monotonic() < deadline
        tasks = c.download_status(job).get("current_tasks") or []
        done = int(tasks[0]["downloaded"]) if tasks else 0
        time.sleep(0.05)
    node.kill9()
    before = len(origin.requests("/k", "GET"))
    origin.clear_fault("/k")
    node.start()
    st = wait_job(node.client(), job, timeout=60)
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0)
    after = origin.requests("/k", "GET")[before:]
    assert after and all(_RANGE.fullmatch(r.headers.get("Range", "")) for r in after)
    assert all(r.headers.get("If-Range") == '"k1"' for r in after)
    again = sum(e - s + 1 for s, e in parts_asked(origin, "/k")[-len(after):])
    assert again <= size - done  # nothing the node had reported done was fetched again
    assert node.client().get_object(BCK, "big").content == virtual_bytes(4, size)
    no_work_left(node)


def test_a_source_that_changes_mid_blob_never_splices(origin, node):
    size = 4 * MiB
    origin.add_virtual("/v", size, seed=5, etag="old")
    origin.fault("/v", "slow", rate=MiB)
    c = node.client()
    job = blob_job(c, origin.url_for("/v"), limits={"connections": 1})  # one part at a time
    deadline = time.monotonic() + 30
    while not parts_asked(origin, "/v"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    origin.add_virtual("/v", size, seed=6, etag="new")  # parts asked from now on: If-Range fails
    origin.fault("/v", "slow", rate=8 * MiB)
    st = wait_job(c, job, timeout=60)
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0)
    assert c.get_object(BCK, "big").content == virtual_bytes(6, size)  # the new one, whole
    first_new = next(i for i, r in enumerate(origin.requests("/v", "GET"))
                     if "If-Range" not in r.headers and i)
    assert first_new > 1  # an old part was done, then the blob started over
    no_work_left(node)


def test_a_source_that_keeps_changing_fails_cleanly(origin, node):
    size = 4 * MiB
    origin.add_virtual("/w", size, seed=0, etag="w0")
    origin.fault("/w", "slow", rate=4 * MiB)
    stop = threading.Event()

    def churn() -> None:
        k = 0
        while not stop.wait(0.1):
            k += 1
            origin.add_virtual("/w", size, seed=k, etag=f"w{k}")

    changer = threading.Thread(target=churn)
    changer.start()
    try:
        c = node.client()
        st = wait_job(c, blob_job(c, origin.url_for("/w"), limits={"connections": 1}),
                      timeout=60)
    finally:
        stop.set()
        changer.join()
    assert (st["finished_cnt"], st["error_cnt"]) == (0, 1)
    errors = st.get("download_errors") or []
    assert "the source changed during the blob download" in errors[0]["error"]
    assert not [p for p in node.home.rglob("big") if p.is_file()]
    no_work_left(node)


def test_the_job_connection_limit_bounds_the_parts(origin, node):
    size = 4 * MiB
    origin.add_virtual("/lim", size, seed=7, etag="l1")
    origin.fault("/lim", "slow", rate=4 * MiB)
    c = node.client()
    with counting(origin) as seen:
        st = wait_job(c, blob_job(c, origin.url_for("/lim"), conns=8,
                                  limits={"connections": 2}))
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0)
    assert seen["most"] == 2
    assert c.get_object(BCK, "big").content == virtual_bytes(7, size)


def test_a_throttled_blob_keeps_to_its_rate(origin, node):
    size = 2 * MiB
    origin.add_virtual("/t", size, seed=8, etag="t1")
    c = node.client()
    started = time.monotonic()
    st = wait_job(c, blob_job(c, origin.url_for("/t"),
                              limits={"bytes_per_hour": 4 * MiB * 3600}))
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0)
    assert parts_asked(origin, "/t") == [(0, MiB - 1), (MiB, size - 1)]  # through the throttle
    assert time.monotonic() - started >= 0.25  # 2 MiB at 4 MiB/s (one second's burst allowed)
    assert c.get_object(BCK, "big").content == virtual_bytes(8, size)


def test_s3_blob_through_the_providers_ranged_reads(s3_server, tmp_path):
    from conftest import Node, _free_port
    from origin import payload

    bucket = s3_server.new_bucket()
    data = payload("s3-blob", 3 * MiB + 12345)
    s3_server.put(bucket, "big.bin", data)
    n = Node(_free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--retry-delay", "50ms"), env=s3_server.env)
    n.start()
    try:
        c = n.client()
        st = wait_job(c, blob_job(c, f"s3://{bucket}/big.bin"))
        assert (st["finished_cnt"], st["error_cnt"]) == (1, 0), st.get("download_errors")
        assert c.get_object(BCK, "big").content == data
        assert re.search(r"blob \S+: 3158073 bytes, 4 of its 4 parts", n.log())
    finally:
        n.stop()
