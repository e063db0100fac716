"""Nothing half-understood: every query parameter, `what` value, action and `Ais-*` header that
AIStore's API defines, tried against every route of a node.

Each name is either carried out by that route (api/accepted.py; where its behaviour is tested is
listed in TESTED_IN, and checked to exist) or refused: 501 when AIS defines the name, 400 when it
does not, in AIS's error shape, naming it, with the store byte-for-byte as it was (buckets and
their props, listings, object bytes and attributes, jobs).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests

from aisdl.api import accepted, ais_names
from aisdl.api.accepted import Body
from aisdl.api.app import create_app
from aisdl.config import NodeConfig
from helpers import wait_job
from helpers_app import running_node
from origin import payload

TESTS = Path(__file__).parent
# Names AIS does not define (some are near-misses of real ones): always a 400.
NOT_AIS_PARAMS = ("bogus", "appendty", "obj_to", "objto", "handle", "archregex", "Provider",
                  "prefix")
NOT_AIS_WHATS = ("bogus", "jobs", "SMAP")
NOT_AIS_ACTIONS = ("bogus", "copy", "rename", "delete-objects", "List")
NOT_AIS_HEADERS = ("Ais-Bogus", "Ais-Append-Type", "Ais-Object-To")
AIS_ERROR_KEYS = {"message", "method", "url_path", "remote_addr", "caller", "node", "status"}
LIST = {"action": "list", "name": "", "value": None}
PENDING = "pending merge:"  # carried out on a branch of issue 15 that is not merged yet

# Where the behaviour of each name a route accepts is tested (a name may mean one thing on all
# the routes that take it, e.g. `provider`).
TESTED_IN: dict[str, str] = {
    # query parameters
    "provider": "test_rest_buckets_objects.py::test_bucket_create_list_head_destroy",
    "namespace": "test_api_sweep.py::test_only_the_global_namespace",
    "props": "test_rest_buckets_objects.py::test_put_get_head_delete",
    "set-new-custom": "test_api_sweep.py::test_set_new_custom_reads_booleans_as_ais_does",
    "prr": "test_rest_buckets_objects.py::test_smap_bmd_health",
    "readiness": "test_rest_buckets_objects.py::test_smap_bmd_health",
    "apr": "test_api_sweep.py::test_health_answers_as_the_primary",
    "what": "test_rest_buckets_objects.py::test_smap_bmd_health",
    "object_to": "test_object_copy_append.py::test_copy_to_another_bucket_same_and_other_name",
    "latest-ver": "test_object_copy_append.py::test_copy_refusals_change_nothing",
    "synchronize": "test_object_copy_append.py::test_copy_refusals_change_nothing",
    "append_type": "test_object_copy_append.py::test_append_content_is_invisible_until_flush",
    "append_handle": "test_object_copy_append.py::test_append_refusals_change_nothing",
    "archpath": "test_list_flags_archive.py::test_get_one_member_of_a_shard",
    "archregx": "test_list_flags_archive.py::test_get_members_that_match_is_a_tar_of_them",
    "archmode": "test_list_flags_archive.py::test_get_members_that_match_is_a_tar_of_them",
    "archmime":
        "test_list_flags_archive.py::test_archmime_names_the_kind_of_a_shard_without_an_extension",
    "errors_after": "test_dashboard.py::test_a_job_as_the_page_reads_it_only_what_is_new",
    "tasks_after": "test_dashboard.py::test_a_job_as_the_page_reads_it_only_what_is_new",
    # values of `what`
    "what=smap": "test_rest_buckets_objects.py::test_smap_bmd_health",
    "what=bmd": "test_rest_buckets_objects.py::test_smap_bmd_health",
    "what=qryxstats": "test_sdk_jobs.py::test_wait_status_details_and_running_list",
    "what=status": "test_sdk_jobs.py::test_wait_status_details_and_running_list",
    "what=status_all": "test_sdk_jobs.py::test_unknown_job_id_is_404",
    "what=running_all": "test_sdk_jobs.py::test_wait_status_details_and_running_list",
    # actions
    "list": "test_rest_buckets_objects.py::test_list_objects_pages",
    "create-bck": "test_rest_buckets_objects.py::test_bucket_create_list_head_destroy",
    "destroy-bck": "test_rest_buckets_objects.py::test_bucket_create_list_head_destroy",
    "set-bprops": "test_rest_buckets_objects.py::test_set_and_reset_bucket_props",
    "reset-bprops": "test_rest_buckets_objects.py::test_set_and_reset_bucket_props",
    "delete": "test_api_sweep.py::test_delete_object_with_its_action_message",
    "shutdown-node": "test_node.py::test_first_command_starts_a_background_node",
    "prefetch-listrange": "test_multi_object.py::test_sdk_prefetch_then_evict_a_cloud_bucket",
    "delete-listrange": "test_multi_object.py::test_sdk_delete_list_removes_the_listed_objects",
    "evict-listrange": "test_multi_object.py::test_sdk_prefetch_then_evict_a_cloud_bucket",
    "stop": "test_sdk_jobs.py::test_wait_on_an_aborted_job_fails_promptly",
    "start": "test_sdk_jobs.py::test_invalid_kind_is_400_and_download_is_not_started_here",
    # headers
    "Ais-Checksum-Type": "test_api_sweep.py::test_put_checks_the_checksum_it_is_given",
    "Ais-Checksum-Value": "test_api_sweep.py::test_put_checks_the_checksum_it_is_given",
    "Ais-Custom-Md": "test_rest_buckets_objects.py::test_chunked_put_and_custom_metadata",
}


@dataclass(frozen=True)
class Sample:
    """A request a route carries out (most of them change the store): the sweep adds one name
    to it, and the answer must then be a refusal with nothing changed."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON, or bytes for an object PUT
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, s: requests.Session, endpoint: str) -> requests.Response:
        data = self.body if isinstance(self.body, bytes) else (
            None if self.body is None else json.dumps(self.body))
        headers = {"Content-Type": "application/json", **self.headers} if data else self.headers
        return s.request(self.method, endpoint + self.path, params=self.query, data=data,
                         headers=headers, timeout=10)


def lso() -> dict[str, Any]:
    return {"action": "list", "name": "", "value": {"prefix": "", "props": "", "flags": "0"}}


def samples(job_id: str, link: str) -> dict[tuple[str, str], Sample]:
    ais = {"provider": "ais"}
    obj = "/v1/objects/sweep/obj"
    return {
        ("GET", "/v1/buckets"): Sample("GET", "/v1/buckets", ais, LIST),
        ("GET", accepted.BUCKETS): Sample("GET", "/v1/buckets/sweep", ais, lso()),
        ("POST", accepted.BUCKETS): Sample("POST", "/v1/buckets/fresh", ais,
                                           {"action": "create-bck", "name": "", "value": None}),
        ("DELETE", accepted.BUCKETS): Sample("DELETE", "/v1/buckets/victim", ais,
                                             {"action": "destroy-bck", "name": "",
                                              "value": None}),
        ("HEAD", accepted.BUCKETS): Sample("HEAD", "/v1/buckets/sweep", ais),
        ("PATCH", accepted.BUCKETS): Sample("PATCH", "/v1/buckets/sweep", ais,
                                            {"action": "set-bprops", "name": "",
                                             "value": {"versioning": {"enabled": False}}}),
        ("PUT", accepted.OBJECTS): Sample("PUT", obj, ais, b"overwritten"),
        ("GET", accepted.OBJECTS): Sample("GET", obj, ais),
        ("HEAD", accepted.OBJECTS): Sample("HEAD", obj, ais),
        ("DELETE", accepted.OBJECTS): Sample("DELETE", obj, ais),
        ("PATCH", accepted.OBJECTS): Sample("PATCH", obj, ais,
                                            {"action": "", "name": "", "value": {"k": "new"}}),
        ("GET", "/v1/daemon"): Sample("GET", "/v1/daemon", {"what": "smap"}),
        ("PUT", "/v1/daemon"): Sample("PUT", "/v1/daemon", {},
                                      {"action": "shutdown-node", "name": "", "value": None}),
        ("GET", "/v1/health"): Sample("GET", "/v1/health"),
        ("GET", "/v1/cluster"): Sample("GET", "/v1/cluster", {"what": "qryxstats"},
                                       {"kind": "download"}),
        ("PUT", "/v1/cluster"): Sample("PUT", "/v1/cluster", {},
                                       {"action": "stop", "name": "",
                                        "value": {"kind": "download"}}),
        ("POST", "/v1/download"): Sample("POST", "/v1/download", {}, {
            "type": "single", "bucket": {"name": "sweep", "provider": "ais"}, "link": link,
            "object_name": "started"}),
        ("GET", "/v1/download"): Sample("GET", "/v1/download", {}, {}),
        ("HEAD", "/v1/download"): Sample("HEAD", "/v1/download", {}, {}),
        ("DELETE", "/v1/download/{action}"): Sample("DELETE", "/v1/download/remove", {},
                                                    {"id": job_id}),
        ("GET", "/"): Sample("GET", "/"),
        ("GET", "/ui"): Sample("GET", "/ui"),
        ("GET", "/ui/{file}"): Sample("GET", "/ui/app.js"),
        ("GET", "/ui/api/jobs/{id}"): Sample("GET", f"/ui/api/jobs/{job_id}",
                                             {"errors_after": "0", "tasks_after": "0"}),
        ("GET", "/metrics"): Sample("GET", "/metrics"),
    }


# The order the samples themselves are sent in at the end (each must work): reads first, the
# node's shutdown last.
SAMPLE_ORDER = ("GET", "HEAD", "PATCH", "PUT", "POST", "DELETE")


def app_routes(home: Path) -> list[tuple[str, str]]:
    """Every (method, route) the node serves, routes spelled as the table spells them."""
    app = create_app(NodeConfig(home=home))
    return sorted({(r.method, r.resource.canonical.rstrip("/") or "/")
                   for r in app.router.routes()
                   if r.resource is not None})


# -- the store, as a client sees it ------------------------------------------------------------
def snapshot(s: requests.Session, endpoint: str) -> dict[str, Any]:
    """Buckets with their props, every object's listing entry, bytes and attributes, jobs."""
    out: dict[str, Any] = {}
    buckets = s.get(endpoint + "/v1/buckets", json=LIST, timeout=10).json()
    for b in buckets:
        name, q = b["name"], {"provider": b["provider"]}
        props = s.head(f"{endpoint}/v1/buckets/{name}", params=q, timeout=10)
        msg = {**lso(), "value": {"props": "name,size,version,checksum,atime,custom"}}
        entries = s.get(f"{endpoint}/v1/buckets/{name}", params=q, json=msg,
                        timeout=10).json()["entries"]
        objects = {}
        for e in entries:
            url = f"{endpoint}/v1/objects/{name}/{e['name']}"
            head = s.head(url, params=q, timeout=10).headers
            objects[e["name"]] = (s.get(url, params=q, timeout=10).content, e,
                                  sorted((k, v) for k, v in head.items()
                                         if k.lower().startswith("ais-") or k == "ETag"))
        out[f"{b['provider']}/{name}"] = (props.headers.get("Ais-Bucket-Props"), objects)
    out["jobs"] = s.get(endpoint + "/v1/download", json={}, timeout=10).json()
    return out


# -- the answers ---------------------------------------------------------------------------------
def ais_error(r: requests.Response) -> dict[str, Any]:
    text = r.headers.get("Hdr-Error") if r.request.method == "HEAD" else r.text
    assert text, f"{r.request.method} {r.url}: {r.status_code} without an AIS error body"
    err: dict[str, Any] = json.loads(text)
    assert AIS_ERROR_KEYS <= set(err) and err["status"] == r.status_code, text
    return err


def check_refused(r: requests.Response, name: str, status: int | None) -> None:
    """`status`: the exact status expected (the message then names `name`); None: any 4xx."""
    what = f"{r.request.method} {r.url} ({name})"
    assert 400 <= r.status_code < 500 or r.status_code == 501, f"{what}: {r.status_code}"
    err = ais_error(r)
    if status is not None:
        assert r.status_code == status, f"{what}: {r.status_code} {err['message']}"
        assert name.lower() in err["message"].lower(), f"{what}: {err['message']}"


@dataclass
class Sweep:
    s: requests.Session
    endpoint: str
    before: dict[str, Any]
    tried: dict[str, int] = field(default_factory=dict)  # kind → (name, route) pairs tried
    skipped: dict[str, int] = field(default_factory=dict)  # kind → accepted (tested elsewhere)

    def count(self, kind: str, accepted_here: bool) -> None:
        into = self.skipped if accepted_here else self.tried
        into[kind] = into.get(kind, 0) + 1

    def unchanged(self, route: tuple[str, str], kind: str) -> None:
        after = snapshot(self.s, self.endpoint)
        assert after == self.before, f"{kind} on {route} changed the store"


def names_in_use() -> set[str]:
    """Every name the table accepts on some route (TESTED_IN must say where it is tested)."""
    used: set[str] = set()
    for rule in accepted.ROUTES.values():
        used |= set(rule.params) | set(rule.actions) | set(rule.headers)
        what = rule.params.get("what")
        if what is not None and what.accepted is not None:
            used |= {f"what={v}" for v in what.accepted}
    return used


def test_every_route_is_in_the_table_and_the_sweep(tmp_path: Path) -> None:
    table = {(m, r.rstrip("/") or "/") for m, r in accepted.ROUTES}
    sweep = set(samples("id", "http://h/x"))
    for route in app_routes(tmp_path):
        assert route in table, f"{route} is missing from api/accepted.py ROUTES"
        assert route in sweep, f"{route} is missing from this file's samples()"


def test_every_accepted_name_says_where_it_is_tested() -> None:
    missing = sorted(names_in_use() - set(TESTED_IN))
    assert not missing, f"accepted but not listed in TESTED_IN: {missing}"
    for name, where in TESTED_IN.items():
        if where.startswith(PENDING):
            continue
        file, _, test = where.partition("::")
        assert re.search(rf"^def {re.escape(test)}\(", (TESTS / file).read_text(), re.M), \
            f"{name}: {where} does not exist"


def test_sweep_every_ais_name_against_every_route(node: Any, origin: Any,
                                                  tmp_path: Path) -> None:
    endpoint = node.endpoint
    origin.add("/file.bin", payload("file", 1000))
    with requests.Session() as s:
        s.trust_env = False
        for bucket in ("sweep", "victim"):
            s.post(f"{endpoint}/v1/buckets/{bucket}", json={"action": "create-bck"},
                   timeout=10).raise_for_status()
        for name, data in (("obj", b"object bytes"), ("dir/inner", payload("inner", 3000))):
            s.put(f"{endpoint}/v1/objects/sweep/{name}", data=data,
                  headers={"Ais-Custom-Md": "k=v"}, timeout=10).raise_for_status()
        s.put(f"{endpoint}/v1/objects/victim/x", data=b"x", timeout=10).raise_for_status()
        job = s.post(f"{endpoint}/v1/download", json={
            "type": "single", "bucket": {"name": "sweep"}, "link": origin.url_for("/file.bin"),
            "object_name": "fetched"}, timeout=10).json()["id"]
        wait_job(endpoint, job)

        sweep = Sweep(s, endpoint, snapshot(s, endpoint))
        assert "ais/sweep" in sweep.before and len(sweep.before["ais/sweep"][1]) == 3
        started = time.monotonic()
        routes = app_routes(tmp_path / "routes")
        base = samples(job, origin.url_for("/file.bin"))
        for route in routes:
            _sweep_route(sweep, route, base[route])
        elapsed = time.monotonic() - started
        per_route = {"query parameter": len(ais_names.QUERY_PARAMS) + len(NOT_AIS_PARAMS),
                     "header": len(ais_names.HEADERS) + len(NOT_AIS_HEADERS)}
        for kind, names in per_route.items():  # nothing left out
            assert sweep.tried[kind] + sweep.skipped[kind] == names * len(routes), kind
        pairs = ", ".join(f"{k}: {v}" for k, v in sorted(sweep.tried.items()))
        accepted_pairs = ", ".join(f"{k}: {v}" for k, v in sorted(sweep.skipped.items()))
        print(f"\nsweep of {len(routes)} routes in {elapsed:.1f}s; (name, route) pairs refused"
              f" with nothing changed: {pairs}; accepted (tested elsewhere): {accepted_pairs}")

        # Each sample, alone, is carried out: the refusals above were the added name's doing.
        order = sorted(routes, key=lambda r: (r == ("PUT", "/v1/daemon"),
                                              SAMPLE_ORDER.index(r[0])))
        for route in order:
            r = base[route].send(s, endpoint)
            assert r.status_code < 300, f"sample of {route}: {r.status_code} {r.text}"


def _sweep_route(sweep: Sweep, route: tuple[str, str], sample: Sample) -> None:
    rule = accepted.accepts(*route)
    endpoint, s = sweep.endpoint, sweep.s
    # query parameters
    for name in sorted(ais_names.QUERY_PARAMS) + list(NOT_AIS_PARAMS):
        here = name in rule.params
        sweep.count("query parameter", here)
        if not here:
            r = replace(sample, query={**sample.query, name: "true"}).send(s, endpoint)
            check_refused(r, name, 501 if name in ais_names.QUERY_PARAMS else 400)
    # a value outside those an accepted parameter takes
    for name, values in sorted(rule.params.items()):
        if values.accepted is not None:
            sweep.count("value", False)
            r = replace(sample, query={**sample.query, name: "bogus"}).send(s, endpoint)
            check_refused(r, name, 501 if values.ais is None else 400)
    sweep.unchanged(route, "query parameters")
    # values of `what`, where a route takes it
    what = rule.params.get("what")
    if what is not None:
        for value in sorted(ais_names.WHAT_VALUES) + list(NOT_AIS_WHATS):
            here = what.accepted is None or value in what.accepted
            sweep.count("what", here)
            if not here:
                r = replace(sample, query={**sample.query, "what": value}).send(s, endpoint)
                check_refused(r, value, 501 if value in ais_names.WHAT_VALUES else 400)
        sweep.unchanged(route, "what values")
    # actions: an object PUT's body is the object's bytes, whatever they look like
    if rule.body is not Body.DATA:
        for name in sorted(ais_names.ACTIONS) + list(NOT_AIS_ACTIONS):
            here = name in rule.actions
            sweep.count("action", here)
            if here:
                continue
            msg = {"action": name, "name": "", "value": None}
            if rule.body is Body.ACTION:
                r = replace(sample, body={**(sample.body or msg), "action": name}).send(s, endpoint)
                check_refused(r, name, 501 if name in ais_names.ACTIONS else 400)
            else:  # no body, or a JSON body of the route's own: any 4xx
                check_refused(replace(sample, body=msg).send(s, endpoint), name, None)
        sweep.unchanged(route, "actions")
    # headers
    for name in sorted(ais_names.HEADERS) + list(NOT_AIS_HEADERS):
        here = name.lower() in {h.lower() for h in rule.headers}
        sweep.count("header", here)
        if not here:
            r = replace(sample, headers={**sample.headers, name: "true"}).send(s, endpoint)
            check_refused(r, name, 501 if name in ais_names.HEADERS else 400)
    sweep.unchanged(route, "headers")


# -- what the table carries out that no other test covers --------------------------------------
@pytest.fixture(scope="module")
def inproc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_node(tmp_path_factory.mktemp("home")) as n:
        requests.post(f"{n.endpoint}/v1/buckets/b", json={"action": "create-bck"}, timeout=10)
        yield n.endpoint


def test_only_the_global_namespace(inproc: str) -> None:
    url = f"{inproc}/v1/objects/b/ns"
    assert requests.put(url, params={"namespace": ""}, data=b"1", timeout=10).status_code == 200
    r = requests.put(url, params={"namespace": "@uuid#ns"}, data=b"2", timeout=10)
    assert r.status_code == 501 and "namespace" in r.json()["message"], r.text
    assert requests.get(url, timeout=10).content == b"1"


def test_health_answers_as_the_primary(inproc: str) -> None:
    for query in ("apr=true", "prr=true&apr=true", "readiness=true"):
        assert requests.get(f"{inproc}/v1/health?{query}", timeout=10).status_code == 200
    r = requests.get(f"{inproc}/v1/health?cii=true", timeout=10)
    assert r.status_code == 501 and "'cii'" in r.json()["message"]


def test_set_new_custom_reads_booleans_as_ais_does(inproc: str) -> None:
    url = f"{inproc}/v1/objects/b/custom"
    requests.put(url, data=b"x", headers={"Ais-Custom-Md": "old=1"}, timeout=10)
    patch = {"action": "", "name": "", "value": {"new": "2"}}
    assert requests.patch(url, params={"set-new-custom": "yes"}, json=patch,
                          timeout=10).status_code == 200
    assert requests.head(url, timeout=10).headers["Ais-Custom-Md"] == "new=2"
    r = requests.patch(url, params={"set-new-custom": "maybe"}, json=patch, timeout=10)
    assert r.status_code == 400 and "set-new-custom" in r.json()["message"]


def test_delete_object_with_its_action_message(inproc: str) -> None:
    url = f"{inproc}/v1/objects/b/gone"
    requests.put(url, data=b"x", timeout=10)
    r = requests.delete(url, json={"action": "delete", "name": "", "value": None}, timeout=10)
    assert r.status_code == 200
    assert requests.head(url, timeout=10).status_code == 404


def test_put_checks_the_checksum_it_is_given(inproc: str) -> None:
    url = f"{inproc}/v1/objects/b/summed"
    good = {"Ais-Checksum-Type": "xxhash2", "Ais-Checksum-Value": "45ab6734b21e6968"}
    assert requests.put(url, data=b"hello world", headers=good, timeout=10).status_code == 200
    bad = {**good, "Ais-Checksum-Value": "0" * 16}
    r = requests.put(url, data=b"other bytes", headers=bad, timeout=10)
    assert r.status_code == 400 and "checksum mismatch" in r.json()["message"]
    assert requests.get(url, timeout=10).content == b"hello world"


def test_half_understood_requests_change_nothing(inproc: str) -> None:
    """The cases that answered 200 and changed or ignored something before the table."""
    url = f"{inproc}/v1/objects/b/kept"
    requests.put(url, data=b"kept bytes", timeout=10)
    cases = [
        ("PUT", {"append_type": "bogus"}, b"chunk", 400),    # was stored over the object
        ("PUT", {"appendty": "append"}, b"chunk", 400),      # not AIS's name: was stored too
        ("PUT", {"skip_vc": "true"}, b"chunk", 501),
        ("GET", {"etl_name": "x"}, None, 501),               # was the plain object
        ("DELETE", {"keep_bck_md": "true"}, None, 501),      # was deleted
        ("PUT", {"provider": ["ais", "gcp"]}, b"chunk", 400),
    ]
    for method, query, data, status in cases:
        r = requests.request(method, url, params=query, data=data, timeout=10)
        assert r.status_code == status, (method, query, r.text)
    assert requests.get(url, timeout=10).content == b"kept bytes"
    r = requests.get(url, headers={"Ais-Blob-Download": "true"}, timeout=10)
    assert r.status_code == 501 and "Ais-Blob-Download" in r.json()["message"]
    r = requests.get(url, json={"action": "rename-obj", "name": "x", "value": None}, timeout=10)
    assert r.status_code == 400 and "takes no request body" in r.json()["message"]
    r = requests.post(f"{inproc}/v1/buckets/b", json={"action": "copy-bck"}, timeout=10)
    assert r.status_code == 501 and "copy-bck" in r.json()["message"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v1/objects/sweep", 501),           # AIS: promote
    ("POST", "/v1/objects/sweep/obj", 501),       # AIS: multipart upload, rename
    ("PUT", "/v1/buckets", 501),                  # AIS: archive, copy of many buckets
    ("GET", "/v1/sort", 501),                     # AIS: dsort
    ("POST", "/v1/etl/init", 501),
    ("GET", "/v1/tokens", 501),
    ("GET", "/v1/nonsense", 404),                 # not AIS's either
    ("GET", "/v2/objects/sweep/obj", 404),
])
def test_ais_requests_no_route_serves_are_501(inproc: str, method: str, path: str,
                                              status: int) -> None:
    r = requests.request(method, inproc + path, timeout=10)
    assert r.status_code == status, r.text
    if status == 501:
        assert ais_error(r)["message"].endswith("is not served by this node")
