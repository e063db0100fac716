"""`GET /metrics`: scraped from a real node while and after jobs run against the fault-injecting
origin, parsed with prometheus_client's own parsers, and checked against the jobs' own counts
(their REST status) and what the origin did to them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from aisdl.engine.chunks import Row
from aisdl.engine.retry import retry_cause
from aisdl.errors import SourceError
from aisdl.observe.ledger import Ledger, RateWindow, WorstWindow, error_class
from conftest import Node
from helpers import free_port, wait_job
from origin import payload

# What a Prometheus server sends (v3): OpenMetrics first, the text format as a fallback.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
                     "application/openmetrics-text;version=0.0.1;q=0.4,"
                     "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
                     "text/plain;version=0.0.4;q=0.2,*/*;q=0.1")
LABEL_NAMES = {"job_id", "outcome", "cause", "class", "bucket", "node_id", "queue", "le"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(endpoint: str, headers: dict[str, str] | None = None) -> tuple[str, Samples]:
    r = requests.get(f"{endpoint}/metrics", headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers["Content-Type"]
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def job_series(samples: Samples, job_id: str) -> list[str]:
    return [name for name, labels in samples if ("job_id", job_id) in labels]


def start(endpoint: str, bucket: str, objects: dict[str, str], **extra: Any) -> str:
    r = requests.post(f"{endpoint}/v1/download", json={
        "type": "multi", "bucket": {"name": bucket}, "objects": objects, **extra}, timeout=10)
    assert r.status_code == 200, r.text
    job_id: str = r.json()["id"]
    return job_id


def test_scrape_during_and_after_jobs_with_retries_errors_and_skips(origin: Any,
                                                                    node: Node) -> None:
    sizes = {f"f{i}.bin": 1000 + 997 * i for i in range(12)}
    for name, size in sizes.items():
        origin.add(f"/m/{name}", payload(name, size))
    origin.fault("/m/f0.bin", "fail_then_ok", status=503, n=2)  # two 5xx retries
    origin.fault("/m/f2.bin", "retry_after", seconds=0, n=1)    # one 429, then
    origin.add_fault("/m/f2.bin", "stall", after=1000, seconds=8, n=1)  # bytes, then silence
    origin.fault("/m/f3.bin", "hang", seconds=8, n=1)           # no answer at all
    objects = {name: origin.url_for(f"/m/{name}") for name in sizes}
    objects["gone.bin"] = origin.url_for("/m/gone.bin")  # 404
    endpoint = node.endpoint
    job = start(endpoint, "m", objects, timeout="3s")  # the stall window

    # During: the stalled and the hanging file hold the job for three seconds at least. The
    # 429 before the stall comes from a fetch worker whose chunk still runs: it travels with
    # the chunk's progress.
    deadline = time.monotonic() + 2.5
    while True:
        _, during = scrape(endpoint)
        seen = value(during, "aisdl_job_retries_total", job_id=job, cause="429")
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    status = requests.get(f"{endpoint}/v1/download", json={"id": job}, timeout=10).json()
    assert status["finished_time"].startswith("1970"), "the job ended before the scrape"
    assert seen == 1
    assert value(during, "aisdl_retries_total", cause="429") == 1
    done = sum(value(during, "aisdl_job_files_total", job_id=job, outcome=o)
               for o in ("downloaded", "skipped", "evicted", "error"))
    assert done <= status["finished_cnt"] + status["error_cnt"]
    assert value(during, "aisdl_jobs_running") == 1
    assert ("aisdl_job_transfers_in_flight", frozenset({("job_id", job)})) in during

    status = wait_job(endpoint, job)
    text, after = scrape(endpoint)
    downloaded = sum(sizes.values())
    assert status["finished_cnt"] == len(sizes) and status["error_cnt"] == 1
    assert value(after, "aisdl_job_files_total", job_id=job, outcome="downloaded") == len(sizes)
    assert value(after, "aisdl_job_files_total", job_id=job, outcome="error") == 1
    assert value(after, "aisdl_job_bytes_total", job_id=job) == downloaded
    retries = {cause: value(after, "aisdl_job_retries_total", job_id=job, cause=cause)
               for cause in ("5xx", "429", "stall", "timeout")}
    assert retries == {"5xx": 2, "429": 1, "stall": 1, "timeout": 1}, text
    assert value(after, "aisdl_retries_total", cause="5xx") == 2
    assert value(after, "aisdl_job_errors_total", job_id=job, **{"class": "not_found"}) == 1
    assert value(after, "aisdl_errors_total", **{"class": "not_found"}) == 1
    # AIStore's own counters, under its exporter's names
    node_id = requests.get(f"{endpoint}/v1/daemon", params={"what": "smap"},
                           timeout=10).json()["tmap"].popitem()[0]
    assert value(after, "ais_target_dl_bytes", bucket="ais://m", node_id=node_id) == downloaded
    assert value(after, "ais_target_dl_ns_total", bucket="ais://m", node_id=node_id) > 0
    assert value(after, "ais_target_err_dl_count", node_id=node_id) == 1
    assert value(after, "aisdl_jobs_running") == 0
    assert ("aisdl_job_transfers_in_flight", frozenset({("job_id", job)})) not in after
    assert value(after, "aisdl_database_transaction_seconds_count") > 0

    # Run again: the origin says nothing changed, every file is skipped.
    again = start(endpoint, "m", {n: objects[n] for n in sizes})
    status = wait_job(endpoint, again)
    _, rerun = scrape(endpoint)
    assert status["skipped_cnt"] == status["finished_cnt"] == len(sizes)
    assert value(rerun, "aisdl_job_files_total", job_id=again, outcome="skipped") == len(sizes)
    assert value(rerun, "aisdl_job_files_total", job_id=again, outcome="downloaded") == 0
    assert value(rerun, "aisdl_job_bytes_total", job_id=again) == 0
    assert value(rerun, "aisdl_files_total", outcome="skipped") == len(sizes)
    assert value(rerun, "aisdl_files_total", outcome="downloaded") == len(sizes)
    assert value(rerun, "aisdl_bytes_total") == downloaded
    # the first job's figures are as they were
    assert value(rerun, "aisdl_job_bytes_total", job_id=job) == downloaded

    # What a Prometheus server asks for: OpenMetrics, which its own parser reads.
    r = requests.get(f"{endpoint}/metrics", headers={"Accept": PROMETHEUS_ACCEPT}, timeout=10)
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    names = {f.name for f in openmetrics_families(r.text)}
    assert {"ais_target_dl_bytes", "aisdl_job_files", "aisdl_retries"} <= names


def test_labels_never_name_objects_links_or_hosts(origin: Any, node: Node) -> None:
    names = ["secret-object-name.bin", "dir/inner-name.bin"]
    for name in names:
        origin.add(f"/{name}", payload(name, 500))
    origin.fault(f"/{names[0]}", "fail_then_ok", status=500, n=1)
    objects = {name: origin.url_for(f"/{name}") for name in names}
    objects["missing-name.bin"] = origin.url_for("/missing-name.bin")
    job = start(node.endpoint, "labels", objects)
    wait_job(node.endpoint, job)
    text, samples = scrape(node.endpoint)
    labels = {(k, v) for _, ls in samples for k, v in ls}
    assert {k for k, _ in labels} <= LABEL_NAMES
    for needle in ("secret-object-name", "inner-name", "missing-name", origin.url, "127.0.0.1",
                   "http://"):
        assert needle not in text, needle
    assert value(samples, "aisdl_job_retries_total", job_id=job, cause="5xx") == 1


def test_a_removed_jobs_series_go_away(origin: Any, node: Node) -> None:
    origin.add("/r.bin", payload("r", 4000))
    endpoint = node.endpoint
    kept = start(endpoint, "rm", {"kept.bin": origin.url_for("/r.bin")})
    removed = start(endpoint, "rm", {"removed.bin": origin.url_for("/r.bin")})
    wait_job(endpoint, kept)
    wait_job(endpoint, removed)
    _, before = scrape(endpoint)
    assert job_series(before, removed) and job_series(before, kept)
    r = requests.delete(f"{endpoint}/v1/download/remove", json={"id": removed}, timeout=10)
    assert r.status_code == 200, r.text
    _, after = scrape(endpoint)
    assert job_series(after, removed) == []
    assert job_series(after, kept) == job_series(before, kept)
    assert value(after, "aisdl_bytes_total") == 8000  # the node's totals keep what it did


def test_metrics_sit_behind_the_tokens(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"metrics-secret-of-thirty-two-bytes-at-least")
    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--auth-secret", str(secret)))
    n.start()
    try:
        assert requests.get(f"{n.endpoint}/metrics", timeout=10).status_code == 401
        token = jwt.encode({"sub": "prometheus", "exp": int(time.time()) + 60,
                            "clusters": [{"id": "", "perm": str(1 << 13)}]},  # show-cluster
                           secret.read_bytes(), algorithm="HS256")
        # as Prometheus scrapes: a bearer token, its Accept header, no Origin
        r = requests.get(f"{n.endpoint}/metrics", timeout=10, headers={
            "Authorization": f"Bearer {token}", "Accept": PROMETHEUS_ACCEPT,
            "User-Agent": "Prometheus/3.0.0"})
        assert r.status_code == 200, r.text
        assert "ais_target_err_dl_count" in r.text
    finally:
        n.stop()


# -- pure decisions --------------------------------------------------------------------------
def test_rate_window_with_a_fake_clock() -> None:
    now = [100.0]
    rate = RateWindow(window=10.0, clock=lambda: now[0])
    assert rate.rate() == 0.0
    rate.sample(0)
    assert rate.rate() == 0.0  # one sample is no rate
    for total in range(50, 501, 50):  # 50 per second for 10 s
        now[0] += 1
        rate.sample(total)
    assert rate.rate() == pytest.approx(50.0)
    for _ in range(5):  # then nothing for 5 s: half the window saw 250, the rest none
        now[0] += 1
        rate.sample(500)
    assert rate.rate() == pytest.approx(25.0)
    assert len(rate.samples) <= 12  # bounded: one sample before the window at most
    now[0] += 60  # no sample for a minute: nothing recent to show
    assert rate.rate() == 0.0
    rate.sample(400)  # a total that fell (never negative)
    assert rate.rate() == 0.0


def test_job_rates_with_a_fake_clock() -> None:
    now = [0.0]
    ledger = Ledger(clock=lambda: now[0])
    tally = ledger.open_job("j", "ais://b", 0, 0, 0)
    for i in range(5):  # a file of 100 bytes a second
        ledger.recorded(tally, [Row(i, f"o{i}", 0, 10, size=100, placed=True)])
        ledger.sample({"j": 50}, 0.0)
        now[0] += 1
    assert tally.files_rate.rate() == pytest.approx(1.0)
    assert tally.bytes_rate.rate() == pytest.approx(100.0)
    assert ledger.bytes_rate.rate() == pytest.approx(100.0)
    for _ in range(30):  # the job has ended: its rates fall to 0, then it is left alone
        ledger.sample({}, 0.0)
        now[0] += 1
    assert tally.files_rate.rate() == tally.bytes_rate.rate() == 0.0
    assert len(tally.files_rate.samples) <= 12
    assert ledger.snapshot()[2]["j"].files == {"downloaded": 5, "skipped": 0, "evicted": 0,
                                                "error": 0}


def test_worst_window_forgets_old_lag() -> None:
    now = [0.0]
    lag = WorstWindow(window=10.0, clock=lambda: now[0])
    lag.add(0.5)
    now[0] += 3
    lag.add(0.01)
    assert lag.worst() == 0.5
    now[0] += 8
    assert lag.worst() == 0.01


@pytest.mark.parametrize(("message", "got_bytes", "cause"), [
    ("request failed with 503 status code (Service Unavailable)", False, "5xx"),
    ("request failed with 500 status code (Internal Server Error)", True, "5xx"),
    ("request failed with 429 status code (Too Many Requests)", False, "429"),
    ("request failed with 408 status code (Request Timeout)", False, "other"),
    ("request timed out (no data for 1s)", True, "stall"),
    ("request timed out (no data for 1s)", False, "timeout"),
    ("s3://b/o: request timed out (timeout exceeded)", False, "timeout"),
    ("cannot connect: Failed to connect to 127.0.0.1 port 1", False, "connect"),
    ("cannot connect to 127.0.0.1:1: Connect call failed", False, "connect"),
    ("connection lost while reading the body: Connection reset by peer", True, "reset"),
    ("transfer slower than 1KiB/s for 1m", True, "slow"),
    ("got 10 bytes, the source announced 20", True, "other"),
])
def test_retry_causes(message: str, got_bytes: bool, cause: str) -> None:
    assert retry_cause(SourceError(message, transient=True), got_bytes) == cause


@pytest.mark.parametrize(("message", "cls"), [
    ("request failed with 404 status code (Not Found)", "not_found"),
    ("gs://b/o does not exist", "not_found"),
    ("request failed with 403 status code (Forbidden)", "denied"),
    ("request failed with 416 status code (Range Not Satisfiable)", "http_4xx"),
    ("request failed with 503 status code (Service Unavailable)", "http_5xx"),
    ("request timed out (no data for 1s)", "network"),
    ("cannot resolve host 'nowhere.invalid'", "network"),
    ("dload: 169.254.169.254 is a cloud metadata address", "blocked"),
    ("MD5 of the downloaded bytes does not match the source's", "verify"),
    ("SHA-256 of the downloaded bytes does not match the listing's", "verify"),
    ("got 10 bytes, the listing says 20", "verify"),
    ("the source's ETag 'a' is not the listing's 'b'", "verify"),
    ("the source changed during the blob download (an ETag); tried 3 times", "verify"),
    ("download timeout: not done within 500ms (the job's download_timeout)", "network"),
    ("object larger than the node's limit of 1MiB (max object size)", "too_large"),
    ('invalid object name "../x"', "name"),
    ("cannot write the object: No space left on device", "storage"),
    ("listing failed: request failed: boom", "listing"),
    ("internal error: ValueError: x", "internal"),
    ("something nobody foresaw", "other"),
])
def test_error_classes(message: str, cls: str) -> None:
    assert error_class(message) == cls
