"""`ais serve` (a node in the foreground) and `ais node stop`."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import click

from aisdl.cli.context import CliContext
from aisdl.cli.params import DURATION, SIZE
from aisdl.client import Client
from aisdl.config import NodeConfig, RetryPolicy, default_home
from aisdl.sources.cloud_settings import CloudSettings


def _host_names(ctx: click.Context, param: click.Parameter,
                values: tuple[str, ...]) -> tuple[str, ...]:
    from aisdl.api.browser import normalize_allowed_host

    try:
        return tuple(normalize_allowed_host(v) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _scheduler_address(value: str) -> str:
    """`tcp://HOST:PORT` (or `tls://`), or HOST:PORT for tcp."""
    address = value if "://" in value else f"tcp://{value}"
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme not in ("tcp", "tls") or not host or not port.isdigit():
        raise click.BadParameter(f"{value!r}: expected tcp://HOST:PORT", param_hint="--scheduler")
    return address


@click.command()
@click.option("--port", default=8080, show_default=True, help="TCP port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default).")
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Node directory: database, data, log [default: $AISDL_HOME or ~/.aisdl].")
@click.option("--mountpath", "mountpaths", multiple=True, type=click.Path(path_type=Path),
              help="Directory for object data; repeat for several disks [default: HOME/data].")
@click.option("--allow-private-egress", is_flag=True,
              help="Let a node listening beyond loopback fetch from loopback and private networks.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, callback=_host_names,
              help="Another name (or address) users reach the node by; repeat for several. "
                   "Requests under any other name are refused (DNS rebinding).")
@click.option("--max-conns", default=64, show_default=True,
              help="Node-wide limit of concurrent source connections.")
@click.option("--max-per-host", type=click.IntRange(min=0), default=0,
              help="Most concurrent connections to one source host (0: up to --max-conns); "
                   "each host's limit adapts below it to what the host keeps up with.")
@click.option("--retry-attempts", type=click.IntRange(min=1), default=RetryPolicy.attempts,
              show_default=True, help="Tries of one file before it is recorded as failed.")
@click.option("--retry-delay", type=DURATION, default=RetryPolicy.base_delay,
              show_default="500ms", help="Backoff before the first retry (doubles each time).")
@click.option("--stall-timeout", type=DURATION, default=NodeConfig.stall_timeout,
              show_default="60s", help="Cut a transfer that receives nothing for this long (it "
                                       "is retried from its byte); 0: only a job's --timeout.")
@click.option("--min-rate", type=SIZE, default=NodeConfig.min_rate, show_default="1KiB",
              help="End a transfer slower than this many bytes/s over --rate-window (0: none).")
@click.option("--rate-window", type=DURATION, default=NodeConfig.rate_window,
              show_default="60s", help="The window --min-rate is measured over.")
@click.option("--max-object-size", type=SIZE, default=NodeConfig.max_object_size,
              show_default="5TiB", help="Refuse a source object larger than this (0: no limit).")
@click.option("--event-loop", type=click.Choice(["asyncio", "uvloop"]), default="asyncio",
              show_default=True, help="The event loop implementation.")
@click.option("--fetch-procs", type=click.IntRange(min=0), default=None,
              help="Worker processes that fetch objects (0: fetch in the node process) "
                   "[default: one per core, up to 8].")
@click.option("--scheduler", default="", metavar="tcp://HOST:PORT",
              help="Run downloads on the workers of this Dask scheduler (`dask worker "
                   "tcp://HOST:PORT` on machines that mount the node's mountpaths at the same "
                   "paths) instead of this machine's fetch processes.")
@click.option("--no-auth", is_flag=True,
              help="Serve a non-loopback --host without tokens: anyone who reaches it controls "
                   "the node (downloads, data, shutdown).")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None,
              help="Serve HTTPS only, with this PEM certificate (chain); needs --tls-key.")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None,
              help="The PEM private key of --tls-cert.")
@click.option("--auth-secret", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Require AIS AuthN tokens signed (HS256) with the secret in this file.")
@click.option("--auth-public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Require AIS AuthN tokens signed (RS256) by the key pair of this PEM "
                   "public key.")
def serve(port: int, host: str, home: Path | None, mountpaths: tuple[Path, ...],
          allow_private_egress: bool, allowed_hosts: tuple[str, ...], max_conns: int,
          max_per_host: int, retry_attempts: int,
          retry_delay: float, stall_timeout: float, min_rate: int, rate_window: float,
          max_object_size: int, event_loop: str, fetch_procs: int | None, scheduler: str,
          no_auth: bool, tls_cert: Path | None, tls_key: Path | None,
          auth_secret: Path | None, auth_public_key: Path | None) -> None:
    """Run a node in the foreground (Ctrl+C stops it; unfinished jobs resume at the next start)."""
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together: give both, or neither")
    config = NodeConfig(
        home=(home or default_home()).resolve(), host=host, port=port,
        mountpaths=tuple(p.resolve() for p in mountpaths),
        allow_private_egress=allow_private_egress, allowed_hosts=allowed_hosts,
        max_connections=max_conns, max_per_host=max_per_host,
        retry=RetryPolicy(attempts=retry_attempts, base_delay=retry_delay),
        stall_timeout=stall_timeout, min_rate=min_rate, rate_window=rate_window,
        max_object_size=max_object_size, event_loop=event_loop, no_auth=no_auth,
    )
    if fetch_procs is not None:
        config = replace(config, fetch_procs=fetch_procs)
    if scheduler:
        config = replace(config, scheduler=_scheduler_address(scheduler))
    if tls_cert is not None and tls_key is not None:
        config = replace(config, tls_cert=tls_cert.resolve(), tls_key=tls_key.resolve())
    config = _with_auth(config, auth_secret, auth_public_key)
    cloud = CloudSettings.from_env(os.environ, allow_private=config.may_fetch_private)
    from aisdl.node import run_node  # asyncio and the web stack: only for `ais serve`

    run_node(replace(config, cloud=cloud))


def _with_auth(config: NodeConfig, secret: Path | None, public_key: Path | None) -> NodeConfig:
    """The node's token key: one of a shared secret (HS256) or an issuer's public key (RS256)."""
    if secret and public_key:
        raise click.UsageError("give --auth-secret or --auth-public-key, not both")
    if secret:
        key = secret.read_bytes().strip()
        if not key:
            raise click.BadParameter(f"{secret} is empty", param_hint="--auth-secret")
        from aisdl.api.auth import short_secret_warning

        if warning := short_secret_warning(key):
            click.echo(warning, err=True)
        return replace(config, auth_algorithm="HS256", auth_key=key)
    if public_key:
        key = public_key.read_bytes()
        from aisdl.cli.auth_cmds import check_public_key

        check_public_key(key, public_key)
        return replace(config, auth_algorithm="RS256", auth_key=key)
    return config


@click.group()
def node() -> None:
    """Manage the node."""


@node.command("stop")
@click.pass_obj
def node_stop(obj: CliContext) -> None:
    """Stop the node at $AIS_ENDPOINT (unfinished jobs resume when it starts again)."""
    client = Client(obj.endpoint, token=obj.token)
    if not client.health():
        click.echo(f"No node is running at {obj.endpoint}")
        return
    client.shutdown()
    click.echo(f"Node at {obj.endpoint} is stopping")


def register(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(node)
