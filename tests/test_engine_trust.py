"""What a user must be able to trust of every transfer, whatever the source does: it sends
exactly its own job's headers, it never stores an empty object for an answer that carried no
body, and it ends: a stalled, trickling, endless or never-resuming source costs a bounded
number of requests and a bounded time, then one clear per-file error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from multidict import CIMultiDict

from aisdl.client import Client
from aisdl.config import TransferLimits
from aisdl.engine.curl import CurlEngine
from aisdl.engine.fetch import FetchRequest
from aisdl.errors import BadRequest, SourceError
from aisdl.models import Bucket
from aisdl.sources.base import SourceObject
from aisdl.sources.http import judge, request_headers
from conftest import Node
from helpers import free_port, wait_job
from origin import Origin, payload, virtual_bytes

PATHS = {"libcurl": {}, "aiohttp": {"bytes_per_hour": 10**12}}  # a throttled job: aiohttp
ATTEMPTS = 3  # --retry-attempts of the nodes below


def start_node(tmp_path: Path, *args: str) -> Node:
    node = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
                extra_args=("--retry-delay", "10ms", "--retry-attempts", str(ATTEMPTS), *args))
    node.start()
    return node


@pytest.fixture(params=["workers", "in-process"])
def any_node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    """A node fetching on worker processes, and one fetching in its own process."""
    procs = "2" if request.param == "workers" else "0"
    node = start_node(tmp_path, "--fetch-procs", procs)
    yield node
    node.stop()


@pytest.fixture
def strict_node(tmp_path: Path) -> Iterator[Node]:
    """A node with small limits, so that every rule shows within seconds; it fetches on
    worker processes, which must know the node's limits."""
    node = start_node(tmp_path, "--fetch-procs", "2", "--stall-timeout", "1s", "--min-rate", "8KiB",
                      "--rate-window", "1s", "--max-object-size", "1MiB")
    yield node
    node.stop()


def single(c: Client, origin: Origin, path: str, bucket: str, **spec: object) -> str:
    return c.start_download({"type": "single", "bucket": {"name": bucket},
                             "link": origin.url_for(path), "object_name": path.strip("/"),
                             **spec})


def only_error(st: dict) -> str:
    assert (st["finished_cnt"], st["error_cnt"]) == (0, 1), st
    [err] = st["download_errors"]
    return str(err["error"])


def work_files(node: Node) -> list[Path]:
    return [p for p in node.home.rglob("*") if ".work" in p.parts and p.is_file()]


# -- headers ---------------------------------------------------------------------------------
def test_a_transfer_sends_only_its_own_headers(origin, any_node):
    """libcurl handles are reused: a job without headers must not send the previous job's
    token, nor its conditional or range headers (a leftover If-Modified-Since got a 304 that
    stored an empty object)."""
    c = any_node.client()
    origin.add("/a/secret.bin", payload("secret", 50_000))
    origin.add("/b/plain.bin", payload("plain", 60_000))
    auth = {"Authorization": ["Bearer X"]}
    for _ in range(2):  # the second time the object is stored: a conditional GET
        st = wait_job(c, single(c, origin, "/a/secret.bin", "a", headers=auth))
        assert (st["finished_cnt"], st["error_cnt"]) == (1, 0), st
    first, again = origin.requests("/a/secret.bin")
    assert first.headers["Authorization"] == again.headers["Authorization"] == "Bearer X"
    assert "If-None-Match" in again.headers

    st = wait_job(c, single(c, origin, "/b/plain.bin", "b"))
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0), st
    [got] = origin.requests("/b/plain.bin")
    leaked = {"Authorization", "If-None-Match", "If-Modified-Since", "Range", "If-Range"}
    assert leaked & set(got.headers) == set(), dict(got.headers)
    assert c.get_object(Bucket("ais", "b"), "b/plain.bin").content == payload("plain", 60_000)


@pytest.mark.parametrize(("name", "value"), [
    ("X-Note", "a\r\nInjected: yes"), ("X-Note", "a\nb"), ("X-Note", "a\x00b"),
    ("X-No\r\nte", "a"), ("Bad Name", "a"), ("", "a")])
def test_a_header_that_could_inject_lines_is_refused(name, value):
    with pytest.raises(SourceError) as err:
        request_headers({name: [value]}, 0, None, None)
    assert not err.value.transient
    assert "header" in err.value.message


@pytest.mark.parametrize("path", PATHS)
def test_a_job_whose_header_has_a_line_break_sends_nothing(origin, node, path):
    """The API may refuse such a header itself; if one gets through, the transfer refuses it:
    one per-file error, and not one request reaches the source."""
    origin.add("/inj.bin", payload("inj", 1000))
    c = node.client()
    try:
        job = single(c, origin, "/inj.bin", "inj", limits=PATHS[path],
                     headers={"X-Note": ["a\r\nInjected: yes"]})
    except BadRequest:
        return
    assert "header" in only_error(wait_job(c, job))
    assert origin.hits("/inj.bin") == 0


# -- what an answer means --------------------------------------------------------------------
STORED = SourceObject(etag="abc", size=3)
OK = CIMultiDict({"Content-Length": "3", "ETag": '"abc"'})


@pytest.mark.parametrize(("status", "start", "stored", "trusted"), [
    (304, 0, STORED, "unchanged"),         # our conditional GET, confirmed
    (304, 0, None, "error"),               # nothing was asked: no stored copy to confirm
    (304, 5, STORED, "error"),             # a resume is not a conditional GET
    (304, 0, SourceObject(size=3), "error"),  # nothing to be conditional on was sent
    (200, 0, None, "body"), (200, 0, STORED, "body"),
    (204, 0, None, "error"), (203, 0, None, "error"), (302, 0, None, "error"),
    (101, 0, None, "error"), (404, 0, None, "error"),
])
def test_only_a_304_to_our_own_conditional_get_means_unchanged(status, start, stored, trusted):
    headers = CIMultiDict(OK)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-2/3"
    if trusted == "error":
        with pytest.raises(SourceError):
            judge(status, headers, start, stored)
    elif trusted == "unchanged":
        assert judge(status, headers, start, stored) is None
    else:
        assert judge(status, headers, start, stored) is not None


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("status", [304, 204, 302])
def test_an_answer_without_a_body_is_an_error_not_an_empty_object(origin, node, path, status):
    origin.add("/nobody.bin", payload("nobody", 5000))
    origin.fault("/nobody.bin", "status", status=status)
    c = node.client()
    err = only_error(wait_job(c, single(c, origin, "/nobody.bin", "nb", limits=PATHS[path])))
    assert str(status) in err
    assert [o["n"] for o in c.list_objects(Bucket("ais", "nb"))] == []


# -- stalls, trickles, endless bodies --------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_a_body_that_stops_is_cut_and_resumed_from_its_byte(origin, strict_node, path):
    """No --timeout on the job: the node's stall window still cuts it, and the retry asks
    for the bytes that had not arrived."""
    size = 300_000
    origin.add_virtual("/stop.bin", size, seed="stop")
    origin.fault("/stop.bin", "stall", after=100_000, seconds=60, n=1)
    c = strict_node.client()
    st = wait_job(c, single(c, origin, "/stop.bin", "stop", limits=PATHS[path]), timeout=30)
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0), st
    ranges = [r.headers.get("Range") for r in origin.requests("/stop.bin")]
    assert ranges == [None, "bytes=100000-"]
    assert c.get_object(Bucket("ais", "stop"), "stop.bin").content == virtual_bytes("stop", size)


@pytest.mark.parametrize("path", PATHS)
def test_a_source_that_never_answers_ends_as_an_error(origin, strict_node, path):
    origin.add("/mute.bin", payload("mute", 1000))
    origin.fault("/mute.bin", "hang", seconds=600)
    c = strict_node.client()
    began = time.monotonic()
    err = only_error(wait_job(c, single(c, origin, "/mute.bin", "mute", limits=PATHS[path]),
                              timeout=30))
    assert "timed out" in err
    assert origin.hits("/mute.bin") == ATTEMPTS
    assert time.monotonic() - began < 20


@pytest.mark.parametrize("path", PATHS)
def test_a_trickle_ends_as_a_too_slow_error(origin, strict_node, path):
    """A byte every 10 ms keeps any stall window from firing, and never finishes 100 KB. Each
    retry resumes a little further on, which is no reason to try again and again."""
    origin.add("/drip.bin", payload("drip", 100_000))
    origin.fault("/drip.bin", "slow", rate=100, chunk=1)
    c = strict_node.client()
    err = only_error(wait_job(c, single(c, origin, "/drip.bin", "drip", limits=PATHS[path]),
                              timeout=60))
    assert err.startswith("transfer slower than 8KiB/s for 1s"), err
    assert origin.hits("/drip.bin") == ATTEMPTS
    assert work_files(strict_node) == []


@pytest.mark.parametrize("path", PATHS)
def test_an_endless_body_ends_at_the_node_s_object_size_limit(origin, strict_node, path):
    origin.add("/endless.bin", payload("endless", 1000))
    origin.fault("/endless.bin", "endless")
    c = strict_node.client()
    err = only_error(wait_job(c, single(c, origin, "/endless.bin", "e", limits=PATHS[path]),
                              timeout=30))
    assert "larger than the node's limit of 1MiB" in err, err
    assert origin.hits("/endless.bin") == 1  # not something a retry can fix
    assert work_files(strict_node) == []


@pytest.mark.parametrize("path", PATHS)
def test_an_announced_size_over_the_limit_is_refused_before_the_body(origin, strict_node, path):
    origin.add_virtual("/huge.bin", 3 << 20, seed="huge", etag="h")
    c = strict_node.client()
    err = only_error(wait_job(c, single(c, origin, "/huge.bin", "h", limits=PATHS[path])))
    assert "larger than the node's limit of 1MiB" in err, err
    assert origin.hits("/huge.bin") == 1
    assert work_files(strict_node) == []


# -- retries end -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_a_source_that_ignores_range_and_resets_ends_after_bounded_requests(
        origin, strict_node, path):
    """Every answer starts over at byte 0 and is cut near 700 KB, a little further one time
    than the time before: bytes keep arriving, but the file never gets further than it once
    was, so the retries run out (they went on while any attempt beat the one before)."""
    origin.add_virtual("/norange.bin", 1_000_000, seed="nr", etag="nr")
    for _ in range(50):
        for at in (700_000, 690_000):
            origin.add_fault("/norange.bin", "reset_at", at=at, honour_range=False, n=1)
    c = strict_node.client()
    err = only_error(wait_job(c, single(c, origin, "/norange.bin", "nr", limits=PATHS[path]),
                              timeout=60))
    assert "connection lost" in err, err
    assert origin.hits("/norange.bin") == ATTEMPTS
    assert work_files(strict_node) == []


def test_resumed_progress_renews_the_retry_budget(origin, strict_node):
    """A source that is cut again and again, but resumes each time a little further on,
    finishes: each retry made real progress."""
    size = 800_000
    origin.add_virtual("/steps.bin", size, seed="steps", etag="steps")
    for at in range(100_000, size, 100_000):
        origin.add_fault("/steps.bin", "reset_at", at=at, n=1)
    c = strict_node.client()
    st = wait_job(c, single(c, origin, "/steps.bin", "steps"), timeout=30)
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 0), st
    assert origin.hits("/steps.bin") == 8
    assert c.get_object(Bucket("ais", "steps"), "steps.bin").content == virtual_bytes(
        "steps", size)


# -- waiting for our own connection is not a stall -------------------------------------------
class _Events:
    def started(self, offset: int, total: int | None) -> None:
        pass

    def advanced(self, nbytes: int) -> None:
        pass


def test_a_transfer_queued_for_a_connection_is_not_cut_as_stalled(origin, tmp_path):
    """With one connection per host, the second transfer waits for the first (1.5 s, a byte
    every few ms): that wait is ours, not the source's silence, and a 0.5 s stall window must
    not cut it."""
    origin.add("/q.bin", payload("q", 30_000))
    origin.fault("/q.bin", "slow", rate=20_000, chunk=200)

    async def both() -> list[object]:
        engine = CurlEngine(1, 1, True, TransferLimits(stall_timeout=0.5, min_rate=0))
        try:
            reqs = [FetchRequest(origin.url_for("/q.bin"), str(tmp_path / f"w{i}"))
                    for i in range(2)]
            return await asyncio.gather(*(engine.attempt(r, _Events(), 0, None) for r in reqs),
                                        return_exceptions=True)
        finally:
            engine.close()

    results = asyncio.run(both())
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert [(tmp_path / f"w{i}").read_bytes() for i in range(2)] == [payload("q", 30_000)] * 2
