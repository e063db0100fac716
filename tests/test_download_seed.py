"""Every http(s) example of the user's document, run as `ais` commands against a local origin."""

from __future__ import annotations

import json
import re
import time

from helpers import wait_job
from origin import payload


def _job_id(result) -> str:  # noqa: ANN001 - conftest's Result
    first, hint = result.stdout.strip().splitlines()[:2]
    assert hint == f"Run `ais show job download {first}` to monitor the progress of downloading."
    return first


def test_download_single_file(origin, ais, tmp_path):
    data = payload("iso", 3 * 1024 * 1024 + 17)
    origin.add("/18.04.1/ubuntu-18.04.1-desktop-amd64.iso", data)
    assert ais("create", "ubuntu").stdout.strip() == '"ubuntu" bucket created'
    job = _job_id(ais("start", "download",
                      origin.url_for("/18.04.1/ubuntu-18.04.1-desktop-amd64.iso"),
                      "ais://ubuntu/ubuntu-18.04.1.iso"))
    shown = ais("show", "job", job, "--progress", "--refresh", "200ms")
    assert shown.stdout.strip().endswith("All files successfully downloaded.")
    listing = ais("ls", "ais://ubuntu").stdout.splitlines()
    assert listing[0].split() == ["Name", "Size", "Version"]
    assert listing[1].split() == ["ubuntu-18.04.1.iso", "3.00MiB", "1"]
    ais("get", "ais://ubuntu/ubuntu-18.04.1.iso", "copy.iso")
    assert (tmp_path / "copy.iso").read_bytes() == data


def _bucket(name: str):  # noqa: ANN202
    from aisdl.models import Bucket

    return Bucket("ais", name)


def test_download_range_with_errors_and_show(origin, ais):
    """141 names, 21 of them missing at the source: the document's progress and error lines."""
    missing = set(range(120, 141))
    for i in range(141):
        if i not in missing:
            origin.add(f"/imagenet/imagenet_train-{i:06d}.tgz", payload(str(i), 2048))
    ais("create", "local-lpr")
    template = origin.url_for("/imagenet/") + "imagenet_train-{000000..000140}.tgz"
    job = _job_id(ais("start", "download", template, "ais://local-lpr/imagenet/"))
    wait_job(ais, job)
    shown = ais("show", "job", "download", job, check=False)
    assert shown.returncode == 1  # the job ended with errors
    assert shown.stdout.splitlines() == [
        "Done: 120 files downloaded, 21 errors",
        f"To see detailed info run `ais show job download {job} -v`",
    ]
    verbose = ais("show", "job", "download", job, "-v", check=False).stdout.splitlines()
    assert verbose[:2] == ["Done: 120 files downloaded, 21 errors", "Errors:"]
    assert verbose[2:] == [
        f"\timagenet/imagenet_train-{i:06d}.tgz: request failed with 404 status code (Not Found)"
        for i in sorted(missing)]
    names = ais("ls", "ais://local-lpr", "--no-headers").stdout.split("\n")
    assert len([n for n in names if n.strip()]) == 120
    assert names[0].split()[0] == "imagenet/imagenet_train-000000.tgz"


def test_show_while_running_progress_and_errors(origin, ais):
    for i in range(10):
        origin.add(f"/slow/f{i}.bin", payload(str(i), 400_000))
        origin.fault(f"/slow/f{i}.bin", "slow", rate=200_000)
    job = _job_id(ais("start", "download",
                      origin.url_for("/slow/") + "f{0..11}.bin", "ais://b/"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = ais("show", "job", "download", job, check=False).stdout.splitlines()
        if "Errors (2) occurred" in "\n".join(out):
            break
        time.sleep(0.2)
    assert re.fullmatch(r"Download progress: \d+/12 \(\d+\.\d\d%\)", out[0]), out
    assert out[1] == (f"Errors (2) occurred during the download. To see detailed info run "
                      f"`ais show job download {job} -v`")
    verbose = ais("show", "job", "download", job, "-v", check=False).stdout
    if "Download progress" in verbose:
        assert "Progress of files that are currently being downloaded:" in verbose
        assert re.search(r"\tf\d\.bin: [\d.]+(KiB|B)/390\.62KiB \(\d+\.\d\d%\)", verbose)
    assert "\tf10.bin: request failed with 404 status code (Not Found)" in verbose
    wait_job(ais, job)
    done = ais("show", "job", "download", job, check=False)
    assert done.returncode == 1 and done.stdout.startswith("Done: 10 files downloaded, 2 errors")


def test_show_with_refresh_repeats_until_the_job_finishes(origin, ais):
    """`--refresh` is the time between reports: without --progress the status repeats until
    the job is done, for one job and for the job list."""
    for i in range(4):
        origin.add(f"/r/f{i}", payload(str(i), 200_000))
        origin.fault(f"/r/f{i}", "slow", rate=250_000)
    job = _job_id(ais("start", "download", origin.url_for("/r/") + "f{0..3}", "ais://b/",
                      "--conns=2"))
    out = ais("show", "job", "download", job, "--refresh", "200ms").stdout.splitlines()
    reports = [line for line in out if line.startswith("Download progress: ")]
    assert len(reports) >= 2, out
    assert out[-1] == "Done: 4 files downloaded"
    listed = ais("show", "job", "download", "--refresh", "100ms").stdout.splitlines()
    assert listed[1].split()[:2] == [job, "Finished"]  # finished: one report, no repeat
    assert len(listed) == 2


def test_max_conns_limits_files_in_flight(origin, ais):
    for i in range(6):
        origin.add(f"/c/f{i}", payload(str(i), 120_000))
        origin.fault(f"/c/f{i}", "slow", rate=200_000)
    job = _job_id(ais("start", "download", origin.url_for("/c/") + "f{0..5}", "ais://b/",
                      "--conns=1"))
    client = ais.node.client()
    seen = []
    while True:
        st = client.download_status(job, only_active=True)
        seen.append(len(st.get("current_tasks", [])))
        if st["finished_time"] != "1970-01-01T00:00:00Z":
            break
        time.sleep(0.05)
    assert max(seen) == 1
    assert client.download_status(job)["finished_cnt"] == 6


def test_progress_bars_then_result(origin, ais):
    for i in range(3):
        origin.add(f"/p/f{i}.bin", payload(str(i), 300_000))
        origin.fault(f"/p/f{i}.bin", "slow", rate=400_000)
    out = ais("start", "download", origin.url_for("/p/") + "f{0..2}.bin", "ais://b/p/",
              "--progress", "--progress-interval", "200ms", env={"TTY_COMPATIBLE": "1"}).stdout
    screen = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out).replace("\r", "\n")
    assert re.search(r"Files downloaded:\s+0/3 ", screen)
    # one bar per file in flight: name, downloaded/total, percentage, ETA, speed
    assert re.search(r"p/f\d\.bin\s+[\d.]+/293\.0 KiB .* \d+% \d:\d\d:\d\d [\d.]+KiB/s", screen)
    assert re.search(r"Files downloaded:\s+3/3 .* 100%", screen)
    assert out.strip().endswith("All files successfully downloaded.")


def test_download_from_another_ais_cluster(origin, ais, node, tmp_path, free_port):
    """`ais://HOST:PORT/bucket/obj-{..}` reads another node's objects through its REST API."""
    from conftest import Node

    other = Node(free_port(), tmp_path / "other", tmp_path / "other.log")
    other.start()
    try:
        src = other.client()
        src.create_bucket(_bucket("imagenet"))
        for i in range(22, 30):
            src.put_object(_bucket("imagenet"), f"imagenet_train-{i:04d}.tgz", payload(str(i), 999))
        job = _job_id(ais("start", "download",
                          f"ais://127.0.0.1:{other.port}/imagenet/imagenet_train-{{0022..0029}}.tgz",
                          "ais://local-lpr/set_1/"))
        st = wait_job(ais, job)
        assert (st["finished_cnt"], st["error_cnt"]) == (8, 0)
        got = node.client().get_object(_bucket("local-lpr"), "set_1/imagenet_train-0025.tgz")
        assert got.content == payload("25", 999)
    finally:
        other.stop()


def test_object_list(origin, ais, tmp_path):
    origin.add("/lpr-vision/imagenet/imagenet_train-000013.tgz", payload("13", 100))
    origin.add("/lpr-vision/imagenet/imagenet_train-000024.tgz", payload("24", 100))
    objects = tmp_path / "objects.txt"
    objects.write_text(json.dumps(["imagenet/imagenet_train-000013.tgz",
                                   "imagenet/imagenet_train-000024.tgz"]))
    ais("create", "local-lpr")
    for flag in ("--object-list", "--from"):
        job = _job_id(ais("start", "download", origin.url_for("/lpr-vision"), "ais://local-lpr",
                          f"{flag}={objects}"))
        wait_job(ais, job)
    names = [line.split()[0] for line in ais("ls", "ais://local-lpr", "-H").stdout.splitlines()]
    assert names == ["imagenet_train-000013.tgz", "imagenet_train-000024.tgz"]


def test_stop_remove_and_list_with_regex(origin, ais):
    origin.add_virtual("/big.bin", 50 * 1024 * 1024, seed=1, etag="v1")
    origin.fault("/big.bin", "slow", rate=100_000)
    origin.add("/small.bin", payload("s", 10))
    slow = _job_id(ais("start", "download", origin.url_for("/big.bin"), "ais://b/big",
                       "--desc", "downloads whole imagenet bucket"))
    fast = _job_id(ais("start", "download", origin.url_for("/small.bin"), "ais://b/small",
                       "--description", "downloads range lpr-bucket from gcp://lpr-bucket"))
    wait_job(ais, fast)
    other = _job_id(ais("start", "download", origin.url_for("/small.bin"), "ais://b/x",
                        "--desc", "something else"))
    wait_job(ais, other)
    rm = ais("job", "rm", "download", slow, check=False)
    assert rm.returncode == 2 and f'job "{slow}" is still running' in rm.stderr
    assert ais("stop", "download", slow).stdout.strip() == f"Stopped download job {slow}"
    st = wait_job(ais, slow)
    assert st["aborted"] and not st.get("current_tasks")
    table = ais("show", "job", "download", "--regex", "^downloads (.*)").stdout.splitlines()
    assert table[0].split() == ["JOB", "ID", "STATUS", "ERRORS", "DESCRIPTION"]
    rows = {line.split()[0]: line.split(None, 3)[1:] for line in table[1:]}
    assert rows == {slow: ["Aborted", "0", "downloads whole imagenet bucket"],
                    fast: ["Finished", "0", "downloads range lpr-bucket from gcp://lpr-bucket"]}
    assert ais("job", "rm", "download", slow).stdout.strip() == (
        f'Removed finished download job "{slow}"')
    gone = ais("show", "job", "download", slow, check=False)
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    assert "big" not in ais("ls", "ais://b", "-H").stdout  # nothing partial is visible


def test_wait_short_forms_and_exit_codes(origin, ais):
    origin.add("/ok", payload("ok", 10))
    ok = _job_id(ais("start", "download", origin.url_for("/ok"), "ais://b/ok"))
    assert ais("wait", ok).stdout == ""
    assert ais("wait", "download", ok, "--refresh", "100ms").returncode == 0
    assert ais("show", "job", ok).stdout.strip() == "Done: 1 file downloaded"
    bad = _job_id(ais("start", "download", origin.url_for("/missing"), "ais://b/missing"))
    failed = ais("wait", "download", bad, check=False)
    assert failed.returncode == 1
    assert "Done: 0 files downloaded, 1 error" in failed.stdout


def test_start_wait_prints_summary(origin, ais):
    origin.add("/w/a", payload("a", 10))
    out = ais("start", "download", origin.url_for("/w/a"), "ais://fresh/a", "--wait")
    assert "Warning: destination bucket ais://fresh doesn't exist" in out.stderr
    assert out.stdout.splitlines()[-1] == "Done: 1 file downloaded"


def test_limit_bph_throttles(origin, ais):
    origin.add_virtual("/t.bin", 1024 * 1024, seed=3, etag="t")
    job = ais("start", "download", origin.url_for("/t.bin"), "ais://b/t.bin",
              "--limit-bph", "5KiB").stdout.split()[0]
    time.sleep(3)
    st = ais.node.client().download_status(job)
    assert len(st["current_tasks"]) == 1
    assert 0 < int(st["current_tasks"][0]["downloaded"]) < 7 * 1024
    ais("stop", job)
    wait_job(ais, job)
    assert "t.bin" not in ais("ls", "ais://b", "-H").stdout  # a stopped file leaves nothing


def test_upstream_cli_e2e_minikube(origin, ais, tmp_path):
    """Upstream CLI scenarios 31-35 (cmd/cli/test/download.in), against the local origin."""
    for v in ("0.23.2", "0.23.3", "0.23.4", "0.25.0", "0.25.1"):
        origin.add(f"/minikube/iso/minikube-v{v}.iso.sha256", payload(v, 65), gcs=True)
    ais("bucket", "create", "ais://dl")
    ais("job", "rm", "download", "--all")

    def job_by_desc(desc: str) -> str:
        rows = ais("show", "job", "download", f"--regex={desc}$", "--all").stdout.splitlines()
        assert len(rows) == 2, rows
        return rows[1].split()[0]

    base = origin.url_for("/minikube")
    ais("job", "start", "download", f"{base}/iso/minikube-v0.23.2.iso.sha256", "ais://dl",
        "--desc=minikube")
    job = job_by_desc("minikube")
    assert ais("job", "wait", "download", job).returncode == 0
    assert ais("show", "job", "download", job).stdout.strip() == "Done: 1 file downloaded"

    ais("job", "start", "download", base + "/iso/minikube-v0.23.{2..4}.iso.sha256", "ais://dl",
        "--desc=minikube-range")
    job = job_by_desc("minikube-range")
    ais("wait", "download", job)
    assert ais("show", "job", "download", job).stdout.strip() == (
        "Done: 3 files downloaded, skipped: 1")

    names = tmp_path / "list.json"
    names.write_text('["iso/minikube-v0.25.0.iso.sha256", "iso/minikube-v0.25.1.iso.sha256"]')
    ais("job", "start", "download", base, "ais://dl", f"--object-list={names}",
        "--desc=minikube-multi")
    job = job_by_desc("minikube-multi")
    ais("wait", job)
    assert ais("show", "job", "download", job).stdout.strip() == "Done: 2 files downloaded"
    assert len(ais("ls", "ais://dl", "-H").stdout.splitlines()) == 5


def test_rm_all_finished_and_wait_timeout(origin, ais):
    origin.add("/a", payload("a", 10))
    origin.add("/slow", payload("s", 300_000))
    origin.fault("/slow", "slow", rate=100_000)
    done = _job_id(ais("start", "download", origin.url_for("/a"), "ais://b/a"))
    wait_job(ais, done)
    running = _job_id(ais("start", "download", origin.url_for("/slow"), "ais://b/slow"))
    r = ais("wait", running, "--timeout", "300ms", "--refresh", "100ms", check=False)
    assert r.returncode == 2
    assert r.stderr.strip() == f"Error: timed out waiting for download job {running}"
    assert ais("job", "rm", "download", "--all").stdout.strip() == (
        f'Removed download job "{done}"')
    ids = [line.split()[0] for line in ais("show", "job", "download", "-H").stdout.splitlines()]
    assert ids == [running]
    st = json.loads(ais("show", "job", "download", running, "--json").stdout)
    assert st["id"] == running and st["total"] == 1
