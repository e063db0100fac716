"""Start a background node when no node answers at the default endpoint."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import click

from aisdl.client import Client, NodeUnreachable
from aisdl.config import default_home
from aisdl.errors import AisdlError

START_TIMEOUT = 20.0  # seconds for a started node to answer /v1/health
PROBE_TIMEOUT = 2.0


def ensure_node(client: Client) -> None:
    """Returns once `client`'s node answers; its connection then serves the command's calls."""
    endpoint = client.endpoint
    url = urlsplit(endpoint)
    if url.scheme != "http":  # a background node serves plain HTTP: nothing to start
        client.request("GET", "health", timeout=PROBE_TIMEOUT)  # its error says what is wrong
        return
    occupant = _occupant(client)
    if occupant == "":
        return
    if url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
        raise NodeUnreachable(f"no node answers at {endpoint} (is AIS_ENDPOINT right?)")
    if occupant is not None:
        raise NodeUnreachable(
            f"port {url.port} on {url.hostname} is in use by something that is not an aisdl"
            f" node ({occupant}); set AIS_ENDPOINT to a node's address, or free the port")
    home = default_home()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "node.log"
    with open(log_path, "ab") as log:
        log_start = log.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "aisdl", "serve", "--port", str(url.port), "--home", str(home)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not client.health(timeout=0.5):
        if proc.poll() is not None:
            if client.health():  # another command's node won the port: use that one
                return
            raise NodeUnreachable(
                f"the background node exited before it answered at {endpoint}:"
                f" {_last_words(log_path, log_start)} (log: {log_path})")
        if time.monotonic() >= deadline:
            raise NodeUnreachable(f"the background node did not answer at {endpoint} in"
                                  f" {START_TIMEOUT:.0f}s; see {log_path}")
        time.sleep(0.1)
    click.echo(
        f"Started a background node at {endpoint} (data: {home}, log: {log_path});"
        " stop it with `ais node stop`", err=True)


def _occupant(client: Client) -> str | None:
    """"" when a node answers; None when nothing listens at the endpoint; otherwise what the
    thing listening there did instead of answering as a node."""
    try:
        client.request("GET", "health", timeout=PROBE_TIMEOUT)
    except NodeUnreachable as exc:
        if isinstance(exc.__cause__, ConnectionRefusedError):
            return None
        cause = exc.__cause__
        if isinstance(cause, TimeoutError):
            return f"it did not answer /v1/health in {PROBE_TIMEOUT:.0f}s"
        return f"/v1/health: {cause or exc.message}"
    except AisdlError as exc:
        return f"it answered /v1/health with {exc.status}"
    return ""


def _last_words(log_path: Path, since: int) -> str:
    """The line that says why the node stopped: its `Error: ...` line, else the last one."""
    try:
        with open(log_path, "rb") as log:
            log.seek(since)
            lines = [ln.strip() for ln in log.read().decode(errors="replace").splitlines()]
    except OSError as exc:
        return f"its log cannot be read ({exc.strerror})"
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    if errors:
        return errors[-1].removeprefix("Error:").strip()
    return lines[-1] if lines else "it wrote nothing"
