"""Small helpers shared by the end-to-end tests (importable as `helpers` from tests)."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aisdl.client import Client, NodeUnreachable

__all__ = ["free_port", "is_finished", "small_tmpfs", "wait_job"]

_UNSET_TIMES = ("", "0", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def is_finished(status: dict[str, Any]) -> bool:
    """Whether a download status has a real `finished_time` (not empty / the epoch)."""
    t = status.get("finished_time")
    if not t:
        return False
    t = str(t)
    return t not in _UNSET_TIMES and not t.startswith(("1970-01-01T00:00:00", "0001-01-01"))


def _client(target: Any) -> Client:
    if isinstance(target, Client):
        return target
    if isinstance(target, str):
        return Client(target)
    endpoint = getattr(target, "endpoint", None)  # a Node, or the `ais` fixture
    if endpoint is None:
        raise TypeError(f"wait_job: need a Client, an endpoint or an object with .endpoint, "
                        f"not {target!r}")
    return Client(endpoint)


def wait_job(ais_or_client: Any, job_id: str, timeout: float = 30.0,
             interval: float = 0.1) -> dict[str, Any]:
    """Poll the job's status until its `finished_time` is set; return that final status.

    `ais_or_client`: an `aisdl.client.Client`, an endpoint URL, a `Node` or the `ais` fixture.
    A node that does not answer for a moment (restarting) is waited for, up to `timeout`."""
    client = _client(ais_or_client)
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | str = "no answer yet"
    while True:
        try:
            status = client.download_status(job_id)
            if is_finished(status):
                return status
            last = status
        except NodeUnreachable as exc:
            last = f"node unreachable: {exc}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"job {job_id} did not finish in {timeout}s; last status: {last}")
        time.sleep(interval)


@contextlib.contextmanager
def small_tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `path` (created) with `options` such as "size=1m": a disk that fills
    up on cue. Skips the test where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fetched_twice(origin: Any, prefix: str) -> list[str]:
    """Paths under `prefix` that the origin sent whole more than once (a GET without `Range`)."""
    whole: dict[str, int] = {}
    for r in origin.requests(method="GET"):
        if r.path.startswith(prefix) and "range" not in r.headers:
            whole[r.path] = whole.get(r.path, 0) + 1
    return sorted(p for p, n in whole.items() if n > 1)


def objects_on_disk(home: Path, bucket: str) -> set[str]:
    """Names of the objects whose bytes are in place on the node's mountpaths (recorded in its
    catalog or not)."""
    return {str(p.relative_to(d)) for d in home.rglob(f"ais/{bucket}") if ".work" not in d.parts
            for p in d.rglob("*") if p.is_file()}


def tar_of(members: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar archive (`mode` "w:gz": compressed) of these members, in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()
