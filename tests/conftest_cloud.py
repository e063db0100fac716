"""Cloud emulator fixtures (a pytest plugin: `pytest_plugins = ["conftest_cloud"]` in conftest).

    def test_x(s3_server, gcs_server, azure_server):
        bucket = s3_server.new_bucket()          # a fresh, versioned bucket name
        s3_server.put(bucket, "a.bin", b"...")
        env = s3_server.env                     # give these to a node process

One server per session each; every test makes its own buckets. A server that cannot run here
(binary not installed) skips the tests that need it, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_servers import Azurite, Emulator, FakeGCS, MotoS3, Unavailable


def _serve(kind: type[Emulator], tmp: Path) -> Iterator[Emulator]:
    try:
        server = kind.start(tmp)  # type: ignore[attr-defined]
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto server (S3) on 127.0.0.1; `.env`: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_REGION, AWS_ENDPOINT_URL."""
    yield from _serve(MotoS3, tmp_path_factory.mktemp("moto"))  # type: ignore[misc]


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGCS]:
    """fake-gcs-server on 127.0.0.1; `.env`: GOOGLE_APPLICATION_CREDENTIALS (a
    service-account file with gcs_base_url + disable_oauth) and STORAGE_EMULATOR_HOST."""
    yield from _serve(FakeGCS, tmp_path_factory.mktemp("fake-gcs"))  # type: ignore[misc]


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite (blob) on 127.0.0.1; `.env`: AZURE_STORAGE_ACCOUNT_NAME,
    AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_ENDPOINT."""
    yield from _serve(Azurite, tmp_path_factory.mktemp("azurite"))  # type: ignore[misc]
