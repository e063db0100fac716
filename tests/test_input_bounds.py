"""Every input of the REST API is bounded and validated: a wrong type, an unknown field, a
control character, an out-of-range limit, an over-long text, a huge or deeply nested body all
get a clear 4xx in AIS's error shape, and none of them can hold the node's event loop."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import requests

from aisdl.errors import BadRequest
from aisdl.jobs.request import (
    MAX_DESCRIPTION,
    MAX_HEADER_BYTES,
    MAX_LINK,
    MAX_OBJECTS,
    MAX_REGEX,
    check_regex,
    parse_start_request,
)
from helpers import wait_job
from origin import payload

NODE_MAX_CONNS = 64
SINGLE: dict[str, Any] = {"type": "single", "bucket": {"name": "b"}, "link": "http://h/x"}


def parse(body: dict[str, Any] | bytes) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_start_request(raw, NODE_MAX_CONNS)


def refused(body: dict[str, Any] | bytes) -> str:
    with pytest.raises(BadRequest) as err:
        parse(body)
    assert "\n" not in err.value.message
    return err.value.message


def single(**fields: Any) -> dict[str, Any]:
    return {**SINGLE, **fields}


# -- limits --------------------------------------------------------------------------------------
@pytest.mark.parametrize("conns", [NODE_MAX_CONNS + 1, 10**30])
def test_connections_above_the_node_limit_are_refused(conns: int) -> None:
    msg = refused(single(limits={"connections": conns}))
    assert "'limit.connections'" in msg and f"at most {NODE_MAX_CONNS}" in msg


def test_connections_up_to_the_node_limit_are_taken() -> None:
    assert parse(single(limits={"connections": NODE_MAX_CONNS})).connections == NODE_MAX_CONNS
    assert parse(single(limits={"connections": 0})).connections == 0


def test_bytes_per_hour_is_bounded() -> None:
    assert parse(single(limits={"bytes_per_hour": 2**63 - 1})).bytes_per_hour == 2**63 - 1
    assert "'limit.bytes_per_hour'" in refused(single(limits={"bytes_per_hour": 2**63}))
    assert "non-negative" in refused(single(limits={"bytes_per_hour": -1}))


# -- JSON types ----------------------------------------------------------------------------------
WRONG_TYPES = [
    (single(type=["single"]), "'type'"),
    (single(timeout=[1]), "'timeout'"),
    (single(timeout={"s": 1}), "'timeout'"),
    (single(description={"a": 1}), "'description'"),
    (single(description=7), "'description'"),
    (single(limits="lots"), "'limits'"),
    (single(limits=[1]), "'limits'"),
    (single(limits={"connections": "5"}), "'limit.connections'"),
    (single(limits={"connections": 1.5}), "'limit.connections'"),
    (single(limits={"connections": True}), "'limit.connections'"),
    (single(limits={"connections": ""}), "'limit.connections'"),
    (single(limits={"bytes_per_hour": False}), "'limit.bytes_per_hour'"),
    (single(bucket=["b"]), "'bucket'"),
    (single(bucket={"name": ["b"]}), "'bucket.name'"),
    (single(bucket={"name": "b", "provider": 1}), "'bucket.provider'"),
    (single(link=5), "'link'"),
    (single(link={"u": "http://h/x"}), "'link'"),
    (single(link=["http://h/x"]), "'link'"),
    (single(object_name=5), "'object_name'"),
    (single(headers=["X: y"]), "'headers'"),
    (single(headers={"X": "y"}), "'headers'"),
    (single(progress_interval=[10]), "'progress_interval'"),
    ({"type": "multi", "bucket": {"name": "b"}, "objects": {"a": 5}}, "values in map"),
    ({"type": "multi", "bucket": {"name": "b"}, "objects": [["http://h/x"]]}, "expected download"),
    ({"type": "multi", "bucket": {"name": "b"}, "objects": "http://h/x"}, "JSON body should be"),
    ({"type": "range", "bucket": {"name": "b"}, "template": 5}, "'template'"),
    ({"type": "range", "bucket": {"name": "b"}, "template": "h/{1..2}", "subdir": ["d"]},
     "'subdir'"),
    ({"type": "backend", "bucket": {"name": "b"}, "prefix": 1}, "'prefix'"),
    ({"type": "backend", "bucket": {"name": "b"}, "synchronize": "yes"}, "'synchronize'"),
]


@pytest.mark.parametrize(("body", "field"), WRONG_TYPES, ids=[f for _, f in WRONG_TYPES])
def test_wrong_json_types_are_refused_by_name(body: dict[str, Any], field: str) -> None:
    assert field in refused(body)


def test_a_link_is_never_made_from_a_number() -> None:
    """It was taken as `http://5`."""
    for link in (5, 5.0, {"a": 1}, True):
        assert "'link' must be a string" in refused(single(link=link))


# -- unknown and misplaced fields ----------------------------------------------------------------
def test_unknown_fields_are_refused() -> None:
    assert "unknown field 'lnk'" in refused({**SINGLE, "lnk": "http://h/y"})
    assert "unknown field 'conns'" in refused(single(limits={"conns": 5}))
    assert "unknown field 'region'" in refused(single(bucket={"name": "b", "region": "x"}))


def test_fields_of_another_kind_are_refused() -> None:
    assert "'template' does not apply to a single download" in refused(
        single(template="h/{1..3}"))
    assert "'synchronize' does not apply to a multi download" in refused(
        {"type": "multi", "bucket": {"name": "b"}, "objects": [], "synchronize": True})


def test_features_this_node_lacks_are_refused() -> None:
    assert "ETL" in refused(single(etl_name="md5"))
    assert "from_remote" in refused(single(from_remote=True))
    assert "namespace" in refused(single(bucket={"name": "b", "namespace": {"name": "ns"}}))


# What the `ais` CLI (ours and AIStore's Go CLI) sends, and the spec's own examples.
LEGITIMATE = [
    {"type": "single", "bucket": {"name": "b", "provider": "ais"}, "link": "http://h/x",
     "object_name": "x", "description": "", "timeout": "", "progress_interval": "10.0s",
     "limits": {"connections": 0, "bytes_per_hour": 0}},
    {"type": "single", "bucket": {"name": "b", "provider": "ais",
                                  "namespace": {"uuid": "", "name": ""}},
     "link": "http://h/x", "object_name": "x", "from_remote": False, "timeout": "0s",
     "progress_interval": "10s", "description": "", "headers": {"A": ["b"]},
     "etl_name": "", "etl_args": ""},
    {"type": "multi", "bucket": {"name": "b"}, "objects": {"a": "http://h/a"}, "timeout": "30s"},
    {"type": "multi", "bucket": {"name": "b"}, "objects": ["http://h/a.gz", "http://h/b.gz"]},
    {"type": "range", "bucket": {"name": "b"}, "template": "h/dir/object{200..300}log.txt",
     "subdir": "some/subdir/"},
    {"type": "backend", "bucket": {"name": "lpr", "provider": "gcp"}, "prefix": "i/t-",
     "suffix": ".tgz", "synchronize": False},
    {"type": "single", "bucket": {"name": "b"}, "link": "http://h/x", "description": None,
     "timeout": None, "limits": None, "headers": None},
]


@pytest.mark.parametrize("body", LEGITIMATE, ids=[str(i) for i in range(len(LEGITIMATE))])
def test_what_clients_send_is_accepted(body: dict[str, Any]) -> None:
    assert parse(body).kind == body["type"]


# -- text: control characters, surrogates, length -----------------------------------------------
@pytest.mark.parametrize("char", ["\r", "\n", "\x00", "\x7f"])
def test_control_characters_in_links_are_refused(char: str) -> None:
    assert "control character" in refused(single(link=f"http://h/x{char}Host: evil"))
    assert "control character" in refused(
        {"type": "multi", "bucket": {"name": "b"}, "objects": [f"http://h/a{char}b"]})
    assert "control character" in refused(
        {"type": "range", "bucket": {"name": "b"}, "template": f"http://h/{char}{{1..2}}"})


@pytest.mark.parametrize("value", ["v\r\nX-Evil: 1", "v\nx", "v\x00", "v\rx"])
def test_control_characters_in_header_values_are_refused(value: str) -> None:
    assert "control character" in refused(single(headers={"X-Token": [value]}))


@pytest.mark.parametrize("name", ["X Token", "X:Token", "X\r\nEvil", "", "Ünï", "X\x00"])
def test_header_names_must_be_tokens(name: str) -> None:
    assert "header name" in refused(single(headers={name: ["v"]}))


def test_good_headers_pass_unchanged() -> None:
    headers = {"Authorization": ["Bearer a.b-c_d~e+f/g="], "X-Multi": ["1", "2"],
               "X-Tab": ["a\tb"]}
    assert parse(single(headers=headers)).headers == headers


@pytest.mark.parametrize("field", ["link", "object_name", "description"])
def test_lone_surrogates_are_refused(field: str) -> None:
    raw = json.dumps(single(**{field: "x"})).replace('"x"', '"x\\ud800"').encode()
    assert "not valid Unicode: it holds a lone surrogate ('\\ud800'" in refused(raw)


def test_lone_surrogates_in_object_lists_and_headers_are_refused() -> None:
    for body in ('{"type": "multi", "bucket": {"name": "b"}, "objects": {"a\\udc00": "h/a"}}',
                 '{"type": "multi", "bucket": {"name": "b"}, "objects": ["h/a\\ud800"]}',
                 '{"type": "single", "bucket": {"name": "b\\ud800"}, "link": "h/a"}',
                 '{"type": "single", "bucket": {"name": "b"}, "link": "h/a",'
                 ' "headers": {"X": ["\\ud800"]}}'):
        assert "not valid Unicode" in refused(body.encode())


def test_paired_surrogates_are_ordinary_text() -> None:
    raw = (b'{"type": "single", "bucket": {"name": "b"}, "link": "h/a",'
           b' "description": "\\ud83d\\ude00"}')
    assert parse(raw).description == "\N{GRINNING FACE}"


def test_invalid_utf8_and_deep_nesting_are_refused() -> None:
    assert "UTF-8" in refused(b'{"type": "single", "bucket": {"name": "b"}, "link": "h/\xff"}')
    assert "nested too deeply" in refused(b"[" * 100_000 + b"]" * 100_000)
    assert "nested too deeply" in refused(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)


def test_user_descriptions_are_bounded() -> None:
    assert parse(single(description="d" * MAX_DESCRIPTION)).description == "d" * MAX_DESCRIPTION
    assert f"at most {MAX_DESCRIPTION}" in refused(single(description="d" * (MAX_DESCRIPTION + 1)))


def test_auto_descriptions_are_truncated() -> None:
    """A 1 MB link made a 1 MB description that every job list then matched its regex on."""
    long_link = "http://h/" + "a" * (MAX_LINK - 100)
    for body in (single(link=long_link),
                 {"type": "range", "bucket": {"name": "b"}, "template": long_link + "{1..2}"}):
        description = parse(body).description
        assert len(description) <= MAX_DESCRIPTION and description.startswith("http://h/aaa")


def test_links_templates_and_headers_are_bounded() -> None:
    long_link = "http://h/" + "a" * MAX_LINK
    assert f"at most {MAX_LINK}" in refused(single(link=long_link))
    assert f"at most {MAX_LINK}" in refused(
        {"type": "range", "bucket": {"name": "b"}, "template": long_link + "{1..2}"})
    assert f"at most {MAX_LINK}" in refused(
        {"type": "multi", "bucket": {"name": "b"}, "objects": {"a": long_link}})
    headers = {f"X-{i}": ["v" * 1000] for i in range(MAX_HEADER_BYTES // 1000 + 1)}
    assert "'headers' are too large" in refused(single(headers=headers))


def test_object_lists_are_capped() -> None:
    objects = [f"h/{i}" for i in range(MAX_OBJECTS + 1)]
    msg = refused({"type": "multi", "bucket": {"name": "b"}, "objects": objects})
    assert f"at most {MAX_OBJECTS}" in msg


# -- templates -----------------------------------------------------------------------------------
@pytest.mark.parametrize("template", ["http://h/a{1..3", "http://h/{1..2}/a{1..3",
                                      "http://h/a{1..{2..3}"])
def test_unterminated_brace_is_refused(template: str) -> None:
    msg = refused({"type": "range", "bucket": {"name": "b"}, "template": template})
    assert "unterminated '{'" in msg


# -- regexes -------------------------------------------------------------------------------------
def test_job_list_regex_is_linear_time() -> None:
    """`(a+)+$` against a long run of `a`s: a backtracking engine never finishes."""
    code = ("from aisdl.jobs.request import check_regex;"
            "print(check_regex('(a+)+$').search('a' * 100_000 + '!') is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True)
    assert out.stdout.strip() == "True"


def test_regex_length_is_bounded() -> None:
    assert check_regex("a" * MAX_REGEX).search("a" * MAX_REGEX)
    with pytest.raises(BadRequest, match=f"at most {MAX_REGEX}"):
        check_regex("a" * (MAX_REGEX + 1))
    with pytest.raises(BadRequest, match="invalid regex"):
        check_regex("(")


# -- over the REST API ---------------------------------------------------------------------------
REST_BAD_BODIES: list[bytes] = [
    json.dumps(single(limits={"connections": 10**30})).encode(),
    json.dumps(single(timeout=[1])).encode(),
    json.dumps(single(description={"a": 1})).encode(),
    json.dumps(single(limits="x")).encode(),
    json.dumps(single(bucket=["b"])).encode(),
    json.dumps(single(link=5)).encode(),
    json.dumps(single(link="http://h/x\r\nHost: evil")).encode(),
    json.dumps(single(headers={"X": ["a\r\nB: c"]})).encode(),
    json.dumps({**SINGLE, "lnk": "x"}).encode(),
    b'{"type": "single", "bucket": {"name": "b"}, "link": "h/a", "object_name": "x\\ud800"}',
    b'{"type": "single", "bucket": {"name": "b"}, "link": "h/a\\udfff"}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"type": "single", "bucket": {"name": "b"}, "link": "h/\xff\xfe"}',
    json.dumps({"type": "range", "bucket": {"name": "b"}, "template": "h/a{1..3"}).encode(),
]


def test_rest_bad_bodies_are_400_in_ais_shape(node) -> None:
    for body in REST_BAD_BODIES:
        r = requests.post(f"{node.endpoint}/v1/download", data=body, timeout=10)
        assert r.status_code == 400, (body[:80], r.text)
        err = r.json()
        assert err["status"] == 400 and err["message"] and err["url_path"] == "/v1/download"
    assert requests.get(f"{node.endpoint}/v1/download", json={}, timeout=5).json() == []
    assert "Traceback" not in node.log()


def test_rest_bad_admin_bodies_are_400(node) -> None:
    for body in ({"id": ["x"]}, {"regex": 5}, {"only_active_tasks": "yes"}, {"idd": "x"},
                 {"regex": "a" * (MAX_REGEX + 1)}, {"regex": "("}, {"id": "\ud800"}):
        for method, path in (("GET", "/v1/download"), ("DELETE", "/v1/download/abort")):
            r = requests.request(method, node.endpoint + path, json=body, timeout=5)
            assert r.status_code == 400 and r.json()["status"] == 400, (body, r.text)


def test_rest_deep_action_bodies_are_400(node) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for method, path in (("POST", "/v1/buckets/b"), ("GET", "/v1/buckets"),
                         ("PUT", "/v1/daemon")):
        r = requests.request(method, node.endpoint + path, data=deep, timeout=5)
        assert r.status_code == 400 and "nested too deeply" in r.json()["message"], r.text
    assert "Traceback" not in node.log()


def test_rest_unknown_query_parameters_are_refused(node) -> None:
    r = requests.get(f"{node.endpoint}/v1/download?regexp=x", json={}, timeout=5)
    assert r.status_code == 400 and "regexp" in r.json()["message"]


def test_oversized_body_is_413_and_object_puts_still_stream(node) -> None:
    from aisdl.api.app import MAX_REQUEST_BODY

    big = b" " * (MAX_REQUEST_BODY + 1)
    r = requests.post(f"{node.endpoint}/v1/download", data=big, timeout=30)
    assert r.status_code == 413, r.text
    assert r.json()["status"] == 413 and "too large" in r.json()["message"]
    assert requests.post(f"{node.endpoint}/v1/buckets/big", json={"action": "create-bck"},
                         timeout=5).status_code == 200
    r = requests.put(f"{node.endpoint}/v1/objects/big/obj", data=big, timeout=60)
    assert r.status_code == 200, r.text
    got = requests.get(f"{node.endpoint}/v1/objects/big/obj", timeout=60)
    assert len(got.content) == len(big)


def _poll_health(endpoint: str, stop: threading.Event, slowest: list[float]) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            requests.get(f"{endpoint}/v1/health", timeout=10).raise_for_status()
        except requests.RequestException:
            slowest.append(10.0)
            return
        slowest.append(time.monotonic() - t0)
        time.sleep(0.05)


def test_health_answers_while_a_big_object_list_is_validated(node) -> None:
    """A 10M-item list used to block `/v1/health` for minutes: it is validated off the loop.
    The list's last link is bad, so the whole list is read and the request refused."""
    objects = [f"http://127.0.0.1:1/d/f{i:07d}" for i in range(MAX_OBJECTS - 1)]
    objects.append("ftp://h/last")
    body = json.dumps({"type": "multi", "bucket": {"name": "b"}, "objects": objects}).encode()
    stop, times = threading.Event(), [0.0]
    poller = threading.Thread(target=_poll_health, args=(node.endpoint, stop, times))
    poller.start()
    try:
        r = requests.post(f"{node.endpoint}/v1/download", data=body, timeout=120)
    finally:
        stop.set()
        poller.join()
    assert r.status_code == 400 and "invalid scheme: ftp" in r.json()["message"]
    assert len(times) > 3 and max(times) < 3.0, times


def test_job_list_regex_cannot_hold_the_node(origin, node) -> None:
    origin.add("/r/a", payload("a", 10))
    c = node.client()
    job = c.start_download({"type": "single", "bucket": {"name": "b"},
                            "link": origin.url_for("/r/a"),
                            "description": "a" * (MAX_DESCRIPTION - 1) + "!"})
    wait_job(c, job)
    r = requests.get(f"{node.endpoint}/v1/download", json={"regex": "(a+)+$"}, timeout=20)
    assert r.status_code == 200 and r.json() == []
    assert [j["id"] for j in c.list_downloads("^a+!$")] == [job]


def test_rest_action_bodies_are_typed(node) -> None:
    """Values that were str()-ed or crashed the handler: each is a 400 now."""
    e = node.endpoint
    assert requests.post(f"{e}/v1/buckets/b", json={"action": "create-bck"},
                         timeout=5).status_code == 200
    assert requests.put(f"{e}/v1/objects/b/o", data=b"x", timeout=5).status_code == 200
    bad = [
        ("GET", "/v1/buckets/b", b'{"action": "list", "value": {"prefix": "\\ud800"}}'),
        ("GET", "/v1/buckets/b", b'{"action": "list", "value": {"pagesize": 1e400}}'),
        ("GET", "/v1/buckets/b", b'{"action": "list", "value": {"pagesize": NaN}}'),
        ("GET", "/v1/buckets/b", b'{"action": "list", "value": {"prefix": ["o"]}}'),
        ("GET", "/v1/buckets/b", b'{"action": "list", "value": {"start_after": {"a": 1}}}'),
        ("GET", "/v1/buckets/b", b'{"action": "list", "value": {"uuid": ["x"]}}'),
        ("POST", "/v1/buckets/c", b'{"action": "create-bck", "value": "x"}'),
        ("PATCH", "/v1/objects/b/o", b'{"value": {"k": "v\\r\\nX-Evil: 1"}}'),
        ("PATCH", "/v1/objects/b/o", b'{"value": {"k": "\\ud800"}}'),
        ("PATCH", "/v1/objects/b/o", b'{"value": {"k,x=y": "v"}}'),
        ("PATCH", "/v1/objects/b/o", b'{"value": {"k": {"a": [1]}}}'),
        ("PATCH", "/v1/objects/b/o", b'{"value": {"k": 5}}'),
    ]
    for method, path, body in bad:
        r = requests.request(method, e + path, data=body, timeout=5)
        assert r.status_code == 400 and r.json()["status"] == 400, (body, r.text)
    assert requests.patch(f"{e}/v1/objects/b/o", json={"value": {"k": "v w\tü"}},
                          timeout=5).status_code == 200
    head = requests.head(f"{e}/v1/objects/b/o", timeout=5)  # was: the connection dropped
    assert head.status_code == 200 and head.headers["Ais-Custom-Md"].startswith("k=v w\t")
    assert "Traceback" not in node.log()
