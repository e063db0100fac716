"""A node that is safe to expose: job credentials never shown, a private home, no open port
without tokens."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from aisdl.config import NodeConfig
from aisdl.errors import AisdlError
from aisdl.node import check_exposure
from aisdl.redact import redact_text
from conftest import Ais, Node
from helpers import free_port, wait_job
from origin import Origin

TOKEN = "TOPSECRETtoken42"
PASSWORD = "pw0rdXYZ"


def _with_userinfo(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://alice:{PASSWORD}@{rest}"


@pytest.mark.parametrize(("text", "shown"), [
    ("https://alice:pw@host/a", "https://alice:<redacted>@host/a"),
    ("get http://u:p@ss@h:80/x@y?q=1 failed", "get http://u:<redacted>@h:80/x@y?q=1 failed"),
    ("https://:pw@host", "https://:<redacted>@host"),
    ("https://alice@host/a:b@c", "https://alice@host/a:b@c"),  # no password; "@" in the path
    ("https://host/a:b@c", "https://host/a:b@c"),
    ("s3://bucket/key", "s3://bucket/key"),
])
def test_redact_text_hides_only_link_passwords(text: str, shown: str) -> None:
    assert redact_text(text) == shown


def test_job_credentials_never_shown(node: Node, ais: Ais, origin: Origin) -> None:
    origin.add("/ok.bin", b"x" * 1000)
    origin.add_fault("/ok.bin", "fail_then_ok", status=503, n=1)  # a retry: logged with its link
    origin.add_fault("/bad.bin", "status", status=500)             # an error: kept with its link
    ais("create", "ais://creds")
    headers = {"Authorization": [f"Bearer {TOKEN}"]}
    client = node.client()
    single = client.start_download({
        "type": "single", "bucket": {"name": "creds", "provider": "ais"},
        "link": _with_userinfo(origin.url_for("/ok.bin")), "object_name": "ok.bin",
        "headers": headers})
    multi = client.start_download({
        "type": "multi", "bucket": {"name": "creds", "provider": "ais"},
        "objects": [_with_userinfo(origin.url_for("/bad.bin"))], "headers": headers})
    assert wait_job(node, single)["error_cnt"] == 0
    assert wait_job(node, multi)["error_cnt"] == 1
    # The credentials were kept and used: the source got both.
    got = origin.requests("/ok.bin", "GET")[-1].headers
    assert got["Authorization"] == f"Bearer {TOKEN}"

    shown = [json.dumps(client.download_status(j)) for j in (single, multi)]
    shown.append(json.dumps(client.list_downloads()))
    for args in (["show", "job", "download", single, "-v"],
                 ["show", "job", "download", multi, "-v"],
                 ["show", "job", "download", "-v"], ["show", "job"]):
        shown.append(ais(*args, check=False).output)
    node.stop()
    shown.append(node.log())
    for text in shown:
        assert TOKEN not in text and PASSWORD not in text, text
    assert "alice:<redacted>@" in shown[0]  # which account, without its password


def test_home_is_the_owners_only(node: Node) -> None:
    home = node.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("aisdl.db", "aisdl.db-wal", "aisdl.db-shm", "node.lock", "node_id"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name


def test_a_loose_home_is_tightened_at_start(node: Node) -> None:
    node.stop()
    node.home.chmod(0o755)
    for name in ("aisdl.db", "node.lock", "node_id"):
        (node.home / name).chmod(0o644)
    node.start()
    assert stat.S_IMODE(node.home.stat().st_mode) == 0o700
    for name in ("aisdl.db", "aisdl.db-wal", "node.lock", "node_id"):
        assert stat.S_IMODE((node.home / name).stat().st_mode) == 0o600, name
    assert "now its owner's only" in node.log()


def _serve(tmp_path: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aisdl", "serve", "--home", str(tmp_path / "home"), *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_non_loopback_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    done = _serve(tmp_path, "--host", "0.0.0.0", "--port", str(port))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "--auth-secret FILE" in lines[0] and "--no-auth" in lines[0]
    assert not (tmp_path / "home").exists()  # refused before anything was made or bound
    with socket.socket() as s:  # the port was never taken (a 0.0.0.0 listener would hold it)
        s.bind(("127.0.0.1", port))


def test_non_loopback_with_no_auth_starts(tmp_path: Path) -> None:
    """In a network namespace of the test's own (only `lo`): nothing here listens on the
    machine's own addresses."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rn", "true"], capture_output=True).returncode:
        pytest.skip("cannot make a user + network namespace here")
    port = free_port()
    script = (
        f"ip link set lo up 2>/dev/null; {sys.executable} -m aisdl serve --host 0.0.0.0 --no-auth"
        f" --port {port} --home {tmp_path / 'home'} --fetch-procs 0 > {tmp_path / 'log'} 2>&1 &"
        f" for i in $(seq 100); do {sys.executable} -c \"import urllib.request as u;"
        f" print(u.urlopen('http://127.0.0.1:{port}/v1/health', timeout=1).status)\""
        " 2>/dev/null && break; sleep 0.2; done; kill %1; wait")
    done = subprocess.run(["unshare", "-rn", "bash", "-c", script], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split()[:1] == ["200"], (done.stdout, done.stderr,
                                                (tmp_path / "log").read_text())
    assert "node listening on" in (tmp_path / "log").read_text()


@pytest.mark.parametrize(("host", "no_auth", "starts"), [
    ("127.0.0.1", False, True), ("127.0.0.2", False, True), ("::1", False, True),
    ("localhost", False, True),
    ("0.0.0.0", False, False), ("::", False, False), ("10.1.2.3", False, False),
    ("node.example", False, False),  # a name may resolve to any address
    ("0.0.0.0", True, True), ("node.example", True, True),
    ("0.0.0.0", "HS256", True), ("::", "RS256", True),  # tokens: safe to expose
])
def test_which_listen_addresses_need_tokens(host: str, no_auth: bool | str,
                                            starts: bool) -> None:
    tokens = no_auth if isinstance(no_auth, str) else ""
    config = NodeConfig(home=Path("/nonexistent"), host=host, no_auth=no_auth is True,
                        auth_algorithm=tokens, auth_key=b"k" * 32 if tokens else b"")
    if starts:
        check_exposure(config)
    else:
        with pytest.raises(AisdlError, match="--no-auth to accept the risk"):
            check_exposure(config)
