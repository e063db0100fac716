"""What every command shares: the endpoint and a client that makes sure a node is running."""

from __future__ import annotations

import os

from aisdl.client import Client

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"


class CliContext:
    def __init__(self, no_color: bool = False) -> None:
        self.endpoint = os.environ.get("AIS_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
        # `--no-color`, or NO_COLOR set to anything but "" (https://no-color.org)
        self.no_color = no_color or bool(os.environ.get("NO_COLOR"))
        self._token: str | None = None
        self._client: Client | None = None

    @property
    def token(self) -> str | None:
        """The AuthN token the CLI sends, found as AIS's CLI finds it (cli/auth_cmds.py)."""
        if self._token is None:
            from aisdl.cli.auth_cmds import cli_token

            self._token = cli_token() or ""
        return self._token or None

    @property
    def client(self) -> Client:
        """A client of a live node; starts a background node when none answers at the default."""
        if self._client is None:
            from aisdl.cli.autostart import ensure_node

            client = Client(self.endpoint, token=self.token)
            ensure_node(client)
            self._client = client
        return self._client
