"""Arguments of `ais start download`: SOURCE, DESTINATION, `--object-list`, durations, sizes.

SOURCE follows upstream's `parseURLToSource` (spec 1.2) with these deliberate differences:

- Cloud schemes keep a cloud link: `gs://B/P` / `gcp://B/P` → link `gs://B/P`, `s3://` / `aws://`
  → `s3://B/P`, `az://` / `azure://` → `az://B/P` (always the short scheme). Our node reads such
  links through the provider's API, so it needs no public HTTP URL (upstream builds
  `https://storage.googleapis.com/...`, plain-http S3 URLs, and an empty link for Azure).
  What follows the bucket is the object name or prefix verbatim (no `?query` splitting); a
  trailing `/` is dropped from the link only, as upstream's path join does.
- `oc://` / `oci://` are rejected as `invalid scheme`: the node has no OCI reader.
- No `+` → space query-unescaping (an upstream bug that breaks links with `+`). The only decoding
  is `%7B`/`%7D` → `{`/`}`, so that a range template can be pasted URL-encoded.
- A scheme is only recognised when followed by `://`, so `host:8080/file` is a link without a
  scheme (→ `https://host:8080/file`) rather than the unknown scheme `host`.
- `http(s)://` and `ais://` links must name a host, and `ais://` links a bucket.

DESTINATION follows spec 2.1, plus `Dest.has_trailing_slash`: with a single-file source the CLI
stores `ais://b/dir/` as `dir/<basename of link>` where upstream would name the object `dir`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from aisdl.errors import BadRequest
from aisdl.models import PROVIDER_SCHEME, SCHEME_PROVIDER, Bucket, check_bucket_name
from aisdl.units import UNITS, parse_duration, parse_size

F = TypeVar("F", bound=Callable[..., Any])

AIS_DEFAULT_PORT = 8080
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CLOUD_SCHEMES = {"gs": "gcp", "gcp": "gcp", "s3": "aws", "aws": "aws",
                  "az": "azure", "azure": "azure"}
_BRACES = re.compile(r"%7[BbDd]")


@dataclass(frozen=True)
class Source:
    link: str
    scheme: str  # http, https, gcp, aws, azure or ais
    bucket: Bucket | None = None  # the cloud bucket, for cloud schemes only
    prefix: str = ""  # object name or prefix inside `bucket`, for cloud schemes only


@dataclass(frozen=True)
class Dest:
    bucket: Bucket
    path: str = ""  # trimmed of all leading and trailing '/'
    has_trailing_slash: bool = False  # `ais://b/dir/`: a directory for a single-file source


def parse_source(text: str) -> Source:
    text = _BRACES.sub(lambda m: "{" if m.group(0)[-1] in "Bb" else "}", text.strip())
    if not text:
        raise BadRequest("source cannot be empty (expecting e.g. https://example.com/file.tar"
                         " or gs://bucket/object)")
    m = _SCHEME.match(text)
    if not m:
        return _web_source("https", "https://" + text)
    scheme, rest = m.group(1).lower(), text[m.end():]
    if scheme in ("http", "https"):
        return _web_source(scheme, text)
    if scheme in _CLOUD_SCHEMES:
        name, _, prefix = rest.partition("/")
        if not name:
            raise BadRequest(f'invalid source "{text}": missing bucket name')
        bucket = Bucket.of(name, _CLOUD_SCHEMES[scheme])
        path = prefix.rstrip("/")
        link = f"{PROVIDER_SCHEME[bucket.provider]}://{name}" + (f"/{path}" if path else "")
        return Source(link, bucket.provider, bucket, prefix)
    if scheme == "ais":
        return _ais_source(text, rest)
    raise BadRequest(f"invalid scheme: {scheme}")


def _web_source(scheme: str, link: str) -> Source:
    if not urlsplit(link).netloc:
        raise BadRequest(f'invalid source "{link}": missing host')
    return Source(link, scheme)


def _ais_source(text: str, rest: str) -> Source:
    """`ais://HOST[:PORT]/B/O` → the object's URL on that cluster's proxy (spec 1.2)."""
    netloc, _, path = rest.partition("/")
    try:
        port = urlsplit("//" + netloc).port
    except ValueError:
        raise BadRequest(f'invalid source "{text}": bad port') from None
    if not netloc or netloc.startswith(":"):
        raise BadRequest(f'invalid source "{text}": missing host'
                         " (expecting ais://HOST[:PORT]/BUCKET/OBJECT)")
    if not path.strip("/"):
        raise BadRequest(f'invalid source "{text}": missing bucket'
                         " (expecting ais://HOST[:PORT]/BUCKET/OBJECT)")
    if port is None:
        netloc = f"{netloc}:{AIS_DEFAULT_PORT}"
    return Source(f"http://{netloc}/v1/objects/{path}", "ais")


def parse_dest(text: str) -> Dest:
    """`provider://bucket[/path]` (spec 2.1); the provider is required."""
    text = text.strip()
    if not text:
        raise BadRequest('destination cannot be empty (expecting e.g. "ais://<bucket>[/path]")')
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise BadRequest(f'backend provider cannot be empty (did you mean "ais://{text}"?)')
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        raise BadRequest(f'invalid destination "{text}": expecting a bucket, e.g. "ais://<name>"')
    if scheme not in SCHEME_PROVIDER:
        raise BadRequest(f'invalid backend provider "{scheme}"')
    name, _, path = rest.partition("/")
    if not name:
        raise BadRequest(f'invalid destination "{text}": missing bucket name')
    bucket = Bucket(SCHEME_PROVIDER[scheme], check_bucket_name(name))
    trimmed = path.strip("/")
    return Dest(bucket, trimmed, has_trailing_slash=bool(trimmed) and path.endswith("/"))


def read_object_list(path: str) -> list[str]:
    """The `--object-list` file: a JSON array of object names (spec 3.4)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise BadRequest(f'cannot read object list file "{path}": {e.strerror or e}') from None
    bad = f'file "{path}" doesn\'t seem to contain JSON array of strings'
    try:
        names = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"{bad}: {e}") from None
    if not isinstance(names, list):
        raise BadRequest(f"{bad}: got a JSON {_json_type(names)}")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise BadRequest(f"{bad}: element {i} is a JSON {_json_type(name)}")
    return names


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    kinds = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return kinds.get(type(value), type(value).__name__)


class DurationType(click.ParamType):  # type: ignore[type-arg]  # generic only in stubs
    """`500ms`, `10s`, `1m30s` or bare seconds → seconds (float)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):  # a default given as a number
            return float(value)
        try:
            return parse_duration(str(value))
        except BadRequest as e:
            self.fail(e.message, param, ctx)


class SizeType(click.ParamType):  # type: ignore[type-arg]
    """`1GiB`, `500MB` or plain bytes → bytes (int), read as the command's --units says."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value), units=given_units(ctx))
        except BadRequest as e:
            self.fail(e.message, param, ctx)


_UNITS_KEY = "aisdl.units"
UNITS_SHOWN = ("Units of the sizes shown: iec (KiB, MiB, ...; the default), si (KB, MB, ...) or"
               " raw (bytes).")


def _remember_units(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    ctx.meta[_UNITS_KEY] = value or ""
    return value or ""


def given_units(ctx: click.Context | None) -> str:
    """The command's --units, "" when not given (a size's suffix then decides, as in AIS)."""
    return str(ctx.meta.get(_UNITS_KEY, "")) if ctx is not None else ""


def units_option(help_text: str) -> Callable[[F], F]:
    """`--units iec|si|raw`, as AIS's CLI has it. Eager, so that it is known before the
    command's sizes are read, wherever it stands on the command line."""
    return click.option("--units", type=click.Choice(UNITS), default=None, is_eager=True,
                        callback=_remember_units, help=help_text)


DURATION = DurationType()
SIZE = SizeType()
