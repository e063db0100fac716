"""`--latest` (backend jobs: each object we hold checked against its source's own version,
nothing removed) and `--download-timeout` (the most one file may take, all tries, enforced
where the file is fetched), through the CLI and POST /v1/download."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from aisdl.errors import BadRequest
from aisdl.jobs.request import parse_start_request
from aisdl.models import Bucket
from conftest import Ais, Node
from helpers import free_port, wait_job
from origin import payload


@pytest.fixture
def s3_node(tmp_path: Path, s3_server: Any) -> Iterator[Node]:
    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--retry-delay", "50ms"), env=s3_server.env)
    n.start()
    yield n
    n.stop()


def _counts(ais: Ais, *args: str) -> tuple[int, int, int]:
    """Run a download to its end: (finished, skipped, errors)."""
    job = ais("start", "download", *args).stdout.split()[0]
    st = wait_job(ais.node.client(), job)
    return st["finished_cnt"], st["skipped_cnt"], st["error_cnt"]


def test_latest_refetches_new_versions_keeps_the_rest(s3_server, s3_node, tmp_path):
    """A changed object and a new version with the same bytes are fetched again; an unchanged
    one is skipped; one gone from the source stays (only --sync removes)."""
    (tmp_path / "cli-home").mkdir()
    ais = Ais(s3_node, tmp_path / "cli-home", tmp_path)
    c = s3_node.client()
    src = s3_server.new_bucket(versioned=True)
    for name in "abcd":
        s3_server.put(src, name, payload(f"{name}1", 100))
    mirror = Bucket("ais", "mirror")
    c.create_bucket(mirror)
    c.set_bucket_props(mirror, {"backend_bck": {"name": src, "provider": "aws"}})
    assert _counts(ais, "--latest", f"s3://{src}", "ais://mirror") == (4, 0, 0)

    s3_server.put(src, "a", payload("a2", 100))   # new bytes
    s3_server.put(src, "b", payload("b1", 100))   # a new version, the same bytes and ETag
    s3_server.delete(src, "c")                    # gone from the source
    assert _counts(ais, "--latest", f"s3://{src}", "ais://mirror") == (3, 1, 0)  # d skipped
    assert c.get_object(mirror, "a").content == payload("a2", 100)
    assert c.get_object(mirror, "c").content == payload("c1", 100)  # kept

    # Without --latest the listing decides: a same-bytes version is "unchanged" to it.
    s3_server.put(src, "b", payload("b1", 100))
    assert _counts(ais, f"s3://{src}", "ais://mirror") == (3, 3, 0)
    assert _counts(ais, "--latest", f"s3://{src}", "ais://mirror") == (3, 2, 0)
    assert _counts(ais, "--latest", f"s3://{src}", "ais://mirror") == (3, 3, 0)
    assert sorted(e["n"] for e in c.list_objects(mirror, cached=True)) == ["a", "b", "c", "d"]
    # With --sync too, what the source no longer has goes (finished 4: 3 skips, 1 eviction).
    assert _counts(ais, "--latest", "--sync", f"s3://{src}", "ais://mirror") == (4, 3, 0)
    assert sorted(e["n"] for e in c.list_objects(mirror, cached=True)) == ["a", "b", "d"]


def test_latest_only_for_a_bucket_source(origin, ais):
    origin.add("/f", payload("f", 10))
    r = ais("start", "download", "--latest", origin.url_for("/f"), "ais://b/f", check=False)
    assert r.returncode == 2
    assert r.stderr.startswith("Error: --latest needs a cloud bucket"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_download_timeout_fails_a_slow_file_only(origin, ais):
    """The slow file is that job's error naming the limit, tried once, nothing of it stored;
    the fast one is downloaded; the counts add up."""
    origin.add("/d/f0", payload("fast", 1000))
    origin.add("/d/f1", payload("slow", 40_000))
    origin.fault("/d/f1", "slow", rate=20_000)  # 2 s, steadily: no stall, only too long
    started = time.monotonic()
    r = ais("start", "download", "--download-timeout", "500ms", "--wait",
            origin.url_for("/d/") + "f{0..1}", "ais://b/", check=False)
    assert r.returncode == 1, r.output
    job = r.stdout.split()[0]
    st = wait_job(ais.node.client(), job)
    assert time.monotonic() - started < 30
    assert (st["finished_cnt"], st["error_cnt"], st["total"]) == (1, 1, 2)
    (err,) = st["download_errors"]
    assert err["name"] == "f1"
    assert "download timeout" in err["error"] and "500ms" in err["error"], err
    assert len(origin.requests("/d/f1", method="GET")) == 1  # not retried
    c = ais.node.client()
    assert [e["n"] for e in c.list_objects(Bucket("ais", "b"))] == ["f0"]

    # --timeout keeps its meaning (one request's silence): a steady 2 s body passes it.
    ais("start", "download", "--timeout", "1s", "--wait", origin.url_for("/d/f1"), "ais://b/f1")
    assert c.get_object(Bucket("ais", "b"), "f1").content == payload("slow", 40_000)


@pytest.mark.parametrize(("value", "why"), [
    ("-1s", "invalid download timeout"),
    ("soon", "invalid download timeout"),
    (True, "'download_timeout' must be a duration"),
    ([1], "'download_timeout' must be a duration"),
    (1e12, "must be between 0 and 2592000s"),
    ("721h", "must be between 0 and 2592000s"),
    (0.001, "at least 10ms"),
    ("1ms", "at least 10ms"),
])
def test_bad_download_timeouts_are_refused(value, why):
    body = {"type": "single", "bucket": {"name": "b"}, "link": "http://h/f",
            "download_timeout": value}
    with pytest.raises(BadRequest, match=why):
        parse_start_request(_json(body), 64)


def test_download_timeout_and_latest_round_trip():
    body = {"type": "backend", "bucket": {"name": "b"}, "latest": True,
            "download_timeout": "1m30s"}
    spec = parse_start_request(_json(body), 64)
    assert (spec.latest, spec.download_timeout) == (True, 90.0)
    assert type(spec).from_json(spec.to_json()) == spec
    none = parse_start_request(_json({**body, "download_timeout": 0, "latest": False}), 64)
    assert (none.latest, none.download_timeout) == (False, None)


@pytest.mark.parametrize(("body", "why"), [
    ({"type": "single", "link": "http://h/f", "latest": True}, "'latest' does not apply"),
    ({"type": "range", "template": "http://h/f{0..1}", "latest": True},
     "'latest' does not apply"),
    ({"type": "backend", "latest": "yes"}, "'latest' must be true or false"),
])
def test_bad_latest_is_refused(body, why):
    with pytest.raises(BadRequest, match=why):
        parse_start_request(_json({"bucket": {"name": "b"}, **body}), 64)


def test_bad_values_over_rest_and_cli(node: Node, ais: Ais):
    r = requests.post(f"{node.endpoint}/v1/download", json={
        "type": "single", "bucket": {"name": "b"}, "link": "http://h/f",
        "download_timeout": "-5s"}, timeout=10)
    assert r.status_code == 400 and "invalid download timeout" in r.text
    r = ais("start", "download", "--download-timeout", "soon", "http://h/f", "ais://b/f",
            check=False)
    assert r.returncode == 2 and "Error:" in r.stderr and "soon" in r.stderr, r.stderr
    r = ais("start", "download", "--download-timeout", "1000h", "http://h/f", "ais://b/f",
            check=False)
    assert r.returncode == 2 and r.stderr.startswith("Error: ") and "2592000s" in r.stderr
    assert "Traceback" not in r.stderr


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
