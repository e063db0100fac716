"""One suite that every source runs (the idea of rclone's fstests): http through our origin,
s3 through moto, gcs through fake-gcs-server, azure through Azurite. Real servers on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aisdl.errors import SourceError
from aisdl.models import Bucket
from aisdl.sources.base import SourceObject
from aisdl.sources.cloud import CloudSettings, CloudSource
from aisdl.sources.http import HttpSource
from cloud_servers import AZURITE_KEY, connection_string
from helpers import free_port
from origin import Origin, payload

PROVIDER = {"s3": "aws", "gcs": "gcp", "azure": "azure"}
SOURCE_NAME = {**PROVIDER, "http": "gcp"}  # the origin sends GCS's headers (gcs=True)
SCHEME = {"s3": "s3", "gcs": "gs", "azure": "az"}
SERVER_FIXTURE = {"s3": "s3_server", "gcs": "gcs_server", "azure": "azure_server"}
SIZE = 300 * 1024 + 17  # several chunks, not a multiple of any of them


@dataclass
class Backend:
    """What one source needs to run the suite: where objects live and how to put them."""

    kind: str
    source: Any
    put: Callable[[str, bytes], dict[str, Any]]
    link: Callable[[str], str]
    bucket: Bucket | None = None
    server: Any = None


async def read_all(source: Any, link: str, **kw: Any) -> tuple[Any, bytes]:
    async with source.open(link, **kw) as obj:
        if obj.not_modified:
            return obj, b""
        return obj, b"".join([c async for c in obj.chunks(64 * 1024)])


async def listed(b: Backend, prefix: str) -> list[str]:
    return [name async for page in b.source.list(b.bucket, prefix) for name, _ in page]


def cloud_source(env: dict[str, str], allow_private: bool = True) -> CloudSource:
    return CloudSource(CloudSettings.from_env(env, allow_private=allow_private))


@pytest.fixture(params=["http", "s3", "gcs", "azure"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    kind = request.param
    if kind == "http":
        origin: Origin = request.getfixturevalue("origin")
        async with aiohttp.ClientSession(trust_env=False, auto_decompress=False) as session:
            def put(name: str, data: bytes) -> dict[str, Any]:
                origin.add(f"/{name}", data, gcs=True)
                return {"etag": (origin.etag(f"/{name}") or "").strip('"'),
                        "version": str(origin.generation(f"/{name}"))}
            yield Backend(kind, HttpSource(session, allow_private=True), put,
                          lambda name: origin.url_for(f"/{name}"), server=origin)
        return
    server = request.getfixturevalue(SERVER_FIXTURE[kind])
    name = server.new_bucket()
    source = cloud_source(server.env)
    try:
        yield Backend(kind, source, lambda key, data: server.put(name, key, data),
                      lambda key: f"{SCHEME[kind]}://{name}/{key}",
                      Bucket(PROVIDER[kind], name), server)
    finally:
        await source.aclose()


def need_cloud(b: Backend, why: str) -> None:
    if b.bucket is None:
        pytest.skip(f"{b.kind}: {why}")


# -- reading ---------------------------------------------------------------------------------
async def test_open_streams_the_whole_object(backend: Backend) -> None:
    data = payload("whole", SIZE)
    backend.put("dir/whole.bin", data)
    obj, got = await read_all(backend.source, backend.link("dir/whole.bin"))
    assert (obj.offset, obj.not_modified) == (0, False)
    assert got == data
    assert obj.meta.size == SIZE


async def test_meta_carries_validators(backend: Backend) -> None:
    put = backend.put("meta.bin", payload("meta", 1000))
    obj, _ = await read_all(backend.source, backend.link("meta.bin"))
    meta: SourceObject = obj.meta
    assert meta.source == SOURCE_NAME[backend.kind]
    assert meta.size == 1000
    assert meta.etag and not meta.etag.startswith('"')
    assert meta.last_modified
    if backend.kind in ("s3", "azure", "http"):
        assert meta.etag == put["etag"]
    if backend.kind != "azure":  # Azurite has no blob versioning
        assert meta.version == put["version"]
    if backend.bucket is not None:
        head = await backend.source.head(backend.link("meta.bin"))
        assert (head.size, head.etag, head.version) == (meta.size, meta.etag, meta.version)


async def test_ranged_read_resumes_while_the_object_is_unchanged(backend: Backend) -> None:
    data = payload("range", SIZE)
    backend.put("range.bin", data)
    first, _ = await read_all(backend.source, backend.link("range.bin"))
    validator = f'"{first.meta.etag}"'
    obj, got = await read_all(backend.source, backend.link("range.bin"), start=1000,
                              if_range=validator)
    assert obj.offset == 1000
    assert got == data[1000:]
    assert obj.meta.size == SIZE


async def test_ranged_read_starts_over_when_the_object_changed(backend: Backend) -> None:
    backend.put("change.bin", payload("old", SIZE))
    first, _ = await read_all(backend.source, backend.link("change.bin"))
    new = payload("new", SIZE + 5)
    backend.put("change.bin", new)
    obj, got = await read_all(backend.source, backend.link("change.bin"), start=1000,
                              if_range=f'"{first.meta.etag}"')
    assert obj.offset == 0
    assert got == new


async def test_ranged_read_past_the_end_reads_everything(backend: Backend) -> None:
    need_cloud(backend, "an http origin answers 416 to a range past the end")
    data = payload("complete", 5000)
    backend.put("complete.bin", data)
    first, _ = await read_all(backend.source, backend.link("complete.bin"))
    for _ in range(30):  # fake-gcs-server resets the connection of its 416 now and then
        obj, got = await read_all(backend.source, backend.link("complete.bin"), start=5000,
                                  if_range=f'"{first.meta.etag}"')
        assert (obj.offset, got) == (0, data)


async def test_conditional_read_reports_not_modified(backend: Backend) -> None:
    backend.put("cond.bin", payload("cond", 4096))
    first, _ = await read_all(backend.source, backend.link("cond.bin"))
    obj, got = await read_all(backend.source, backend.link("cond.bin"), stored=first.meta)
    assert obj.not_modified and got == b""

    changed = payload("cond2", 4096)
    backend.put("cond.bin", changed)
    obj, got = await read_all(backend.source, backend.link("cond.bin"), stored=first.meta)
    assert not obj.not_modified
    assert got == changed


# -- listing ---------------------------------------------------------------------------------
async def test_list_streams_every_object_under_a_prefix_in_pages(backend: Backend) -> None:
    need_cloud(backend, "http has no listing")
    names = [f"many/{i:05d}" for i in range(2500)]
    backend.server.put_many(backend.bucket.name, ((n, b"x") for n in names))  # type: ignore
    for other in ("many", "manyx/0", "other/1", "man"):
        backend.put(other, b"y")

    pages = [page async for page in backend.source.list(backend.bucket, "many/")]
    got = [name for page in pages for name, _ in page]
    assert got == names
    assert len(pages) >= 3 and all(0 < len(p) <= 1000 for p in pages)
    assert all(meta.size == 1 and meta.etag and meta.source == PROVIDER[backend.kind]
               for page in pages for _, meta in page)

    # prefixes are plain string prefixes, not whole path segments
    assert await listed(backend, "many/01") == names[1000:2000]
    top = await listed(backend, "man")
    assert top[:3] == ["man", "many", "many/00000"] and "manyx/0" in top and len(top) == 2503


# -- errors ----------------------------------------------------------------------------------
async def test_missing_object_is_a_terminal_error(backend: Backend) -> None:
    link = backend.link("no/such-object.bin")
    with pytest.raises(SourceError) as err:
        await read_all(backend.source, link)
    assert not err.value.transient
    if backend.bucket is not None:
        assert err.value.message == f"{link} does not exist"
        with pytest.raises(SourceError, match="does not exist"):
            await backend.source.head(link)


async def test_missing_bucket_is_a_clear_terminal_error(backend: Backend) -> None:
    need_cloud(backend, "http has no buckets")
    missing = Bucket(PROVIDER[backend.kind], "no-such-bucket-0451")
    link = f"{SCHEME[backend.kind]}://no-such-bucket-0451/a.bin"
    with pytest.raises(SourceError) as err:
        await read_all(backend.source, link)
    assert not err.value.transient
    assert f'bucket "{SCHEME[backend.kind]}://no-such-bucket-0451" does not exist' in \
        err.value.message
    with pytest.raises(SourceError, match="does not exist") as err:
        [p async for p in backend.source.list(missing, "")]
    assert not err.value.transient
    assert await backend.source.bucket_exists(missing) is False
    assert await backend.source.bucket_exists(backend.bucket) is True


async def test_unreachable_endpoint_is_transient_and_quick(backend: Backend) -> None:
    port = free_port()  # nothing listens there
    if backend.bucket is None:
        source, link = backend.source, f"http://127.0.0.1:{port}/a.bin"
    else:
        env = {**backend.server.env, **_endpoint_env(backend.kind, port)}
        source, link = cloud_source(env), backend.link("a.bin")
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        await read_all(source, link, timeout=3)
    assert err.value.transient
    assert time.monotonic() - t0 < 5
    assert "connect" in err.value.message
    if backend.bucket is not None:
        assert "Connection refused" in err.value.message


def _endpoint_env(kind: str, port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {"s3": {"AWS_ENDPOINT_URL": url},
            "gcs": {"STORAGE_EMULATOR_HOST": url},
            "azure": {"AZURE_STORAGE_ENDPOINT": f"{url}/devstoreaccount1"}}[kind]


async def test_loopback_endpoint_is_refused_without_allow_private(backend: Backend) -> None:
    need_cloud(backend, "the http source checks addresses in its resolver")
    source = cloud_source(backend.server.env, allow_private=False)
    with pytest.raises(SourceError, match="egress blocked") as err:
        await read_all(source, backend.link("a.bin"))
    assert not err.value.transient


# -- writing ---------------------------------------------------------------------------------
async def test_put_then_delete(backend: Backend, tmp_path: Path) -> None:
    need_cloud(backend, "http sources are read-only")
    if backend.kind == "gcs":
        pytest.skip("fake-gcs-server has no XML-API PUT (obstore's upload) except for signed URLs")
    data = payload("put", 70_000)
    (tmp_path / "f.bin").write_bytes(data)
    link = backend.link("up/f.bin")
    meta = await backend.source.put(link, tmp_path / "f.bin")
    assert meta.size == len(data) and meta.etag and meta.source == PROVIDER[backend.kind]
    _, got = await read_all(backend.source, link)
    assert got == data
    await backend.source.delete(link)
    await backend.source.delete(link)  # already gone: not an error
    with pytest.raises(SourceError, match="does not exist"):
        await backend.source.head(link)


# -- provider specifics ----------------------------------------------------------------------
async def test_azure_wrong_key_is_one_terminal_credentials_error(azure_server: Any) -> None:
    bucket = azure_server.new_bucket()
    azure_server.put(bucket, "a.bin", b"secret")
    env = {**azure_server.env, "AZURE_STORAGE_ACCOUNT_KEY": "A" * 86 + "=="}
    source = cloud_source(env)
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        await read_all(source, f"az://{bucket}/a.bin")
    assert not err.value.transient
    assert "check the credentials" in err.value.message
    assert "AZURE_STORAGE_ACCOUNT_KEY" in err.value.message
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize(("status", "transient", "words"), [
    (403, False, "check the credentials"),
    (503, True, "503"),
    (429, True, "429"),
])
async def test_s3_errors_are_not_retried_by_obstore(origin: Origin, status: int, transient: bool,
                                                    words: str) -> None:
    """An S3 endpoint that answers `status`: one request, one error; the engine decides."""
    origin.fault("/bkt/obj.bin", "status", status=status)
    source = cloud_source({"AWS_ENDPOINT_URL": origin.url, "AWS_ACCESS_KEY_ID": "k",
                           "AWS_SECRET_ACCESS_KEY": "s"})
    with pytest.raises(SourceError) as err:
        await read_all(source, "s3://bkt/obj.bin")
    assert err.value.transient is transient
    assert words in err.value.message
    assert origin.hits("/bkt/obj.bin") == 1


async def test_gcs_from_service_account_file_alone(gcs_server: Any) -> None:
    bucket = gcs_server.new_bucket()
    gcs_server.put(bucket, "sa.bin", b"from the file")
    env = {"GOOGLE_APPLICATION_CREDENTIALS": gcs_server.env["GOOGLE_APPLICATION_CREDENTIALS"]}
    _, got = await read_all(cloud_source(env), f"gs://{bucket}/sa.bin")
    assert got == b"from the file"


async def test_gcs_from_emulator_host_alone(gcs_server: Any) -> None:
    bucket = gcs_server.new_bucket()
    gcs_server.put(bucket, "em.bin", b"from the emulator host")
    env = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint.removeprefix("http://")}
    _, got = await read_all(cloud_source(env), f"gs://{bucket}/em.bin")
    assert got == b"from the emulator host"


async def test_azure_from_connection_string(azure_server: Any) -> None:
    bucket = azure_server.new_bucket()
    azure_server.put(bucket, "cs.bin", b"from a connection string")
    env = {"AZURE_STORAGE_CONNECTION_STRING":
           connection_string(azure_server.env["AZURE_STORAGE_ENDPOINT"], AZURITE_KEY)}
    _, got = await read_all(cloud_source(env), f"az://{bucket}/cs.bin")
    assert got == b"from a connection string"


async def test_anonymous_s3_sends_unsigned_requests(origin: Origin) -> None:
    origin.add("/pub/a.bin", b"public")
    source = cloud_source({"AWS_ENDPOINT_URL": origin.url})
    _, got = await read_all(source, "s3://pub/a.bin")
    assert got == b"public"
    assert "Authorization" not in origin.requests("/pub/a.bin")[-1].headers


async def test_azure_without_an_account_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="AZURE_STORAGE_ACCOUNT_NAME") as err:
        await read_all(cloud_source({}), "az://c/a.bin")
    assert not err.value.transient


def test_settings_read_the_standard_environment(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws/credentials").write_text(
        "[dev]\naws_access_key_id = AKID\naws_secret_access_key = SECRET\n")
    (tmp_path / ".aws/config").write_text("[profile dev]\nregion = eu-west-3\n")
    s = CloudSettings.from_env({"HOME": str(tmp_path), "AWS_PROFILE": "dev"})
    assert (s.aws_access_key_id, s.aws_secret_access_key, s.aws_region) == \
        ("AKID", "SECRET", "eu-west-3")
    assert "SECRET" not in repr(s)
    s = CloudSettings.from_env({"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B",
                                "AWS_DEFAULT_REGION": "us-west-2",
                                "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000",
                                "STORAGE_EMULATOR_HOST": "127.0.0.1:4443",
                                "AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"},
                               allow_private=True)
    assert (s.aws_region, s.aws_endpoint, s.gcs_base_url) == \
        ("us-west-2", "http://127.0.0.1:9000", "http://127.0.0.1:4443")
    assert (s.azure_account, s.azure_endpoint) == \
        ("devstoreaccount1", "http://127.0.0.1:10000/devstoreaccount1")
    assert s.allow_private


async def test_open_rejects_a_malformed_link() -> None:
    with pytest.raises(SourceError, match="invalid cloud link") as err:
        await read_all(cloud_source({}), "s3://")
    assert not err.value.transient


async def test_names_with_spaces_and_unicode(backend: Backend) -> None:
    names = ["odd/sp ace.bin", "odd/ümlaut-日本.bin", "odd/pct%41.bin", "odd/a+b=c.bin"]
    for n in names:
        backend.put(n, n.encode())
    for n in names:
        _, got = await read_all(backend.source, backend.link(n))
        assert got == n.encode()
    if backend.bucket is not None:
        assert await listed(backend, "odd/") == sorted(names)
        assert await listed(backend, "odd/sp ") == ["odd/sp ace.bin"]
