"""Upstream downloader scenarios (spec section 7) over the REST API, against local servers."""

from __future__ import annotations

import time

import pytest

from aisdl.errors import AisdlError, BadRequest, NotFound
from aisdl.models import Bucket
from helpers import is_finished, wait_job
from origin import payload

B = Bucket("ais", "dl")


def start(client, **body):  # noqa: ANN001, ANN201
    body.setdefault("bucket", {"name": B.name, "provider": "ais"})
    return client.start_download(body)


def names(client, bck: Bucket = B) -> list[str]:  # noqa: ANN001
    return [e["n"] for e in client.list_objects(bck)]


def test_single_abort_remove(origin, node):
    """Scenario 1."""
    c = node.client()
    origin.add_virtual("/large.iso", 64 * 1024 * 1024, seed=5, etag="L")
    origin.fault("/large.iso", "slow", rate=200_000)
    origin.add("/small.txt", payload("small", 65))
    link = origin.url_for("/large.iso").removeprefix("http://")  # no scheme: http:// assumed
    first = start(c, type="single", link=link, object_name="object", description="t1 first")
    time.sleep(0.5)
    second = start(c, type="single", link=link, object_name="object-second",
                   description="t1 second")
    c.abort_download(second)
    c.abort_download(first)
    st = wait_job(c, first, timeout=16)
    assert st["aborted"] and is_finished(st) and not st.get("current_tasks")
    time.sleep(0.5)
    assert c.download_status(first)["aborted"]
    c.abort_download(first)  # again: fine
    c.remove_download(first)
    with pytest.raises(NotFound):
        c.remove_download(first)
    small = start(c, type="single", link=origin.url_for("/small.txt"), object_name="object",
                  description="t1 small")
    assert wait_job(c, small)["finished_cnt"] == 1
    assert names(c) == ["object"]
    assert {j["id"] for j in c.list_downloads(regex="^t1 ")} == {second, small}


def test_range_and_multi_range(origin, node):
    """Scenarios 2 and 3."""
    c = node.client()
    for minor in (21, 23, 25):
        for patch in range(5):
            origin.add(f"/minikube-v0.{minor}.{patch}.iso.sha256", payload(f"{minor}{patch}", 65))
    base = origin.url_for("/").removeprefix("http://")
    job = start(c, type="range", template=base + "minikube-v0.23.{0..4}.iso.sha256")
    assert wait_job(c, job)["finished_cnt"] == 5
    assert names(c) == [f"minikube-v0.23.{i}.iso.sha256" for i in range(5)]
    bck = Bucket("ais", "multi")
    job = start(c, type="range", template=base + "minikube-v0.{23..25..2}.{0..1}.iso.sha256",
                bucket={"name": "multi"})
    assert wait_job(c, job)["finished_cnt"] == 4
    assert names(c, bck) == ["minikube-v0.23.0.iso.sha256", "minikube-v0.23.1.iso.sha256",
                             "minikube-v0.25.0.iso.sha256", "minikube-v0.25.1.iso.sha256"]


def test_multi_map_and_list(origin, node):
    """Scenarios 4 and 5."""
    c = node.client()
    origin.add("/README.md", payload("readme", 100))
    origin.add("/LICENSE", payload("license", 1075))
    job = start(c, type="multi", objects={"ais": origin.url_for("/README.md"),
                                          "k8s": origin.url_for("/LICENSE")})
    assert wait_job(c, job)["finished_cnt"] == 2
    assert names(c) == ["ais", "k8s"]
    job = start(c, type="multi", bucket={"name": "list"},
                objects=[origin.url_for("/README.md"),
                         origin.url_for("/LICENSE") + "?query=values"])
    assert wait_job(c, job)["finished_cnt"] == 2
    assert names(c, Bucket("ais", "list")) == ["LICENSE", "README.md"]


def test_timeout_is_a_per_file_error(origin, node):
    """Scenario 6: a source slower than the job's timeout fails that file, nothing is stored."""
    c = node.client()
    origin.add("/hang", payload("h", 10))
    origin.fault("/hang", "hang", seconds=5)
    job = start(c, type="single", link=origin.url_for("/hang"), object_name="object",
                timeout="100ms")
    st = wait_job(c, job, timeout=20)
    assert (st["error_cnt"], st["finished_cnt"]) == (1, 0)
    assert st["download_errors"][0]["name"] == "object"
    assert "timed out" in st["download_errors"][0]["error"]
    assert names(c) == []


def test_status_with_errors(origin, node):
    """Scenario 9: an unresolvable host and a 404, each recorded under its object name."""
    c = node.client()
    job = start(c, type="multi", objects={"invalidURL": "http://some.invalid.url",
                                          "notFoundFile": origin.url_for("/404.tar")})
    st = wait_job(c, job)
    assert (st["total"], st["finished_cnt"], st["error_cnt"]) == (2, 0, 2)
    errors = {e["name"]: e["error"] for e in st["download_errors"]}
    assert errors["notFoundFile"] == "request failed with 404 status code (Not Found)"
    assert "some.invalid.url" in errors["invalidURL"]
    assert origin.hits("/404.tar") == 1  # 404 is terminal: no retries


def test_names_the_disk_refuses_are_errors_and_never_listed(origin, node):
    """One job makes `a` and `a/b` (and `p/q`, `p`) both objects, and asks for a name too long
    for the filesystem: whichever of a pair commits second is an error, the long name is an
    error, and the bucket lists only objects whose bytes are on disk."""
    c = node.client()
    origin.add("/f", payload("f", 100))
    link = origin.url_for("/f")
    too_long = "d/" + "n" * 300
    job = start(c, type="multi", objects={n: link for n in ("a", "a/b", "p/q", "p", too_long,
                                                            "x")})
    st = wait_job(c, job)
    assert (st["finished_cnt"], st["error_cnt"]) == (3, 3)
    errors = {e["name"]: e["error"] for e in st["download_errors"]}
    assert "too long" in errors[too_long]
    assert sum("cannot also be a directory" in errors.get(n, "") or
               "directory of other objects" in errors.get(n, "") for n in ("a", "a/b")) == 1
    assert sum(n in errors for n in ("p", "p/q")) == 1
    listed = names(c)
    assert sorted(listed) == sorted({"a", "a/b", "p", "p/q", "x"} - set(errors))
    for name in listed:
        assert c.get_object(B, name).content == payload("f", 100)


def test_transient_errors_are_retried(origin, node):
    c = node.client()
    origin.add("/flaky", payload("f", 5000))
    origin.fault("/flaky", "fail_then_ok", status=503, n=2)
    origin.add("/busy", payload("b", 5000))
    origin.fault("/busy", "retry_after", seconds=1, n=1)
    origin.add("/reset", payload("r", 200_000))
    origin.fault("/reset", "reset", n=1)
    job = start(c, type="multi", objects={"flaky": origin.url_for("/flaky"),
                                          "busy": origin.url_for("/busy"),
                                          "reset": origin.url_for("/reset")})
    t0 = time.monotonic()
    st = wait_job(c, job)
    assert (st["finished_cnt"], st["error_cnt"]) == (3, 0)
    assert time.monotonic() - t0 >= 1.0  # Retry-After was honoured
    assert origin.hits("/flaky") == 3
    resumed = origin.requests("/reset", "GET")[-1]
    assert resumed.headers.get("Range") == "bytes=100000-"  # byte-level resume
    assert resumed.headers.get("If-Range") == origin.etag("/reset")
    for name, path in (("flaky", "/flaky"), ("busy", "/busy"), ("reset", "/reset")):
        assert c.get_object(B, name).content == origin.content(path)


def test_into_nonexistent_bucket(origin, node):
    """Scenario 13."""
    c = node.client()
    origin.add("/x", payload("x", 10))
    job = start(c, type="single", link=origin.url_for("/x"), bucket={"name": "brand-new"})
    assert wait_job(c, job)["finished_cnt"] == 1
    assert names(c, Bucket("ais", "brand-new")) == ["x"]


def test_unchanged_object_is_skipped(origin, node):
    """Scenarios 15 and 18: same generation and hashes → skipped, version and atime kept."""
    c = node.client()
    origin.add("/g/obj.sha256", payload("g", 65), gcs=True)
    link = origin.url_for("/g/obj.sha256")
    first = wait_job(c, start(c, type="single", link=link))
    assert (first["finished_cnt"], first["skipped_cnt"]) == (1, 0)
    before = c.head_object(B, "obj.sha256")
    assert before["Ais-Version"] == "1" and before["Content-Length"] == "65"
    second = wait_job(c, start(c, type="single", link=link))
    assert (second["finished_cnt"], second["skipped_cnt"]) == (1, 1)
    after = c.head_object(B, "obj.sha256")
    assert (after["Ais-Version"], after["Ais-Atime"]) == ("1", before["Ais-Atime"])
    origin.add("/g/obj.sha256", payload("changed", 65), gcs=True)  # same size, new content
    third = wait_job(c, start(c, type="single", link=link))
    assert (third["finished_cnt"], third["skipped_cnt"]) == (1, 0)
    assert c.head_object(B, "obj.sha256")["Ais-Version"] == "2"
    assert c.get_object(B, "obj.sha256").content == payload("changed", 65)


def test_user_overwrite_is_downloaded_again(origin, node):
    """Scenario 16: after a user PUT the object no longer matches its source."""
    c = node.client()
    origin.add("/LICENSE", payload("license", 1075))
    link = origin.url_for("/LICENSE")
    wait_job(c, start(c, type="single", link=link, bucket={"name": "fresh"}))
    bck = Bucket("ais", "fresh")
    assert c.head_object(bck, "LICENSE")["Ais-Version"] == "1"
    c.put_object(bck, "LICENSE", b"0123456789")
    assert c.head_object(bck, "LICENSE")["Ais-Version"] == "2"
    st = wait_job(c, start(c, type="single", link=link, bucket={"name": "fresh"}))
    assert (st["finished_cnt"], st["skipped_cnt"]) == (1, 0)
    head = c.head_object(bck, "LICENSE")
    assert (head["Ais-Version"], head["Content-Length"]) == ("3", "1075")


def test_connection_limits_per_job(origin, node):
    """Scenarios 21 and 22: a job limited to 2 never runs more than 2 files; an unlimited job
    runs beside it."""
    c = node.client()
    for i in range(8):
        origin.add(f"/l/f{i}", payload(str(i), 100_000))
        origin.fault(f"/l/f{i}", "slow", rate=250_000)
    tmpl = origin.url_for("/l/") + "f{0..7}"
    limited = start(c, type="range", template=tmpl, limits={"connections": 2})
    free = start(c, type="range", template=tmpl, bucket={"name": "free"})
    max_limited, together = 0, False
    while True:
        a = c.download_status(limited, only_active=True)
        b = c.download_status(free, only_active=True)
        max_limited = max(max_limited, len(a.get("current_tasks", [])))
        together |= bool(a.get("current_tasks")) and bool(b.get("current_tasks"))
        if is_finished(a) and is_finished(b):
            break
        time.sleep(0.05)
    assert max_limited == 2
    assert together


def test_validation_messages(origin, node):
    c = node.client()
    cases = [
        ({"type": "bogus", "bucket": {"name": "b"}},
         "input does not match any of the supported formats"),
        ({"bucket": {"name": "b"}}, "'type' field is empty"),
        ({"type": "single", "bucket": {"name": "b"}}, "missing 'link' in the request body"),
        ({"type": "range", "bucket": {"name": "b"}, "template": "h/{1..}"},
         "invalid 'bash' template"),
        ({"type": "range", "bucket": {"name": "b"}, "template": "h/{5..1}"},
         "'start' cannot be greater than 'end'"),
        ({"type": "range", "bucket": {"name": "b"}, "template": "h/{0..99999}{0..999}"},
         "too many values (more than 10000000 max)"),
        ({"type": "multi", "bucket": {"name": "b"}, "objects": [1]},
         "expected download link to be a string"),
        ({"type": "single", "bucket": {"name": "b"}, "link": "ftp://x/y"}, "invalid scheme: ftp"),
        ({"type": "single", "bucket": {"name": "b"}, "link": "http://h/x",
          "limits": {"connections": -1}}, "'limit.connections' must be non-negative"),
        ({"type": "single", "bucket": {"name": "b"}, "link": "http://h/x", "timeout": "soon"},
         "failed to parse timeout field"),
        ({"type": "single", "bucket": {"name": "b"}, "link": "http://h/x",
          "object_name": "../x"}, 'invalid object name "../x"'),
        ({"type": "single", "bucket": {"name": "bad/name"}, "link": "http://h/x"},
         "bucket name"),
    ]
    for body, message in cases:
        with pytest.raises(BadRequest) as err:
            c.start_download(body)
        assert message in err.value.message, body
    with pytest.raises(AisdlError) as err:
        c.request("POST", "download", data=b"{not json", timeout=5)
    assert err.value.status == 400
    assert c.list_downloads() == []
    assert c.request("GET", "download").json() == []  # a GET without a body lists


def test_bad_request_does_not_disturb_running_jobs(origin, node):
    """Upstream bug 8.1: a malformed request aborted every running job. Not here."""
    c = node.client()
    for i in range(4):
        origin.add(f"/r/f{i}", payload(str(i), 100_000))
        origin.fault(f"/r/f{i}", "slow", rate=300_000)
    job = start(c, type="range", template=origin.url_for("/r/") + "f{0..3}")
    time.sleep(0.3)
    with pytest.raises(BadRequest):
        c.start_download({"type": "range", "bucket": {"name": "dl"}, "template": "{a..z}"})
    st = wait_job(c, job)
    assert (st["finished_cnt"], st["error_cnt"], st["aborted"]) == (4, 0, False)


def test_abort_finished_job_keeps_it_finished(origin, node):
    """Upstream bug 8.7: aborting a finished job flipped it to aborted. Here it stays finished."""
    c = node.client()
    origin.add("/done", payload("d", 10))
    job = start(c, type="single", link=origin.url_for("/done"))
    wait_job(c, job)
    c.abort_download(job)
    assert c.download_status(job)["aborted"] is False


def test_unknown_job_is_404(node):
    c = node.client()
    for call in (c.download_status, c.abort_download, c.remove_download):
        with pytest.raises(NotFound) as err:
            call("dnl-nosuchjob")
        assert "download job dnl-nosuchjob does not exist" in err.value.message
