"""The node process: settings from flags and environment, logging, the web app, a clean stop.

A node holds its home for its whole life (one node per home: two would run the same jobs) and
binds its port before it opens anything in it; unfinished jobs resume once it answers."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aisdl.config import NodeConfig
from aisdl.errors import AisdlError
from aisdl.redact import redact_text

if TYPE_CHECKING:  # the web stack loads only in the node process, not in every `ais` command
    from aiohttp import web

LOCK_FILE = "node.lock"
BACKLOG = 128  # aiohttp's own default


class _RedactingFormatter(logging.Formatter):
    """Every line, tracebacks included, with the passwords of links redacted: a job's link is
    logged by many places (retries, errors, descriptions) and may carry one."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def setup_logging() -> None:
    """The node's log on stderr; its fetch workers write the same lines into the same log."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_node(config: NodeConfig) -> None:
    """Serve until SIGTERM/SIGINT; the app's cleanup contexts stop jobs and close the database.
    Raises AisdlError (one line for the CLI) when the home or the port is taken."""
    from aisdl.api.app import create_app

    check_exposure(config)
    # What the node writes (database, objects, work files) is its owner's alone: the objects
    # and the jobs' links and headers may be private; its fetch workers inherit this too.
    os.umask(0o077)
    tls = tls_context(config.tls_cert, config.tls_key) if config.tls else None
    try:
        config.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise AisdlError(f"cannot create the node's home {config.home}: {exc.strerror or exc}"
                         ) from None
    lock = lock_home(config.home, config.endpoint)
    try:
        sock = listen(config.host, config.port)
        setup_logging()
        tighten_home(config)
        runner = asyncio.run
        if config.event_loop == "uvloop":
            import uvloop

            runner = uvloop.run
        try:
            runner(_serve(create_app(config), sock, tls))
        except KeyboardInterrupt:
            pass
    finally:
        os.close(lock)  # releases the lock (the process's end would too, even on SIGKILL)


def check_exposure(config: NodeConfig) -> None:
    """Refuse to serve a non-loopback address without tokens: whoever reaches the port would
    control the node (start downloads from its network position, read and delete everything)."""
    if _is_loopback(config.host) or config.auth_enabled or config.no_auth:
        return
    raise AisdlError(f"--host {config.host} serves other machines, and anyone who reaches it "
                     "would control the node: give tokens (--auth-secret FILE or "
                     "--auth-public-key FILE), or --no-auth to accept the risk")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to any address
        return False


def tighten_home(config: NodeConfig) -> None:
    """Make a home from before (or made by hand) the owner's alone: the home 0700, the database
    and the node's own files 0600. Logs one line when it changed anything."""
    wanted = [(config.home, 0o700)] + [
        (config.home / name, 0o600)
        for name in (config.db_path.name, f"{config.db_path.name}-wal",
                     f"{config.db_path.name}-shm", LOCK_FILE, "node_id")]
    tightened = []
    for path, mode in wanted:
        try:
            current = path.stat().st_mode & 0o777
            if current & ~mode:
                path.chmod(current & mode)
                tightened.append(f"{path.name} {current:o}->{current & mode:o}")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise AisdlError(f"cannot restrict {path} to its owner: {exc.strerror or exc}"
                             ) from None
    if tightened:
        logging.getLogger("aisdl").warning(
            "the node's home was readable by others; now its owner's only: %s",
            ", ".join(tightened))


def lock_home(home: Path, endpoint: str) -> int:
    """Hold HOME/node.lock (flock, released when the process ends however it ends) and write
    our pid and endpoint in it. Returns its descriptor; a second node gets the first's name."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AisdlError(f"cannot use {home} as the node's home: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"pid {holder[0]}, {holder[1]}" if len(holder) == 2 else "starting"
        raise AisdlError(f"another node ({who}) is running with home {home}; stop it first"
                         " (`ais node stop`) or give this one another --home") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {endpoint}\n".encode(), 0)
    return fd


def listen(host: str, port: int) -> socket.socket:
    """The node's listening socket, bound before anything in the home is opened."""
    sock: socket.socket | None = None
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as exc:
        if sock is not None:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AisdlError(f"port {port} on {host} is in use (another node or program);"
                             " choose another with --port") from None
        raise AisdlError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """The server side of HTTPS from PEM files: checked before the node takes its home, so a
    wrong file is a one-line error, not a node that fails each client's handshake."""
    assert cert is not None and key is not None
    for what, path in (("certificate", cert), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise AisdlError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}"
                             ) from None
    def no_passphrase() -> str:  # else OpenSSL would ask for it on the terminal, and wait
        raise AisdlError(f"the TLS key {key} is encrypted; give the node an unencrypted key"
                         " (readable by its user only)")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        raise AisdlError(f"cannot use the TLS certificate {cert} with the key {key}:"
                         f" {exc.reason or exc} (both PEM; the key must be the certificate's)"
                         ) from None
    return context


async def _serve(app: web.Application, sock: socket.socket,
                 tls: ssl.SSLContext | None) -> None:
    from aiohttp import web

    from aisdl.api import keys

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=tls).start()
    config = app[keys.CONFIG]
    logging.getLogger("aisdl").info(
        "node listening on %s (home %s)", config.endpoint, config.home)
    app[keys.JOBS].resume_in_background()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
