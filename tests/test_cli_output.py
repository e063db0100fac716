"""Output for scripts and people: `-j/--json` (checked against the fields README.md documents,
read from the README itself so the two cannot drift apart), no escape codes where they do not
belong (`--no-color`, NO_COLOR, piped output), `show --refresh` repeating the table, and
`--units iec|si|raw` for sizes shown and typed."""

from __future__ import annotations

import json
import os
import re
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aisdl.errors import BadRequest
from aisdl.units import format_amount, format_rate, format_size, parse_size
from conftest import Ais
from helpers import wait_job
from origin import payload

README = Path(__file__).resolve().parents[1] / "README.md"
SGR = re.compile(rb"\x1b\[[0-9;]*m")  # colors and other text styles (not cursor moves)
TYPES = {"string": str, "integer": int, "boolean": bool, "array": list}


# -- the documented fields --------------------------------------------------------------------
def documented() -> dict[str, dict[str, tuple[str, bool]]]:
    """README's "Output for scripts": {object kind: {field: (type, optional)}}, from its
    `#### kind` tables of `| `field` | type | meaning |`."""
    text = README.read_text()
    section = text.split("### Output for scripts", 1)[1].split("\n### ", 1)[0]
    kinds: dict[str, dict[str, tuple[str, bool]]] = {}
    for block in section.split("\n#### ")[1:]:
        kind, _, body = block.partition("\n")
        fields = kinds.setdefault(kind.strip(), {})
        for m in re.finditer(r"^\| `(\w+)` \| ([\w ,]+) \|", body, re.M):
            typ, _, optional = m.group(2).partition(",")
            fields[m.group(1)] = (typ.strip(), "optional" in optional)
    return kinds


DOCS = documented()


def check(obj: Any, kind: str, *, with_lists: bool | None = None) -> None:
    """`obj` has every field of `kind` that is not optional, no field the README does not
    name, and each of the documented type; a job status's lists hold files and errors.
    `with_lists`: for a job status, whether its error and finished-file lists must be there."""
    fields = dict(DOCS[kind])
    if kind == "job status":
        fields = {**DOCS["job"], **fields}
        if not with_lists:
            fields = {k: v for k, v in fields.items()
                      if k not in ("download_errors", "finished_tasks")}
    assert isinstance(obj, dict), obj
    required = {k for k, (_, optional) in fields.items() if not optional}
    assert required <= set(obj), (kind, sorted(required - set(obj)))
    assert set(obj) <= set(fields), (kind, "undocumented", sorted(set(obj) - set(fields)))
    for name, value in obj.items():
        assert isinstance(value, TYPES[fields[name][0]]), (kind, name, value)
    if kind == "job status":
        for task in obj["current_tasks"] + obj.get("finished_tasks", []):
            check(task, "file")
        for error in obj.get("download_errors", []):
            check(error, "error")


def test_the_readme_documents_every_kind_of_output():
    assert set(DOCS) == {"started job", "job", "job status", "file", "error", "bucket",
                         "object"}
    assert all(DOCS.values()), DOCS
    assert DOCS["file"]["worker"] == ("string", True)


# -- JSON -------------------------------------------------------------------------------------
def _json(ais: Ais, *args: Any, code: int = 0) -> Any:
    r = ais(*args, check=False)
    assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)  # stdout holds the JSON and nothing else


def test_json_of_start_wait_show_and_ls_has_the_documented_fields(origin, ais):
    for i in range(3):
        origin.add(f"/j/f{i}", payload(str(i), 1000 + i))
    origin.add_virtual("/j/slow.bin", 1_000_000, seed=3, etag="slow")
    origin.fault("/j/slow.bin", "slow", rate=100_000)
    started = _json(ais, "start", "download", origin.url_for("/j/") + "f{0..3}", "ais://b/",
                    "-j")
    check(started, "started job")
    job = started["id"]
    done = _json(ais, "wait", job, "-j", "--refresh", "100ms", code=1)  # f3 is missing
    check(done, "job status", with_lists=True)
    assert (done["id"], done["finished_cnt"], done["error_cnt"], done["total"]) == (job, 3, 1, 4)
    assert done["download_errors"] == [
        {"name": "f3", "error": "request failed with 404 status code (Not Found)"}]
    assert sorted(t["name"] for t in done["finished_tasks"]) == ["f0", "f1", "f2", "f3"]

    slow = _json(ais, "start", "download", origin.url_for("/j/slow.bin"), "ais://b/slow.bin",
                 "--json")["id"]
    # a file shows in flight from its request on; its total from its headers on (0 before)
    deadline = time.monotonic() + 20
    while True:
        running = _json(ais, "show", "job", "download", slow, "-j")
        if any(t["total"] != "0" for t in running["current_tasks"]):
            break
        assert time.monotonic() < deadline, running
        time.sleep(0.05)
    check(running, "job status", with_lists=False)
    assert running["finished_time"] == "1970-01-01T00:00:00Z"
    [task] = running["current_tasks"]
    assert task["name"] == "slow.bin" and task["total"] == "1000000", task
    check(_json(ais, "show", "job", "download", slow, "-j", "-v"), "job status", with_lists=True)

    listed = _json(ais, "show", "job", "download", "-j")
    assert [j["id"] for j in listed] == [slow, job]  # running first
    for j in listed:
        check(j, "job")
    for j in _json(ais, "show", "job", "download", "-j", "-v"):
        check(j, "job status", with_lists=True)
    one = _json(ais, "show", "job", "download", job, "-j", code=1)  # it ended with errors
    check(one, "job status", with_lists=False)
    check(_json(ais, "show", "job", "download", job, "-j", "-v", code=1), "job status",
          with_lists=True)
    ais("stop", "download", slow)
    wait_job(ais, slow)

    buckets = _json(ais, "ls", "-j")
    assert buckets == [{"name": "b", "provider": "ais"}]
    for b in buckets:
        check(b, "bucket")
    objects = _json(ais, "ls", "ais://b", "-j")
    for o in objects:
        check(o, "object")
    assert {o["name"]: o["size"] for o in objects} == {"f0": 1000, "f1": 1001, "f2": 1002}
    assert all(o["version"] == "1" and o["cached"] for o in objects)
    assert _json(ais, "ls", "ais://b", "--prefix", "nothing-", "-j") == []

    # a watched start prints the final status alone: the bars (forced on) go to stderr
    for how in ("--wait", "--progress"):
        r = ais("start", "download", origin.url_for("/j/") + "f{0..2}", f"ais://b{how}/", "-j",
                how, "--progress-interval", "100ms", env={"TTY_COMPATIBLE": "1"})
        st = json.loads(r.stdout)
        check(st, "job status", with_lists=True)
        assert st["finished_cnt"] == 3 and st["error_cnt"] == 0
        assert "Warning: destination bucket" in r.stderr
    assert "Files downloaded:" in r.stderr

    # a command that fails prints no JSON, only its error
    r = ais("ls", "ais://nothing", "-j", check=False)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.strip() == 'Error: bucket "ais://nothing" does not exist'
    r = ais("wait", "dnl-nope", "-j", check=False)
    assert (r.returncode, r.stdout) == (2, "")


# -- colors and escape codes ------------------------------------------------------------------
def _on_a_terminal(ais: Ais, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 30) -> bytes:
    """What `ais ARGS` writes to a terminal (a pseudo-terminal as its stdout and stderr)."""
    full_env = {k: v for k, v in ais.env.items() if k != "NO_COLOR"}
    full_env.update(TERM="xterm-256color", **(env or {}))
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "aisdl", *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=full_env, cwd=ais.cwd)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the other end is closed
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        else:
            pytest.fail(f"`ais {' '.join(args)}` did not finish in {timeout}s: {out!r}")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    return out


def _finished_job_with_an_error(origin, ais: Ais) -> str:
    for i in range(2):
        origin.add(f"/c/f{i}", payload(str(i), 1000))
    job = ais("start", "download", origin.url_for("/c/") + "f{0..2}", "ais://b/").stdout.split()[0]
    wait_job(ais, job)
    return job


def test_no_styles_with_no_color_NO_COLOR_or_when_piped(origin, ais):
    job = _finished_job_with_an_error(origin, ais)
    show = ("show", "job", "download", job, "--progress", "--refresh", "100ms")
    styled = _on_a_terminal(ais, *show)
    assert b"failed: 1" in styled and SGR.search(styled), styled  # the test can see styles
    for out in (_on_a_terminal(ais, *show, env={"NO_COLOR": "1"}),
                _on_a_terminal(ais, "--no-color", *show)):
        assert b"failed: 1" in out and b"Files downloaded:" in out, out
        assert not SGR.search(out), out
    # not a terminal: no escape codes at all, NO_COLOR or not; the bars printed once
    no_no_color: dict[str, str | None] = {"NO_COLOR": None}
    for args in (show, ("show", "job", "download", job, "-v"), ("ls", "ais://b")):
        r = ais(*args, check=False, env=no_no_color)
        assert r.returncode in (0, 1), r.output
        assert "\x1b" not in r.output, (args, r.output)
        if args == show:
            assert r.stdout.count("failed: 1") == 1, r.stdout


# -- --refresh --------------------------------------------------------------------------------
def test_show_refresh_repeats_the_job_table_until_the_jobs_finish(origin, ais):
    for i in range(4):
        origin.add(f"/r/f{i}", payload(str(i), 300_000))
        origin.fault(f"/r/f{i}", "slow", rate=200_000)
    job = ais("start", "download", origin.url_for("/r/") + "f{0..3}", "ais://b/",
              "--conns=2").stdout.split()[0]
    began = time.monotonic()
    out = ais("show", "job", "download", "--refresh", "200ms", timeout=30).stdout
    took = time.monotonic() - began
    tables = out.split("\n\n")
    assert all(t.splitlines()[0].split() == ["JOB", "ID", "STATUS", "ERRORS", "DESCRIPTION"]
               for t in tables), out
    assert len(tables) >= 3, out  # about 3 s of downloading, a table every 200 ms
    assert len(tables) <= took / 0.2 + 2, (took, out)
    assert all(t.splitlines()[1].split()[:2] == [job, "Running"] for t in tables[:-1]), out
    assert tables[-1].splitlines()[1].split()[:2] == [job, "Finished"], out
    # with -j: one JSON document per refresh, the last one with the job finished
    origin.fault("/r/f0", "slow", rate=300_000)
    again = ais("start", "download", origin.url_for("/r/f0"), "ais://b/again").stdout.split()[0]
    stream = ais("show", "job", "download", again, "-j", "--refresh", "200ms").stdout
    docs, pos, decoder = [], 0, json.JSONDecoder()
    while pos < len(stream.rstrip()):
        doc, pos = decoder.raw_decode(stream, pos)
        docs.append(doc)
        pos = len(stream) - len(stream[pos:].lstrip())
    assert len(docs) >= 2 and docs[-1]["finished_cnt"] == 1, stream
    for doc in docs:
        check(doc, "job status", with_lists=False)


# -- --units ----------------------------------------------------------------------------------
SIZES_SHOWN = [
    # bytes, iec, si, raw
    (0, "0B", "0B", "0"),
    (999, "999B", "999B", "999"),
    (1000, "1000B", "1.00KB", "1000"),
    (1024, "1.00KiB", "1.02KB", "1024"),
    (1_500_000, "1.43MiB", "1.50MB", "1500000"),
    (3 * 1024**3, "3.00GiB", "3.22GB", "3221225472"),
    (5 * 1000**4, "4.55TiB", "5.00TB", "5000000000000"),
]


@pytest.mark.parametrize(("n", "iec", "si", "raw"), SIZES_SHOWN)
def test_sizes_are_shown_in_the_units_asked_for(n, iec, si, raw):
    assert [format_size(n, u) for u in ("", "iec", "si", "raw")] == [iec, iec, si, raw]


@pytest.mark.parametrize(("units", "rate", "amount", "unknown_total"), [
    ("iec", "1.4MiB/s", "0.5/1.4 MiB", "488.3/? KiB"),
    ("si", "1.5MB/s", "0.5/1.5 MB", "500.0/? KB"),
    ("raw", "1500000B/s", "500000/1500000", "500000/?"),
])
def test_rates_and_amounts_of_progress_bars(units, rate, amount, unknown_total):
    assert format_rate(1_500_000, units) == rate
    assert format_amount(500_000, 1_500_000, units) == amount
    assert format_amount(500_000, None, units) == unknown_total
    assert format_amount(500, 900, units) == ("500/900" if units == "raw" else "500/900 B")


# (typed, --units) -> bytes, or None: refused
SIZES_TYPED = {
    ("1GiB", ""): 1024**3, ("1Gi", ""): 1024**3, ("1GB", ""): 1000**3, ("1G", ""): 1000**3,
    ("1024", ""): 1024, ("10B", ""): 10, ("1.5MiB", ""): 1_572_864,
    ("1GiB", "iec"): 1024**3, ("1GB", "iec"): 1024**3, ("1g", "iec"): 1024**3,
    ("500", "iec"): 500,
    ("1GB", "si"): 1000**3, ("1G", "si"): 1000**3, ("1GiB", "si"): None, ("2Ki", "si"): None,
    ("1048576", "raw"): 1_048_576, ("10B", "raw"): 10, ("1GB", "raw"): None,
    ("1GiB", "raw"): None, ("1K", "raw"): None,
}


@pytest.mark.parametrize(("text", "units"), list(SIZES_TYPED))
def test_sizes_are_read_as_units_says(text, units):
    expected = SIZES_TYPED[(text, units)]
    if expected is None:
        with pytest.raises(BadRequest, match=rf"with --units {units}"):
            parse_size(text, units=units)
    else:
        assert parse_size(text, units=units) == expected


def _bytes_per_hour(node, job: str) -> int:
    db = sqlite3.connect(f"file:{node.home / 'aisdl.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT spec FROM jobs WHERE id = ?", (job,)).fetchone()
    finally:
        db.close()
    return int(json.loads(row[0])["limits"]["bytes_per_hour"])


def test_units_of_limit_bph_ls_get_files_in_flight_and_bars(origin, ais, node):
    origin.add("/u/a.bin", payload("a", 1_500_000))
    url = origin.url_for("/u/a.bin")
    # --units comes after --limit-bph on purpose: it is read first wherever it stands
    for bph, units, expected in (("1GB", "", 1000**3), ("1GB", "iec", 1024**3)):
        flags = ("--units", units) if units else ()
        job = _json(ais, "start", "download", url, f"ais://b/{units or 'default'}", "-j",
                    "--limit-bph", bph, *flags)["id"]
        assert _bytes_per_hour(node, job) == expected, (bph, units)
        wait_job(ais, job)
    r = ais("start", "download", url, "ais://b/x", "--limit-bph", "1GB", "--units", "raw",
            check=False)
    assert (r.returncode, r.stdout) == (2, ""), r.output
    assert r.stderr.strip() == ("Error: Invalid value for '--limit-bph': invalid size '1GB'"
                                " with --units raw (expected a number of bytes)"), r.stderr
    for units, size in (("", "1.43MiB"), ("si", "1.50MB"), ("raw", "1500000")):
        flags = ("--units", units) if units else ()
        rows = ais("ls", "ais://b", "-H", *flags).stdout.splitlines()
        assert rows[0].split()[:2] == ["default", size], rows
    got = ais("get", "ais://b/default", "copy", "--units", "raw").stdout.strip()
    assert got.endswith('as "copy" [1500000]'), got
    # a file in flight, shown with -v
    origin.add_virtual("/u/slow.bin", 2_000_000, seed=1, etag="slow")
    origin.fault("/u/slow.bin", "slow", rate=200_000)  # 10 s: stopped once seen
    job = _json(ais, "start", "download", origin.url_for("/u/slow.bin"), "ais://b/slow",
                "-j")["id"]
    patterns = {"iec": r"\tslow: [\d.]+(B|KiB|MiB)/1\.91MiB \(\d+\.\d\d%\)",
                "si": r"\tslow: [\d.]+(B|KB|MB)/2\.00MB \(\d+\.\d\d%\)",
                "raw": r"\tslow: \d+/2000000 \(\d+\.\d\d%\)"}
    deadline = time.monotonic() + 20
    while patterns:
        units = next(iter(patterns))
        out = ais("show", "job", "download", job, "-v", "--units", units, check=False).stdout
        if re.search(patterns[units], out):
            del patterns[units]
        else:
            assert "Done" not in out, (units, out)
            assert time.monotonic() < deadline, out
            time.sleep(0.05)
    ais.node.client().abort_download(job)

    # progress bars on a terminal
    origin.add_virtual("/b/slow.bin", 1_200_000, seed=2, etag="bars")
    origin.fault("/b/slow.bin", "slow", rate=400_000)
    screens = {}
    for units in ("si", "raw"):
        job = _json(ais, "start", "download", origin.url_for("/b/slow.bin"), f"ais://b/{units}",
                    "-j")["id"]
        screen = _on_a_terminal(ais, "wait", job, "--progress", "--refresh", "100ms",
                                "--units", units).decode(errors="replace")
        screens[units] = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen)
    assert re.search(r"\b\d+\.\d/1\.2 MB\b", screens["si"]), screens["si"]
    assert re.search(r"\d+\.\dKB/s", screens["si"]), screens["si"]
    assert re.search(r"\b\d+/1200000\b", screens["raw"]), screens["raw"]
    assert re.search(r"\b\d+B/s", screens["raw"]), screens["raw"]
