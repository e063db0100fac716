"""Bad input: one clear line on stderr, exit code 2, nothing created, running jobs undisturbed."""

from __future__ import annotations

import json
import time

import pytest

from helpers import wait_job
from origin import payload

CASES = [
    (["start", "download"], 'missing arguments "SOURCE DESTINATION"'),
    (["start", "download", "http://h/x"], 'missing "destination" argument'),
    (["start", "download", "http://h/x/{1..}", "ais://b"], "invalid 'bash' template"),
    (["start", "download", "http://h/x/{5..1}", "ais://b"], "'start' cannot be greater than"),
    (["start", "download", "http://h/x/{a..z}", "ais://b"], "range values must be whole numbers"),
    (["start", "download", "http://h/a{1..3", "ais://b"], "unterminated '{' at character 11"),
    (["start", "download", "gs://b/a{1..3", "ais://b"], "unterminated '{'"),
    (["start", "download", "http://h/{0..99999}/{0..999}", "ais://b"], "too many values"),
    (["start", "download", "ftp://h/x", "ais://b"], "invalid scheme: ftp"),
    (["start", "download", "http://h/x", "b"], 'backend provider cannot be empty (did you mean'),
    (["start", "download", "http://h/x", "ais://b@d"], "bucket name 'b@d' is invalid"),
    (["start", "download", "http://h/x", "ais://b/../x"], 'invalid object name'),
    (["start", "download", "http://h/x", "ais://b", "--max-conns", "-1"], "--max-conns"),
    (["start", "download", "http://h/x", "ais://b", "--timeout", "soon"], "invalid duration"),
    (["start", "download", "http://h/x", "ais://b", "--limit-bph", "lots"], "invalid size"),
    (["start", "download", "http://h/x", "ais://b", "--sync"], "--sync needs a cloud bucket"),
    (["show", "job", "download", "dnl-nope"], "download job dnl-nope does not exist"),
    (["wait", "dnl-nope"], "download job dnl-nope does not exist"),
    (["stop", "download", "dnl-nope"], "download job dnl-nope does not exist"),
    (["job", "rm", "download", "dnl-nope"], "download job dnl-nope does not exist"),
    (["job", "rm", "download"], 'missing "JOB_ID" argument'),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_clear_line(ais, args, message):
    r = ais(*args, check=False)
    assert r.returncode == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert ais("ls", "-H").stdout.strip() == ""  # nothing was created


def test_shell_expanded_template_hints_at_quotes(ais):
    r = ais("start", "download", "gs://b/t-000000.tgz", "gs://b/t-000001.tgz", "ais://b",
            check=False)
    assert r.returncode == 2
    assert "too many arguments - expected 2, got 3." in r.stderr
    assert 'enclose source in quotation marks' in r.stderr


@pytest.mark.parametrize(("content", "reason"), [
    ("not json", "doesn't seem to contain JSON array of strings"),
    ('{"a": "b"}', "doesn't seem to contain JSON array of strings"),
    ('["ok", 3]', "doesn't seem to contain JSON array of strings"),
])
def test_bad_object_list_file(ais, tmp_path, content, reason):
    path = tmp_path / "list.json"
    path.write_text(content)
    r = ais("start", "download", "http://h", "ais://b", "--object-list", str(path), check=False)
    assert r.returncode == 2 and reason in r.stderr and str(path) in r.stderr


def test_bad_input_leaves_running_jobs_alone(origin, ais):
    for i in range(3):
        origin.add(f"/s/f{i}", payload(str(i), 150_000))
        origin.fault(f"/s/f{i}", "slow", rate=300_000)
    job = ais("start", "download", origin.url_for("/s/") + "f{0..2}", "ais://b/").stdout.split()[0]
    time.sleep(0.2)
    for args, _ in CASES[2:10]:
        assert ais(*args, check=False).returncode == 2
    st = wait_job(ais, job)
    assert (st["finished_cnt"], st["error_cnt"], st["aborted"]) == (3, 0, False)


def test_malformed_rest_bodies(node):
    import requests

    for body in (b"{", b"[]", b'"x"', json.dumps({"type": "single"}).encode()):
        r = requests.post(f"{node.endpoint}/v1/download", data=body, timeout=5)
        assert r.status_code == 400
        err = r.json()
        assert err["status"] == 400 and err["message"] and err["url_path"] == "/v1/download"
