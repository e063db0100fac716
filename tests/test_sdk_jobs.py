"""The `aistore` SDK's job API (2.0.0) on download jobs: wait, status, details, running list,
abort; kinds this node does not run are refused, not answered with a made-up status."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from aistore.sdk import Client as SdkClient
from aistore.sdk.errors import AISError

from aisdl.api import xactions
from aisdl.errors import BadRequest
from aisdl.models import Bucket
from conftest import Node
from helpers_app import InProcessNode
from origin import Origin, payload

GO_ZERO = "0001-01-01T00:00:00Z"


def _start(node: Node, origin: Origin, names: list[str], bucket: str = "jobs") -> str:
    return node.client().start_download({
        "type": "multi", "bucket": {"name": bucket},
        "objects": {n: origin.url_for(f"/{n}") for n in names}})


def _until(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (out := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)
    return out


def _refused(call: Any, status: int) -> str:
    with pytest.raises(AISError) as info:
        call()
    assert info.value.status_code == status, info.value
    return str(info.value)


def test_wait_status_details_and_running_list(origin: Origin, node: Node) -> None:
    origin.add("/a.bin", payload("a", 10_000))
    origin.add("/b.bin", payload("b", 10_000))
    origin.fault("/b.bin", "stall", after=1000, seconds=2)  # keeps the job running a while
    sdk = SdkClient(node.endpoint)
    job_id = _start(node, origin, ["a.bin", "b.bin"])

    running = sdk.cluster().list_running_jobs("download")
    assert running == [f"download[{job_id}]"]
    assert sdk.cluster().list_running_jobs() == running
    status = sdk.job(job_id, "download").status()
    assert (status.uuid, status.end_time, status.aborted, status.err) == (job_id, 0, False, "")
    snaps = sdk.job(job_id, "download").get_details().list_snapshots()
    assert [(s.id, s.kind, s.end_time, s.is_idle, s.aborted) for s in snaps] == [
        (job_id, "download", GO_ZERO, False, False)]
    assert snaps[0].bucket is not None and snaps[0].bucket.name == "jobs"

    result = sdk.job(job_id, "download").wait(timeout=30, verbose=False)
    assert result.success and result.error is None and result.job_id == job_id
    assert result.end_time is not None

    status = sdk.job(job_id, "download").status()
    assert status.end_time > 0 and not status.aborted and status.err == ""
    assert abs(status.end_time / 1e9 - result.end_time.timestamp()) < 1e-3
    assert sdk.cluster().list_running_jobs("download") == []
    assert [(s.uuid, s.end_time) for s in sdk.cluster().list_jobs_status("download")] == [
        (job_id, status.end_time)]
    assert sdk.bucket("jobs").object("b.bin").get_reader().read_all() == payload("b", 10_000)
    # without a kind the SDK resolves it from the job's snapshot, then waits the same way
    assert sdk.job(job_id).wait(timeout=30, verbose=False).success
    assert sdk.job(job_id).get_total_time() is not None


def test_wait_on_an_aborted_job_fails_promptly(origin: Origin, node: Node) -> None:
    origin.add("/slow.bin", payload("s", 10_000))
    origin.fault("/slow.bin", "stall", after=1000, seconds=60)
    sdk = SdkClient(node.endpoint)
    job_id = _start(node, origin, ["slow.bin"])
    _until("the transfer to start", lambda: origin.hits("/slow.bin"))

    sdk.job(job_id, "download").abort()
    started = time.monotonic()
    result = sdk.job(job_id, "download").wait(timeout=30, verbose=False)
    assert not result.success and result.error == "user abort"
    assert time.monotonic() - started < 20  # not the stall, not the timeout

    final = _until("the aborted job to end",
                   lambda: (s := sdk.job(job_id, "download").status()).end_time and s)
    assert final.aborted and "user abort" in final.err
    assert sdk.cluster().list_running_jobs("download") == []
    # the CLI's `ais show job download` agrees
    assert node.client().download_status(job_id)["aborted"] is True


def test_job_aborted_through_the_download_api_is_aborted_for_the_sdk(
        origin: Origin, node: Node) -> None:
    origin.add("/slow.bin", payload("s", 10_000))
    origin.fault("/slow.bin", "stall", after=1000, seconds=60)
    sdk = SdkClient(node.endpoint)
    job_id = _start(node, origin, ["slow.bin"])
    node.client().abort_download(job_id)
    result = sdk.job(job_id, "download").wait(timeout=30, verbose=False)
    assert not result.success and result.error == "user abort"


def test_errors_of_a_finished_job_are_in_its_status(origin: Origin, node: Node) -> None:
    origin.add("/ok.bin", payload("o", 1000))  # /missing.bin is a 404 at the origin
    sdk = SdkClient(node.endpoint)
    job_id = _start(node, origin, ["ok.bin", "missing.bin"])
    result = sdk.job(job_id, "download").wait(timeout=30, verbose=False)
    # as for AIS's download jobs, a failed object does not abort the job ...
    assert result.success and result.end_time is not None
    # ... and the job's status and snapshot say how many failed
    status = sdk.job(job_id, "download").status()
    assert status.end_time > 0 and not status.aborted
    assert status.err.startswith("1 object(s) failed to download")
    (snap,) = sdk.job(job_id, "download").get_details().list_snapshots()
    assert snap.abort_err == "" and snap.is_idle and not snap.aborted
    raw = requests.get(f"{node.endpoint}/v1/cluster", params={"what": "qryxstats"},
                       json={"id": job_id}, timeout=10).json()  # the SDK's model drops `err`
    assert [s["err"][:19] for snaps in raw.values() for s in snaps] == ["1 object(s) failed "]


def test_unknown_job_id_is_404(inproc: InProcessNode) -> None:
    sdk = SdkClient(inproc.endpoint)
    job = sdk.job("dnl-nosuchjob", "download")
    assert "not found" in _refused(job.status, 404)
    _refused(job.get_details, 404)
    _refused(lambda: job.wait(timeout=5, verbose=False), 404)  # at once, not a timeout
    _refused(job.abort, 404)
    _refused(lambda: sdk.job("dnl-nosuchjob").wait(timeout=5, verbose=False), 404)
    assert sdk.cluster().list_running_jobs("download") == []
    (target_id,) = sdk.cluster().get_info().tmap
    assert sdk.cluster().list_running_jobs("download", target_id=target_id) == []
    _refused(lambda: sdk.cluster().list_running_jobs("download", target_id="t-other"), 404)
    assert sdk.cluster().list_jobs_status("download") == []  # AIS sends null: none


@pytest.mark.parametrize("kind", ["rebalance", "lru", "dsort", "copy-listrange", "get-batch"])
def test_kinds_this_node_does_not_run_are_501(inproc: InProcessNode, kind: str) -> None:
    sdk = SdkClient(inproc.endpoint)
    assert f"{kind!r} does not run" in _refused(lambda: sdk.job(job_kind=kind).start(), 501)
    _refused(sdk.job("x1", kind).status, 501)
    _refused(sdk.job(job_kind=kind).get_details, 501)
    _refused(lambda: sdk.job("x1", kind).wait(timeout=5, verbose=False), 501)
    _refused(sdk.job(job_kind=kind).abort, 501)
    _refused(lambda: sdk.cluster().list_running_jobs(kind), 501)
    _refused(lambda: sdk.cluster().list_jobs_status(kind), 501)


def test_invalid_kind_is_400_and_download_is_not_started_here(inproc: InProcessNode) -> None:
    sdk = SdkClient(inproc.endpoint)
    assert "invalid xaction (job) kind 'bogus'" in _refused(sdk.job("x1", "bogus").status, 400)
    _refused(lambda: sdk.cluster().list_running_jobs("bogus"), 400)
    assert "POST /v1/download" in _refused(lambda: sdk.job(job_kind="download").start(), 400)
    assert requests.get(f"{inproc.endpoint}/v1/download", timeout=10).json() == []


def test_cluster_requests_not_understood_are_refused(inproc: InProcessNode) -> None:
    url = f"{inproc.endpoint}/v1/cluster"
    cases: list[tuple[str, dict[str, str], Any, int]] = [
        ("GET", {"what": "qryxstats"}, {"kind": "download", "regex": "x"}, 400),
        ("GET", {"what": "qryxstats"}, {"Timeout": 5}, 400),
        ("GET", {"what": "qryxstats"}, {"show_active": "yes"}, 400),
        ("GET", {"what": "qryxstats"}, {"bck": {"name": "b", "namespace": {"uuid": "r"}}}, 400),
        ("GET", {"what": "qryxstats", "limit": "1"}, {}, 400),
        ("GET", {"what": "running_all"}, {"node": "t[other]"}, 404),
        ("GET", {"what": "status"}, {}, 400),
        ("GET", {"what": "bogus"}, None, 400),
        ("GET", {"what": "sysinfo"}, None, 501),
        ("PUT", {}, {"action": "bogus"}, 400),
        ("PUT", {}, {"action": "set-config"}, 501),
        ("PUT", {}, {"action": "stop", "value": {}}, 400),
    ]
    for method, params, body, code in cases:
        resp = requests.request(method, url, params=params, json=body, timeout=10)
        assert resp.status_code == code, (method, params, body, resp.text)
        assert resp.json()["status"] == code  # AIS's error shape
    smap = requests.get(url, params={"what": "smap"}, timeout=10).json()
    assert "tmap" in smap


# -- pure decisions -------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "expected"), [
    (None, xactions.Query()),
    ({"ID": "dnl-1", "Kind": "download", "DaemonID": "", "Bck": None, "Buckets": None},
     xactions.Query(id="dnl-1", kind="download")),
    ({"kind": "download", "node": "t1", "show_active": True},
     xactions.Query(kind="download", node="t1", only_running=True)),
    ({"bck": {"name": "b", "provider": "ais", "namespace": {"uuid": "", "name": ""}}},
     xactions.Query(buckets=frozenset({Bucket("ais", "b")}))),
    ({"Bck": {"name": "", "provider": ""}}, xactions.Query()),
    ({"Buckets": [{"name": "b", "provider": "gcp"}]},
     xactions.Query(buckets=frozenset({Bucket("gcp", "b")}))),
    ({"Force": False, "Timeout": 0, "flags": 0}, xactions.Query()),
])
def test_query_messages(body: Any, expected: xactions.Query) -> None:
    assert xactions.parse_query(body) == expected


@pytest.mark.parametrize("body", [
    {"uuid": "x"}, {"id": 7}, {"kind": ["download"]}, {"Force": True}, {"bck": "ais://b"},
    {"bck": {"name": "b", "provider": "nope"}}, {"Buckets": {"name": "b"}},
])
def test_query_messages_refused(body: Any) -> None:
    with pytest.raises(BadRequest):
        xactions.parse_query(body)


@pytest.mark.parametrize(("ns", "text"), [
    (0, GO_ZERO),
    (1_700_000_000_000_000_000, "2023-11-14T22:13:20Z"),
    (1_700_000_000_120_000_000, "2023-11-14T22:13:20.12Z"),
    (1_700_000_000_000_000_001, "2023-11-14T22:13:20.000000001Z"),
])
def test_times_as_ais_writes_them(ns: int, text: str) -> None:
    assert xactions.go_time(ns) == text
