"""The node's lifecycle as a user meets it: background start, stop, health, egress rules."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aisdl.engine.egress import blocked_reason
from helpers import free_port, wait_job


def test_first_command_starts_a_background_node(tmp_path):
    port = free_port()
    env = {**os.environ, "AIS_ENDPOINT": f"http://127.0.0.1:{port}",
           "AISDL_HOME": str(tmp_path / "bg"), "HOME": str(tmp_path)}

    def ais(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aisdl", *args], env=env, text=True,
                              capture_output=True, timeout=60)

    try:
        first = ais("create", "b1")
        assert first.returncode == 0, first.stderr
        assert first.stderr.startswith(f"Started a background node at http://127.0.0.1:{port}")
        assert str(tmp_path / "bg") in first.stderr and "node.log" in first.stderr
        second = ais("ls")
        assert second.returncode == 0 and "Started" not in second.stderr
        assert "b1" in second.stdout
    finally:
        stop = ais("node", "stop")
    assert stop.returncode == 0 and "stopping" in stop.stdout
    assert (tmp_path / "bg" / "aisdl.db").exists()


def test_no_node_at_a_remote_endpoint_is_a_clear_error(tmp_path):
    env = {**os.environ, "AIS_ENDPOINT": "http://192.0.2.1:1", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "aisdl", "ls"], env=env, text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == ("Error: no node answers at http://192.0.2.1:1"
                                " (is AIS_ENDPOINT right?)")


@pytest.mark.parametrize("link", ["http://169.254.169.254/latest/meta-data/",
                                  "http://[fd00:ec2::254]/latest/",
                                  "http://[::ffff:169.254.169.254]/x",
                                  "http://[64:ff9b::a9fe:a9fe]/x"])
def test_metadata_addresses_are_never_fetched(node, link):
    c = node.client()
    job = c.start_download({"type": "single", "bucket": {"name": "b"}, "link": link,
                            "object_name": "x"})
    st = wait_job(c, job)
    assert st["error_cnt"] == 1
    assert "egress blocked" in st["download_errors"][0]["error"]


def test_egress_rules():
    assert blocked_reason("127.0.0.1", allow_private=True) is None
    assert blocked_reason("10.1.2.3", allow_private=True) is None
    assert "private" in blocked_reason("127.0.0.1", allow_private=False)
    assert "private" in blocked_reason("192.168.1.1", allow_private=False)
    assert "private" in blocked_reason("100.64.0.1", allow_private=False)
    assert blocked_reason("8.8.8.8", allow_private=False) is None
    assert "metadata" in blocked_reason("169.254.169.254", allow_private=True)
    assert "metadata" in blocked_reason("fd00:ec2::254", allow_private=True)
    assert "metadata" in blocked_reason("::ffff:169.254.169.254", allow_private=True)


def test_a_client_outlives_a_node_restart(node):
    """A script's Client keeps one connection alive between calls; when the node restarts
    under it, the next call reconnects instead of failing."""
    from aisdl.client import NodeUnreachable
    from aisdl.models import Bucket

    c = node.client()
    c.create_bucket(Bucket("ais", "kept"))
    node.restart()
    assert Bucket("ais", "kept") in c.list_buckets()
    node.stop()
    with pytest.raises(NodeUnreachable, match="cannot reach the node"):
        c.list_buckets()
