"""Random fault sequences through the origin, real jobs on a real node, and what must hold
whatever happened: every job ends; finished + errors = total (skipped files are counted within
finished); every failed file is in the job's error list and nothing of it is stored; every stored
object is byte-identical to the source's; every request carried exactly its own job's headers;
and once the faults are gone, running the job again completes it.

A few examples run with the test suite; more with `HYPOTHESIS_PROFILE=long` (or `AISDL_LONG=1`),
300 of them unless `AISDL_EXAMPLES` says how many."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aisdl.client import Client
from aisdl.models import Bucket
from conftest import Node
from helpers import free_port, wait_job
from origin import Origin, Request, virtual_bytes

settings.register_profile("ci", max_examples=10, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=int(os.environ.get("AISDL_EXAMPLES", "300")),
                          deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or (
    "long" if os.environ.get("AISDL_LONG") == "1" else "ci")
settings.load_profile(PROFILE)

ATTEMPTS = 3
MAX_OBJECT = 1 << 20
NODE_ARGS = ("--retry-delay", "10ms", "--retry-attempts", str(ATTEMPTS), "--stall-timeout", "1s",
             "--min-rate", "8KiB", "--rate-window", "1s", "--max-object-size", "1MiB")
JOB_END = 60  # seconds a job may take here: far beyond what its faults can cost


@pytest.fixture(scope="module")
def fault_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node for every example (each example has buckets and paths of its own)."""
    tmp = tmp_path_factory.mktemp("faults")
    node = Node(free_port(), tmp / "home", tmp / "node.log", extra_args=NODE_ARGS)
    node.start()
    yield node
    node.stop()


# -- what an example is --------------------------------------------------------------------
SIZES = st.sampled_from([0, 1, 1000, 70_000, 300_000, 700_000, MAX_OBJECT + 1])
FAULTS = st.one_of(
    st.tuples(st.just("status"), st.fixed_dictionaries(
        {"status": st.sampled_from([500, 503, 404, 304, 204, 302])})),
    st.tuples(st.just("retry_after"), st.fixed_dictionaries(
        {"seconds": st.sampled_from([0, 1])})),
    st.tuples(st.just("reset"), st.just({})),
    st.tuples(st.just("reset_at"), st.fixed_dictionaries(
        {"at": st.integers(0, 800_000), "honour_range": st.booleans()})),
    st.tuples(st.just("stall"), st.fixed_dictionaries(
        {"after": st.integers(0, 200_000), "seconds": st.just(30)})),
    st.tuples(st.just("hang"), st.just({"seconds": 30})),
    st.tuples(st.just("slow"), st.just({"rate": 100, "chunk": 1})),  # a trickle
    st.tuples(st.just("endless"), st.just({})),
    st.tuples(st.just("lying_length"), st.fixed_dictionaries(
        {"delta": st.sampled_from([-500, 1, 5000])})),
)


@dataclass
class File:
    size: int
    gcs: bool  # the source sends an MD5: a well-formed but truncated body can be caught
    faults: list[tuple[str, dict[str, Any]]]
    forever: bool  # the last fault applies to every request, not just one


@dataclass
class Job:
    files: list[File]
    headers: dict[str, list[str]]
    throttled: bool  # the aiohttp path rather than libcurl
    id: str = ""
    paths: list[str] = field(default_factory=list)


def _file(draw: st.DrawFn) -> File:
    gcs = draw(st.booleans())
    faults = draw(st.lists(FAULTS, max_size=3))
    if not gcs:  # a shorter announced length with no checksum is indistinguishable from truth
        faults = [(k, o) for k, o in faults if not (k == "lying_length" and o["delta"] < 0)]
    return File(draw(SIZES), gcs, faults, bool(faults) and draw(st.booleans()))


@st.composite
def jobs(draw: st.DrawFn) -> list[Job]:
    out = []
    for i in range(draw(st.integers(1, 2))):
        token = f"job-{i}-{secrets.token_hex(4)}"
        headers = draw(st.sampled_from([
            {}, {"X-Job": [token]}, {"X-Job": [token], "Authorization": [f"Bearer {token}"]}]))
        files = [_file(draw) for _ in range(draw(st.integers(1, 3)))]
        out.append(Job(files, headers, draw(st.booleans())))
    return out


# -- running one -----------------------------------------------------------------------------
def serve(origin: Origin, example: str, jobs: list[Job]) -> None:
    for j, job in enumerate(jobs):
        for k, f in enumerate(job.files):
            path = f"/{example}/j{j}/f{k}"
            job.paths.append(path)
            origin.add_virtual(path, f.size, seed=path, gcs=f.gcs)
            for n, (kind, opts) in enumerate(f.faults):
                last = n == len(f.faults) - 1
                origin.add_fault(path, kind, n=None if last and f.forever else 1, **opts)


def start(c: Client, origin: Origin, example: str, j: int, job: Job) -> str:
    spec: dict[str, Any] = {
        "type": "range", "bucket": {"name": f"{example}-j{j}"},
        "template": origin.url_for(f"/{example}/j{j}/") + f"f{{0..{len(job.files) - 1}}}",
        "headers": job.headers}
    if job.throttled:
        spec["limits"] = {"bytes_per_hour": 10**12}
    return c.start_download(spec)


def stored(c: Client, example: str, j: int) -> dict[str, bytes]:
    bck = Bucket("ais", f"{example}-j{j}")
    return {e["n"]: c.get_object(bck, e["n"]).content for e in c.list_objects(bck)}


def check_ended(c: Client, example: str, j: int, job: Job, status: dict[str, Any],
                faults_gone: bool) -> set[str]:
    """The invariants of one ended job; the names of the files it failed."""
    total = len(job.files)
    assert int(status["total"]) == total, status
    assert status["finished_cnt"] + status["error_cnt"] == total, status
    assert status["skipped_cnt"] <= status["finished_cnt"], status
    errors = {e["name"]: e["error"] for e in status.get("download_errors") or []}
    assert len(errors) == status["error_cnt"], status
    objects = stored(c, example, j)
    assert set(objects).isdisjoint(errors), (objects.keys(), errors)
    assert len(objects) + len(errors) == total, (objects.keys(), errors)
    for name, content in objects.items():
        assert content == virtual_bytes(f"/{example}/j{j}/{name}", len(content)), name
        assert len(content) == job.files[int(name[1:])].size, name
    for k, f in enumerate(job.files):
        if faults_gone or not f.faults:
            if f.size <= MAX_OBJECT:  # nothing went wrong: it must be there
                assert f"f{k}" in objects, (f"f{k}", errors.get(f"f{k}"))
                continue
            assert "larger than the node's limit" in errors[f"f{k}"], errors[f"f{k}"]
    return set(errors)


def check_headers(requests: list[Request], job: Job, stored_names: set[str]) -> None:
    """Each request carried its own job's headers and no other's; only a stored object is
    asked for conditionally, and only a resume asks for a range."""
    for r in requests:
        sent = {k.lower(): v for k, v in r.headers.items()}
        for name in ("x-job", "authorization"):
            want = next((v[0] for k, v in job.headers.items() if k.lower() == name), None)
            assert sent.get(name) == want, (r.path, name, sent.get(name), want)
        name = r.path.rsplit("/", 1)[1]
        if name not in stored_names:
            assert not {"if-none-match", "if-modified-since"} & set(sent), (r.path, sent)
        assert ("range" in sent) == ("if-range" in sent), (r.path, sent)


@pytest.mark.timeout(3600 if PROFILE == "long" else 110)
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(jobs=jobs())
def test_random_faults_never_break_the_invariants(_origin_server: Origin, fault_node: Node,
                                                  jobs: list[Job]) -> None:
    origin, c = _origin_server, fault_node.client()
    origin.reset()
    example = secrets.token_hex(4)
    serve(origin, example, jobs)
    for j, job in enumerate(jobs):  # side by side: their transfers share the node's handles
        job.id = start(c, origin, example, j, job)
    failed = []
    for j, job in enumerate(jobs):
        failed.append(check_ended(c, example, j, job, wait_job(c, job.id, JOB_END), False))
        for path in job.paths:
            check_headers(origin.requests(path), job, set())

    # The faults gone, the same jobs again: what was stored is confirmed (a 304 to our own
    # conditional GET), what failed is downloaded now; only what is too large fails again.
    for path in (p for job in jobs for p in job.paths):
        origin.fault(path, None)
    seen = len(origin.requests())
    for j, job in enumerate(jobs):
        job.id = start(c, origin, example, j, job)
    for j, job in enumerate(jobs):
        status = wait_job(c, job.id, JOB_END)
        again = check_ended(c, example, j, job, status, True)
        assert again == {f"f{k}" for k, f in enumerate(job.files) if f.size > MAX_OBJECT}
        kept = {f"f{k}" for k in range(len(job.files))} - failed[j]
        assert status["skipped_cnt"] == len(kept), (status, kept)
        later = [r for r in origin.requests()[seen:] if r.path in job.paths]
        check_headers(later, job, kept)
