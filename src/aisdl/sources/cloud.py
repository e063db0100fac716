"""s3://, gs:// and az:// links, read (and written) through obstore.

Only this module knows obstore and its exceptions. Credentials come from the environment the
node was started with (`CloudSettings.from_env`), one store per (provider, bucket, timeout),
created on first use. Three rules hold for every store:

- obstore never retries (`max_retries=0`): the engine owns retries and counts every attempt.
- Nothing asks a cloud metadata service (169.254.169.254) for credentials: S3 and Azure
  without credentials are anonymous (`skip_signature`), and their metadata endpoints point at a
  closed loopback port in case a future obstore asks anyway. GCS is never given
  `skip_signature` (with it obstore still builds its metadata-server credential provider, and
  was seen to call it); GCS always gets explicit credentials, and anonymous GCS is the
  "disable_oauth" service-account form, which sends no Authorization header at all. So
  instance/managed-identity credentials are not supported, by design (egress policy).
- A configured endpoint (emulator, S3-compatible store) passes the node's egress check.

obstore's constructors also read AWS_* / GOOGLE_* / AZURE_* from the process environment;
every value we set overrides them, and the node passes its own environment anyway.

What obstore does not expose: response headers, so no MD5/CRC32C (x-goog-hash, Content-MD5)
and no Retry-After; ranged reads have no If-Range, so a resume sends `If-Match` and starts
over from byte 0 when the object changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import (
    NotModifiedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import AzureStore, GCSStore, S3Store

from aisdl.engine.egress import EgressBlocked, EgressProxy, check_address
from aisdl.errors import SourceError
from aisdl.models import PROVIDER_SCHEME, SCHEME_PROVIDER, Bucket
from aisdl.sources.base import SourceObject
from aisdl.sources.cloud_settings import CloudSettings

if TYPE_CHECKING:
    from obstore import GetOptions

CLOUD_PROVIDERS = ("aws", "gcp", "azure")
LIST_PAGE = 1000
CONNECT_TIMEOUT = 10.0   # seconds, when the caller gives no timeout
READ_TIMEOUT = 120.0     # seconds without a byte before a read is abandoned
# reqwest's whole-request timeout would cut long downloads: stalls are caught by the read timeout
WHOLE_REQUEST = timedelta(days=7)
NO_METADATA = "http://127.0.0.1:9"  # a closed loopback port instead of any metadata service
GCS_PUBLIC_URL = "https://storage.googleapis.com"
# how providers say the bucket is missing ("no bucket named": fake-gcs-server, as a 500)
_BUCKET_GONE = ("NoSuchBucket", "ContainerNotFound", "bucket does not exist",
                "container does not exist", "no bucket named")
_CREDS_HINT = {
    "aws": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
    "gcp": "GOOGLE_APPLICATION_CREDENTIALS",
    "azure": "AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN or "
             "AZURE_STORAGE_CONNECTION_STRING",
}


# -- settings ------------------------------------------------------------------------------
# -- links and metadata --------------------------------------------------------------------
def parse_link(link: str) -> tuple[str, str, str]:
    """`s3://bucket/key` → ("aws", "bucket", "key"); also gs://, az:// and AIS's aws://, ..."""
    scheme, sep, rest = link.partition("://")
    provider = SCHEME_PROVIDER.get(scheme.lower())
    bucket, _, key = rest.partition("/")
    if not sep or provider not in CLOUD_PROVIDERS or not bucket:
        raise SourceError(f"invalid cloud link {link!r}: expected s3://, gs:// or az://"
                          "BUCKET/OBJECT", transient=False)
    return provider, bucket, key


def _meta(m: Mapping[str, Any], provider: str) -> SourceObject:
    etag = (m.get("e_tag") or "").removeprefix("W/").strip('"')
    lm = m.get("last_modified")
    return SourceObject(
        source=provider, size=m.get("size"), etag=etag or None,
        last_modified=format_datetime(lm, usegmt=True) if isinstance(lm, datetime) else None,
        version=m.get("version") or None)


def _if_range(validator: str) -> dict[str, Any]:
    """The precondition obstore can send for a resume: If-Match an ETag, or for a date
    If-Unmodified-Since."""
    if validator.startswith(("\"", "W/")):
        return {"if_match": validator.removeprefix("W/")}
    try:
        return {"if_unmodified_since": parsedate_to_datetime(validator)}
    except (TypeError, ValueError):
        return {"if_match": f'"{validator}"'}


# -- errors --------------------------------------------------------------------------------
_STATUS = re.compile(r"status code: (\d{3})|status: (\d{3})")
_XML = re.compile(r"<Code>([^<]*)</Code>\s*<Message>([^<\n]*)")


def _status(text: str) -> int | None:
    m = _STATUS.search(text)
    return int(m.group(1) or m.group(2)) if m else None


def _reason(text: str) -> str:
    """The server's own words (XML Code: Message), else obstore's first line."""
    m = _XML.search(text)
    if m:
        return f"{m.group(1)}: {m.group(2).strip()}"
    first = text.split("\n\nDebug source", 1)[0].strip().splitlines()
    line = first[0] if first else text
    return line.split(" - ", 1)[-1][:300]


_URI = re.compile(r"Error performing \w+ (\S+)")
_CAUSE = re.compile(r'(?:message|error): "([^"]+)"|ConnectError\(\s*"([^"]+)"')


def _host(text: str) -> str | None:
    m = _URI.search(text)
    return urlsplit(m.group(1)).netloc if m else None


def _cause(text: str) -> str:
    """The innermost reason in obstore's debug text ("Connection refused", a DNS failure)."""
    found = [a or b for a, b in _CAUSE.findall(text)]
    return found[-1] if found else _reason(text)


def _bucket_gone(exc: BaseException) -> bool:
    return any(code in str(exc) for code in _BUCKET_GONE)


def _no_bucket(link: str) -> SourceError:
    provider, bucket, _ = parse_link(link)
    return SourceError(f'cannot read {link}: bucket "{PROVIDER_SCHEME[provider]}://{bucket}" '
                       "does not exist", transient=False)


_EGRESS = re.compile(r"egress blocked: [^\n\\\"]*")
_PROXY_CONNECT = re.compile(r"cannot connect to (\S+): ([^\n\\\"]*)")


def translate(exc: BaseException, link: str, tunnel_failure: str | None = None) -> SourceError:
    """One obstore (or DNS/egress) failure as a SourceError a user can act on;
    `tunnel_failure`: why the egress proxy last failed a tunnel (https)."""
    if isinstance(exc, SourceError):
        return exc
    text = str(exc)
    provider, bucket, _ = parse_link(link)
    where = f"{PROVIDER_SCHEME[provider]}://{bucket}"
    if isinstance(exc, EgressBlocked):
        return SourceError(f"dload: {exc}", transient=False)
    if tunnel_failure and "TunnelUnsuccessful" in text:
        text = tunnel_failure
    blocked = _EGRESS.search(text)  # the egress proxy's answer
    if blocked:
        return SourceError(f"dload: {blocked.group(0)}", transient=False)
    unreachable = _PROXY_CONNECT.search(text)
    if unreachable:
        return SourceError(f"cannot connect to {unreachable.group(1)} for {link}: "
                           f"{unreachable.group(2)}", transient=True)
    if _bucket_gone(exc):
        return _no_bucket(link)
    if isinstance(exc, FileNotFoundError):
        return SourceError(f"{link} does not exist", transient=False)
    status = _status(text)
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or status in (401, 403):
        return SourceError(
            f"access to {link} denied ({status or 'forbidden'}, {_reason(text)}): check the "
            f"credentials for {where} ({_CREDS_HINT[provider]})", transient=False)
    if status is not None:
        transient = status >= 500 or status in (408, 425, 429)
        return SourceError(f"{link}: request failed with {status} status code "
                           f"({_reason(text)})", transient=transient)
    if "error sending request" in text or "Connect" in text:
        return SourceError(f"cannot connect to {_host(text) or provider} for {link}: "
                           f"{_cause(text)}", transient=True)
    if "timed out" in text.lower() or "TimedOut" in text:
        return SourceError(f"{link}: request timed out (timeout exceeded)", transient=True)
    return SourceError(f"{link}: {_reason(text)}", transient=True)


# -- stores --------------------------------------------------------------------------------
def _client_options(endpoint: str | None, timeout: float | None,
                    proxy: str) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "proxy_url": proxy,  # every connection, redirects included, is checked there
        "connect_timeout": timedelta(seconds=timeout or CONNECT_TIMEOUT),
        "read_timeout": timedelta(seconds=timeout or READ_TIMEOUT),
        "timeout": WHOLE_REQUEST,
    }
    if endpoint and endpoint.startswith("http://"):
        opts["allow_http"] = True
    return opts


def _s3(s: CloudSettings) -> tuple[dict[str, Any], str | None]:
    cfg: dict[str, Any] = {"region": s.aws_region or "us-east-1", "metadata_endpoint": NO_METADATA}
    if s.aws_endpoint:
        cfg["endpoint"] = s.aws_endpoint
    if s.aws_access_key_id and s.aws_secret_access_key:
        cfg.update(access_key_id=s.aws_access_key_id, secret_access_key=s.aws_secret_access_key)
        if s.aws_session_token:
            cfg["session_token"] = s.aws_session_token
    elif s.aws_web_identity_token_file and s.aws_role_arn:
        cfg.update(web_identity_token_file=s.aws_web_identity_token_file,
                   role_arn=s.aws_role_arn)
    else:
        cfg["skip_signature"] = True  # anonymous: never the instance-metadata chain
    return cfg, s.aws_endpoint


def _gcs(s: CloudSettings) -> tuple[dict[str, Any], str | None]:
    if s.gcs_base_url or not (s.gcs_service_account or s.gcs_authorized_user):
        # Emulator or anonymous: no OAuth, so no token request and no Authorization header.
        base = s.gcs_base_url or GCS_PUBLIC_URL
        key = json.dumps({"gcs_base_url": base, "disable_oauth": True, "client_email": "",
                          "private_key": "", "private_key_id": ""})
        return {"service_account_key": key}, s.gcs_base_url
    if s.gcs_authorized_user:
        return {"application_credentials": s.gcs_authorized_user}, None
    assert s.gcs_service_account is not None
    return {"service_account": s.gcs_service_account}, _gcs_file_base_url(s.gcs_service_account)


def _gcs_file_base_url(path: str) -> str | None:
    try:
        value = json.loads(Path(path).read_text()).get("gcs_base_url")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def _azure(s: CloudSettings) -> tuple[dict[str, Any], str | None]:
    if not s.azure_account:
        raise SourceError("az:// needs a storage account: set AZURE_STORAGE_ACCOUNT_NAME "
                          "(or AZURE_STORAGE_CONNECTION_STRING)", transient=False)
    cfg: dict[str, Any] = {"account_name": s.azure_account, "msi_endpoint": NO_METADATA}
    if s.azure_endpoint:
        cfg["endpoint"] = s.azure_endpoint.rstrip("/")
    if s.azure_key:
        cfg["account_key"] = s.azure_key
    elif s.azure_sas:
        cfg["sas_key"] = s.azure_sas.lstrip("?")
    elif s.azure_client:
        cfg.update(client_id=s.azure_client[0], client_secret=s.azure_client[1],
                   tenant_id=s.azure_client[2])
    else:
        cfg["skip_signature"] = True  # anonymous (public container): no managed identity
    return cfg, s.azure_endpoint


_BUILDERS = {"aws": (_s3, S3Store), "gcp": (_gcs, GCSStore), "azure": (_azure, AzureStore)}


async def _check_egress(endpoint: str, allow_private: bool) -> None:
    host = urlsplit(endpoint).hostname or ""
    port = urlsplit(endpoint).port or 443
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for info in infos:
        check_address(str(info[4][0]), allow_private)


# -- reads ---------------------------------------------------------------------------------
@dataclass
class CloudRead:
    """An open GET: `meta`, the byte `offset` it starts at, and its body as `chunks()`."""

    meta: SourceObject
    offset: int
    not_modified: bool
    link: str
    _result: Any = None
    ranges: bool = True  # every provider serves byte ranges

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        assert self._result is not None
        try:
            async for chunk in self._result.stream(min_chunk_size=size):
                yield bytes(chunk)
        except Exception as exc:  # noqa: BLE001 - obstore raises its own tree; translated
            raise translate(exc, self.link) from exc


class CloudSource:
    """Cloud objects through obstore; one cached store per (provider, bucket, timeout)."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self._stores: dict[tuple[str, str, float | None], Any] = {}
        self._proxy = EgressProxy(settings.allow_private)

    async def _store(self, provider: str, bucket: str, timeout: float | None = None) -> Any:
        key = (provider, bucket, timeout)
        store = self._stores.get(key)
        if store is not None:
            return store
        build, cls = _BUILDERS[provider]
        config, endpoint = build(self.settings)
        link = f"{PROVIDER_SCHEME[provider]}://{bucket}"
        try:
            if endpoint:
                await _check_egress(endpoint, self.settings.allow_private)
            proxy = await self._proxy.start()
            store = cls(bucket, config=config,
                        client_options=_client_options(endpoint, timeout, proxy),
                        retry_config={"max_retries": 0})
        except EgressBlocked as exc:
            raise SourceError(f"dload: {exc}", transient=False) from exc
        except OSError as exc:  # the endpoint's name does not resolve
            raise SourceError(f"cannot resolve the {provider} endpoint {endpoint}: {exc}",
                              transient=False) from exc
        except Exception as exc:  # noqa: BLE001 - obstore's configuration errors
            raise SourceError(f"cannot configure {link}: {_reason(str(exc))}",
                              transient=False) from exc
        return self._stores.setdefault(key, store)

    @contextlib.asynccontextmanager
    async def open(self, link: str, *, start: int = 0, if_range: str | None = None,
                   stored: SourceObject | None = None,
                   headers: dict[str, list[str]] | None = None,
                   timeout: float | None = None,
                   end: int | None = None) -> AsyncIterator[CloudRead]:
        """GET `link`: from `start` when `if_range` (the ETag we resume against) still
        matches, else from 0; `not_modified` when `stored` still describes the object.
        With `end`, bytes [start, end) only (a part of a blob). `headers` are for http(s)
        sources only: the cloud APIs sign their own requests."""
        provider, bucket, key = parse_link(link)
        store = await self._store(provider, bucket, timeout)
        options: dict[str, Any] = {}
        if end is not None:
            options = {"range": (start, end), **(_if_range(if_range) if if_range else {})}
        elif start and if_range:
            options = {"range": {"offset": start}, **_if_range(if_range)}
        elif stored is not None and stored.etag:
            options["if_none_match"] = f'"{stored.etag}"'
        try:
            result = await self._get(store, key, options, link)
        except NotModifiedError:
            assert stored is not None
            yield CloudRead(stored, 0, True, link)
            return
        meta = _meta(result.meta, provider)
        if result.range[0] and "if_match" in options \
                and options["if_match"].strip('"') != meta.etag:
            # A server that ignores If-Match (fake-gcs-server does) must not make us splice
            # two versions of the object together.
            result = await self._get(store, key, {}, link)
            meta = _meta(result.meta, provider)
        if stored is not None and not start and stored.version and meta.version \
                and stored.version == meta.version:  # no ETag stored, but the same version
            yield CloudRead(stored, 0, True, link)
            return
        yield CloudRead(meta, result.range[0], False, link, result)

    async def _get(self, store: Any, key: str, options: dict[str, Any], link: str) -> Any:
        try:
            return await _fresh_if_stale(lambda: obstore.get_async(
                store, key, options=cast("GetOptions", options)))
        except NotModifiedError:
            raise
        except PreconditionError:
            pass  # changed since the partial download: start over below
        except Exception as exc:  # noqa: BLE001 - obstore raises its own tree
            if "range" not in options or not _range_refused(exc):
                raise await self._error(exc, link, store) from exc
        try:  # the whole object: it changed, or the bytes we hold already reach its end
            return await _fresh_if_stale(lambda: obstore.get_async(store, key))
        except Exception as exc:  # noqa: BLE001
            raise await self._error(exc, link, store) from exc

    async def _error(self, exc: BaseException, link: str, store: Any) -> SourceError:
        """`translate`, and for a bare 404 one listing to tell a missing bucket apart (not
        every server names the bucket in its answer)."""
        err = translate(exc, link, self._proxy.failure)
        if isinstance(exc, FileNotFoundError) and not _bucket_gone(exc):
            with contextlib.suppress(SourceError):
                if not await _listable(store, link, self._proxy.failure):
                    return _no_bucket(link)
        return err

    async def head(self, link: str) -> SourceObject:
        """The object's validators, without its bytes."""
        provider, bucket, key = parse_link(link)
        store = await self._store(provider, bucket)
        try:
            return _meta(await _fresh_if_stale(lambda: obstore.head_async(store, key)),
                         provider)
        except Exception as exc:  # noqa: BLE001
            raise await self._error(exc, link, store) from exc

    async def list(self, bucket: Bucket, prefix: str,
                   start_after: str = "") -> AsyncIterator[list[tuple[str, SourceObject]]]:
        """Objects whose names start with `prefix` (and sort after `start_after`), in name
        order, one page at a time.

        obstore matches prefixes by whole path segments, so we list the prefix's directory,
        start just before the prefix, filter by the full string, and stop once past it."""
        link = f"{PROVIDER_SCHEME[bucket.provider]}://{bucket.name}/{prefix}"
        store = await self._store(bucket.provider, bucket.name)
        parent = prefix.rpartition("/")[0] or None
        offset = prefix[:-1] if prefix and not prefix.endswith("/") and len(prefix) > 1 \
            else None
        if start_after and start_after > (offset or ""):
            offset = start_after
        stream = obstore.list(store, parent, offset=offset, chunk_size=LIST_PAGE)
        try:
            async for chunk in stream:
                page = [(m["path"], _meta(m, bucket.provider)) for m in chunk
                        if m["path"].startswith(prefix)]
                if page:
                    yield page
                if chunk and chunk[-1]["path"] > prefix and \
                        not chunk[-1]["path"].startswith(prefix):
                    return  # sorted listing: nothing later can match
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, link, self._proxy.failure) from exc

    async def put(self, link: str, path: str | Path) -> SourceObject:
        """Upload a local file (multipart when large); returns the new object's validators."""
        provider, bucket, key = parse_link(link)
        store = await self._store(provider, bucket)
        try:
            await obstore.put_async(store, key, Path(path))
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, link, self._proxy.failure) from exc
        return await self.head(link)

    async def delete(self, link: str) -> None:
        """Delete `link`; an object that is already gone is not an error."""
        provider, bucket, key = parse_link(link)
        store = await self._store(provider, bucket)
        try:
            await obstore.delete_async(store, key)
        except FileNotFoundError as exc:
            if _bucket_gone(exc):
                raise translate(exc, link, self._proxy.failure) from exc
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, link, self._proxy.failure) from exc

    async def bucket_exists(self, bucket: Bucket) -> bool:
        """True when the bucket can be listed, False when the provider says it does not exist;
        other failures (credentials, network) raise SourceError."""
        link = f"{PROVIDER_SCHEME[bucket.provider]}://{bucket.name}/"
        store = await self._store(bucket.provider, bucket.name)
        return await _listable(store, link, self._proxy.failure)

    async def aclose(self) -> None:
        """Drop every store (and its connection pool) while the event loop still runs."""
        self._stores.clear()
        await self._proxy.close()
        await asyncio.sleep(0)


async def _fresh_if_stale(call: Callable[[], Awaitable[Any]]) -> Any:
    """Send an idempotent request once more when it died on a pooled keep-alive connection
    that the server had closed (hyper's SendRequest: no answer came), as Go's http.Transport
    does. Servers may close the connection after an error answer (fake-gcs-server after a
    416); with obstore's retries off this would otherwise fail an attempt that never ran."""
    try:
        return await call()
    except Exception as exc:  # noqa: BLE001
        if "SendRequest" not in str(exc):
            raise
    return await call()


async def _listable(store: Any, link: str, tunnel_failure: str | None = None) -> bool:
    """List one name: False when the bucket does not exist, SourceError for other failures."""
    try:
        async for _ in obstore.list(store, chunk_size=1):
            break
    except Exception as exc:  # noqa: BLE001
        if _bucket_gone(exc) or isinstance(exc, FileNotFoundError) or _status(str(exc)) == 404:
            return False
        raise translate(exc, link, tunnel_failure) from exc
    return True


def _range_refused(exc: BaseException) -> bool:
    text = str(exc)
    return _status(text) == 416 or "InvalidRange" in text or "Wanted range starting" in text


__all__ = ["CloudRead", "CloudSettings", "CloudSource", "parse_link", "translate"]
