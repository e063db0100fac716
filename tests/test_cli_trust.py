"""What the CLI tells a user must be true: auto-start says what is on the port, Ctrl-C says the
job goes on, exit codes follow one contract, errors carry no internal ids, the bars keep failed
files apart from downloaded ones, `ais --version`."""

from __future__ import annotations

import http.server
import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from aisdl.cli.progress import JobBars, _bars
from aisdl.errors import NotFound
from helpers import free_port, is_finished, wait_job
from origin import payload

Ais = Any  # the `ais` fixture of conftest.py


def _run_ais(env: dict[str, str], *args: str,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aisdl", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


def _env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    return {**os.environ, "AIS_ENDPOINT": f"http://127.0.0.1:{port}", "HOME": str(tmp_path),
            "AISDL_HOME": str(tmp_path / "bg"), "PYTHONUNBUFFERED": "1", **extra}


# -- ais --version, ais --help --------------------------------------------------------------
def test_version_prints_the_installed_version_without_a_node(tmp_path):
    r = _run_ais(_env(tmp_path, free_port()), "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"ais (aisdl) {importlib.metadata.version('aisdl')}\n"
    assert r.stderr == ""  # no background node was started for it


def test_help_states_the_exit_codes(tmp_path):
    out = _run_ais(_env(tmp_path, free_port()), "--help").stdout
    assert "Exit codes:" in out
    for line in ("0  ", "1  ", "2  ", "130"):
        assert any(row.strip().startswith(line.strip()) for row in out.splitlines()), out


# -- auto-start -----------------------------------------------------------------------------
class _NotANode(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[int]:
    """Some other web server on a loopback port: 404 for everything."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotANode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.mark.parametrize("occupant", ["web_server", "silent_listener"])
def test_autostart_on_a_port_taken_by_something_else_says_so_at_once(tmp_path, request,
                                                                     occupant):
    port = request.getfixturevalue(occupant)
    r = _run_ais(_env(tmp_path, port), "ls", timeout=15)  # no 20 s wait for a node to answer
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"Error: port {port} on 127.0.0.1 is in use by something that"
                               " is not an aisdl node"), lines[0]
    assert "AIS_ENDPOINT" in lines[0]
    assert "Started" not in r.stderr


def test_autostart_reports_a_node_that_exits_at_once(tmp_path):
    port = free_port()
    (tmp_path / "bg" / "aisdl.db").mkdir(parents=True)  # a database that cannot be opened
    began = time.monotonic()
    r = _run_ais(_env(tmp_path, port), "ls", timeout=30)
    took = time.monotonic() - began
    assert r.returncode == 2, r.stderr
    assert "Started a background node" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the background node exited"), r.stderr
    assert "unable to open database file" in lines[0]  # the node's own last words
    assert str(tmp_path / "bg" / "node.log") in lines[0]
    assert took < 15, f"took {took:.1f}s: the exit was not noticed"


# -- Ctrl-C while watching ------------------------------------------------------------------
WATCHERS = {
    "start --wait": ("start", "download", "{url}", "ais://b/slow", "--wait"),
    "start --progress": ("start", "download", "{url}", "ais://b/slow", "--progress",
                         "--progress-interval", "100ms"),
    "wait": ("wait", "{job}", "--refresh", "100ms"),
    "wait --progress": ("wait", "{job}", "--progress", "--refresh", "100ms"),
    "show --refresh": ("show", "job", "download", "{job}", "--refresh", "100ms"),
    "show --progress": ("show", "job", "download", "{job}", "--progress", "--refresh", "100ms"),
}


@pytest.mark.parametrize("how", list(WATCHERS))
def test_ctrl_c_while_watching_leaves_the_job_running_and_says_so(origin, ais, how):
    origin.add_virtual("/slow.bin", 20 * 1024 * 1024, seed=5, etag="s")
    origin.fault("/slow.bin", "slow", rate=200_000)
    url = origin.url_for("/slow.bin")
    job = ""
    if not how.startswith("start"):
        job = ais("start", "download", url, "ais://b/slow").stdout.split()[0]
    args = [a.format(url=url, job=job) for a in WATCHERS[how]]
    # As a terminal's Ctrl-C finds it: a suite started in the background of a shell without
    # job control has SIGINT ignored, and a child inherits that
    proc = subprocess.Popen([sys.executable, "-m", "aisdl", *args], env=ais.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if how.startswith("start"):
            job = proc.stdout.readline().strip()  # the id comes first, then the watching
        time.sleep(3.0)  # well into the watch loop
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Aborted." not in out + err
    assert f"download job {job} continues in the background" in err, err
    assert f"ais stop download {job}" in err
    st = ais.node.client().download_status(job)
    assert not is_finished(st) and not st["aborted"], st
    ais("stop", "download", job)


# -- exit codes -----------------------------------------------------------------------------
def _finished_jobs(origin, ais: Ais) -> dict[str, str]:
    origin.add("/ok", payload("ok", 10))
    origin.add("/e/f0", payload("f0", 10))
    origin.add("/slow.bin", payload("slow", 2_000_000))
    origin.fault("/slow.bin", "slow", rate=100_000)
    jobs = {
        "ok": ais("start", "download", origin.url_for("/ok"), "ais://b/ok").stdout.split()[0],
        "errors": ais("start", "download", origin.url_for("/e/") + "f{0..1}",
                      "ais://b/").stdout.split()[0],
        "aborted": ais("start", "download", origin.url_for("/slow.bin"),
                       "ais://b/aborted").stdout.split()[0],
    }
    ais("stop", "download", jobs["aborted"])
    for job in jobs.values():
        wait_job(ais, job)
    jobs["running"] = ais("start", "download", origin.url_for("/slow.bin"),
                          "ais://b/running").stdout.split()[0]
    return jobs


# (command, job) -> exit code: 0 done without errors (or still running, for a plain `show`),
# 1 ended with errors or aborted, 2 the command itself failed.
SHOWS = [("show", "job", "download", "{job}"),
         ("show", "job", "download", "{job}", "--json"),
         ("show", "job", "download", "{job}", "--progress", "--refresh", "100ms"),
         ("wait", "{job}", "--refresh", "100ms"),
         ("wait", "download", "{job}", "--progress", "--refresh", "100ms")]


def test_exit_codes_are_one_contract_in_every_command_that_waits_or_shows(origin, ais):
    jobs = _finished_jobs(origin, ais)
    expected = {"ok": 0, "errors": 1, "aborted": 1, "dnl-nope": 2}
    for kind, code in {**expected, "running": 0}.items():
        job = jobs.get(kind, kind)
        forms = SHOWS[:2] if kind == "running" else SHOWS  # the others would wait
        for form in forms:
            r = ais(*(a.format(job=job) for a in form), check=False)
            assert r.returncode == code, (kind, form, r.returncode, r.output)
            assert "Traceback" not in r.output
    assert ais("show", "job", "download", check=False).returncode == 0  # a list of jobs
    url = origin.url_for("/ok")
    starts = {"": 0, "-missing": 1}
    for suffix, code in starts.items():
        for flag in ("--wait", "--progress"):
            r = ais("start", "download", url + suffix, f"ais://b/s{suffix}", flag, check=False)
            assert r.returncode == code, (suffix, flag, r.output)


@pytest.mark.parametrize("args", [("wait",), ("wait", "--refresh", "soon", "x"),
                                  ("show", "job", "download", "a", "b"),
                                  ("start", "download", "http://h/x"),
                                  ("start", "download", "ftp://h/x", "ais://b", "--wait")])
def test_a_command_that_fails_exits_2(ais, args):
    r = ais(*args, check=False)
    assert r.returncode == 2, r.output
    assert r.stderr.startswith("Error: ") and "Traceback" not in r.output


def test_an_unreachable_node_exits_2(tmp_path):
    env = {**os.environ, "AIS_ENDPOINT": "http://192.0.2.1:1", "HOME": str(tmp_path)}
    r = _run_ais(env, "wait", "dnl-x")
    assert r.returncode == 2
    assert r.stderr.startswith("Error: no node answers at http://192.0.2.1:1")


def test_a_wait_that_times_out_is_a_failed_command_not_a_failed_job(origin, ais):
    origin.add("/slow", payload("s", 300_000))
    origin.fault("/slow", "slow", rate=100_000)
    job = ais("start", "download", origin.url_for("/slow"), "ais://b/slow").stdout.split()[0]
    r = ais("wait", job, "--timeout", "300ms", "--refresh", "100ms", check=False)
    assert r.returncode == 2
    assert r.stderr.strip() == f"Error: timed out waiting for download job {job}"


# -- no internal ids in errors --------------------------------------------------------------
def test_errors_carry_no_internal_target_ids(ais, tmp_path):
    ais("create", "data")
    r = ais("get", "ais://data/nope", str(tmp_path / "nope"), check=False)
    assert r.stderr.strip() == "Error: ais://data/nope does not exist", r.stderr
    client = ais.node.client()
    from aisdl.models import Bucket

    for call in (lambda: client.head_object(Bucket("ais", "data"), "nope"),
                 lambda: client.get_object(Bucket("ais", "data"), "nope"),
                 lambda: client.delete_object(Bucket("ais", "data"), "nope")):
        with pytest.raises(NotFound) as caught:
            call()
        assert caught.value.message.startswith("ais://data/nope does"), caught.value.message


# -- progress bars --------------------------------------------------------------------------
def _rendered(st: dict[str, Any]) -> str:
    console = Console(record=True, width=160, force_terminal=False)
    with _bars(console) as progress:
        JobBars(progress).update(st)
    return console.export_text()


def _status(total: int, finished: int, skipped: int, errors: int) -> dict[str, Any]:
    return {"total": total, "scheduled_cnt": total, "finished_cnt": finished,
            "skipped_cnt": skipped, "error_cnt": errors, "current_tasks": []}


@pytest.mark.parametrize(("st", "shown", "not_shown"), [
    # 10 files: 6 downloaded, 2 skipped as unchanged (in the bucket too), 2 failed
    (_status(10, 8, 2, 2), ["8/10", "80%", "skipped: 2, failed: 2"], ["10/10", "100%"]),
    (_status(4, 0, 0, 4), ["0/4", "0%", "skipped: 0, failed: 4"], ["4/4", "100%"]),
    (_status(5, 5, 0, 0), ["5/5", "100%", "skipped: 0, failed: 0"], []),
    (_status(3, 1, 1, 2), ["1/3", "33%", "skipped: 1, failed: 2"], ["3/3"]),
])
def test_the_files_bar_keeps_failed_and_skipped_apart(st, shown, not_shown):
    text = _rendered(st)
    for part in shown:
        assert part in text, text
    for part in not_shown:
        assert part not in text, text


def test_progress_of_a_job_with_errors_does_not_read_as_all_downloaded(origin, ais):
    for i in range(3):
        origin.add(f"/p/f{i}", payload(str(i), 1000))
    r = ais("start", "download", origin.url_for("/p/") + "f{0..3}", "ais://b/", "--progress",
            "--progress-interval", "100ms", check=False)
    assert r.returncode == 1
    assert re.search(r"Files downloaded:\s+3/4 .* 75%\s+skipped: 0, failed: 1", r.stdout), r.stdout
    assert "4/4" not in r.stdout and "All files successfully downloaded" not in r.stdout
    assert r.stdout.splitlines()[-2:] == [
        "Done: 3 files downloaded, 1 error",
        f"To see detailed info run `ais show job download {r.stdout.split()[0]} -v`"]
