"""Start a background node when no node answers at the default endpoint."""

from __future__ import annotations

import subprocess
import sys
import time
from urllib.parse import urlsplit

import click

from aisdl.client import Client, NodeUnreachable
from aisdl.config import default_home


def ensure_node(client: Client) -> None:
    """Returns once `client`'s node answers; its connection then serves the command's calls."""
    if client.health():
        return
    endpoint = client.endpoint
    url = urlsplit(endpoint)
    if url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
        raise NodeUnreachable(f"no node answers at {endpoint} (is AIS_ENDPOINT right?)")
    home = default_home()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "node.log"
    with open(log_path, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "aisdl", "serve", "--port", str(url.port), "--home", str(home)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    click.echo(
        f"Started a background node at {endpoint} (data: {home}, log: {log_path});"
        " stop it with `ais node stop`", err=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if client.health(timeout=0.5):
            return
        time.sleep(0.1)
    raise NodeUnreachable(f"the background node did not start in 20s; see {log_path}")

