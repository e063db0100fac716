"""`ais auth token create`: tokens for a node that checks them, where no AuthN server issues
them; and where the CLI finds the token it sends (as AIS's CLI does)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from aisdl.cli.params import DURATION
from aisdl.errors import BadRequest
from aisdl.models import Bucket

DEFAULT_TOKEN_FILE = Path("~/.config/ais/cli/auth.token")


def cli_token() -> str | None:
    """The token to send: $AIS_AUTHN_TOKEN, else the file $AIS_AUTHN_TOKEN_FILE, else the
    default token file, in AIS's order; a file holds AuthN's `{"token": "..."}` (or the bare
    token). None: no token anywhere."""
    token = os.environ.get("AIS_AUTHN_TOKEN", "").strip()
    if token:
        return token
    named = os.environ.get("AIS_AUTHN_TOKEN_FILE", "").strip()
    path = Path(named).expanduser() if named else DEFAULT_TOKEN_FILE.expanduser()
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if named:
            raise click.ClickException(f"token file {path} (AIS_AUTHN_TOKEN_FILE) does not"
                                       " exist") from None
        return None
    except OSError as exc:
        raise click.ClickException(f"cannot read token file {path}: {exc.strerror}") from None
    if text.startswith("{"):
        try:
            token = json.loads(text).get("token", "")
        except (ValueError, AttributeError):
            token = ""
        if not isinstance(token, str) or not token:
            raise click.ClickException(f'token file {path} is not {{"token": "..."}}')
        return token
    return text or None


def check_public_key(key: bytes, path: Path) -> None:
    """Refuse at start a file that is not a PEM RSA public key, rather than every token later."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        loaded = load_pem_public_key(key)
    except ValueError:
        loaded = None
    if not isinstance(loaded, RSAPublicKey):
        raise click.BadParameter(f"{path} is not a PEM RSA public key",
                                 param_hint="--auth-public-key")


def _bucket_grant(text: str) -> tuple[Bucket, int]:
    """`ais://b:ro` → the bucket and its access bits."""
    from aisdl.api.auth import RO, RW  # the web stack: only when issuing

    spec, sep, perm = text.rpartition(":")
    if not sep or perm not in ("ro", "rw") or "://" not in spec:
        raise click.BadParameter(f"{text!r}: expected PROVIDER://BUCKET:ro or :rw",
                                 param_hint="--bucket")
    scheme, _, name = spec.partition("://")
    try:
        return Bucket.of(name, scheme), int(RO if perm == "ro" else RW)
    except BadRequest as exc:
        raise click.BadParameter(exc.message, param_hint="--bucket") from None


def claims_for(user: str, admin: bool, buckets: tuple[str, ...], cluster: str | None,
               cluster_id: str, expires: float, now: float) -> dict[str, Any]:
    """AuthN's claims: `perm` as a decimal string, bucket grants under the cluster's uuid."""
    from aisdl.api.auth import CLUSTER_RO, CLUSTER_RW, RO, RW

    claims: dict[str, Any] = {"sub": user, "admin": admin, "iat": int(now),
                              "exp": int(now + expires)}
    if cluster:
        perm = CLUSTER_RO | RO if cluster == "ro" else CLUSTER_RW | RW
        claims["clusters"] = [{"id": cluster_id, "perm": str(int(perm))}]
    grants = [_bucket_grant(b) for b in buckets]
    if grants:
        claims["buckets"] = [{"bck": {"name": b.name, "provider": b.provider,
                                      "namespace": {"uuid": cluster_id, "name": ""}},
                              "perm": str(bits)} for b, bits in grants]
    return claims


@click.group()
def auth() -> None:
    """Tokens for a node started with --auth-secret."""


@auth.group()
def token() -> None:
    """Issue tokens."""


@token.command("create")
@click.option("--secret", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="File with the node's --auth-secret (signs HS256).")
@click.option("--user", required=True, help="The token's subject (audit lines name it).")
@click.option("--admin", is_flag=True, help="Everything, the node's shutdown included.")
@click.option("--bucket", "buckets", multiple=True, metavar="PROVIDER://BUCKET:ro|rw",
              help="Read (ro) or read-write (rw) objects of this bucket; repeat for more.")
@click.option("--cluster", type=click.Choice(["ro", "rw"]), default=None,
              help="Every bucket: ro lists and reads; rw also writes, creates and destroys.")
@click.option("--cluster-id", default="", metavar="UUID",
              help="Only for this cluster (its smap uuid) [default: any].")
@click.option("--expires", type=DURATION, default=24 * 3600.0, show_default="24h",
              help="How long the token holds.")
def token_create(secret: Path, user: str, admin: bool, buckets: tuple[str, ...],
                 cluster: str | None, cluster_id: str, expires: float) -> None:
    """Print a token signed with the secret in SECRET's file."""
    if not (admin or buckets or cluster):
        raise click.UsageError("the token would grant nothing: give --admin, --bucket or"
                               " --cluster")
    if expires <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--expires")
    key = secret.read_bytes().strip()
    if not key:
        raise click.BadParameter(f"{secret} is empty", param_hint="--secret")
    import jwt

    from aisdl.api.auth import short_secret_warning

    if warning := short_secret_warning(key):
        click.echo(warning, err=True)
    claims = claims_for(user, admin, buckets, cluster, cluster_id, expires, time.time())
    click.echo(jwt.encode(claims, key, algorithm="HS256"))


def register(cli: click.Group) -> None:
    cli.add_command(auth)
