"""The egress rule: which addresses a node may fetch from, on every path."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aisdl.engine.egress import blocked_name, blocked_reason

# (address, refused for a node that may not fetch private addresses, refused for one that may)
ALWAYS_REFUSED = [
    # cloud metadata, by every spelling
    "169.254.169.254", "169.254.170.2", "169.254.169.123", "100.100.100.200", "192.0.0.192",
    "168.63.129.16", "fd00:ec2::254", "::ffff:169.254.169.254", "::ffff:a9fe:a9fe",
    "64:ff9b::a9fe:a9fe", "64:ff9b::100.100.100.200", "2002:a9fe:a9fe::1",
    "::ffff:100.100.100.200", "fd00:ec2::254%eth0",
    # IANA special-purpose, IPv4
    "0.0.0.0", "0.1.2.3", "169.254.1.1", "192.0.0.9", "192.0.2.1", "198.51.100.7",
    "203.0.113.9", "198.18.0.1", "198.19.255.255", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255", "192.88.99.1",
    # IANA special-purpose, IPv6
    "::", "fe80::1", "fe80::1%lo", "fec0::1", "feff::1", "ff02::1", "2001:db8::1", "3fff::1",
    "100::1", "2001:2::1", "2001:10::1", "64:ff9b:1::a01:101", "::a9fe:a9fe", "5f00::1",
    # a blocked IPv4 inside 6to4 / Teredo / NAT64
    "2002:c000:0201::1", "64:ff9b::c000:201", "2001:0:4136:e378:8000:63bf:5601:5601",
]
PRIVATE = [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "100.64.0.1", "100.127.255.254", "::1", "fc00::1", "fd12:3456::1", "::ffff:127.0.0.1",
    "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:0a00:0001::1",
]
PUBLIC = [
    "8.8.8.8", "1.1.1.1", "52.216.0.1", "100.63.255.255", "100.128.0.1", "172.32.0.1",
    "2606:4700::1111", "2a00:1450:4001::1", "::ffff:8.8.8.8", "64:ff9b::808:808",
    "2002:0808:0808::1", "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
]


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
def test_special_and_metadata_addresses_are_always_refused(address: str) -> None:
    assert blocked_reason(address, allow_private=False) is not None
    assert blocked_reason(address, allow_private=True) is not None


@pytest.mark.parametrize("address", PRIVATE)
def test_loopback_and_private_addresses_need_permission(address: str) -> None:
    assert "--allow-private-egress" in (blocked_reason(address, allow_private=False) or "")
    assert blocked_reason(address, allow_private=True) is None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert blocked_reason(address, allow_private=False) is None
    assert blocked_reason(address, allow_private=True) is None


def test_metadata_reasons_say_so() -> None:
    for address in ("169.254.169.254", "100.100.100.200", "::ffff:100.100.100.200",
                    "fd00:ec2::254", "192.0.0.192"):
        assert blocked_reason(address, allow_private=True) == "cloud metadata"


@pytest.mark.parametrize("name", ["metadata.google.internal", "METADATA.google.internal.",
                                  "metadata.goog", "metadata"])
def test_metadata_names_are_refused(name: str) -> None:
    assert blocked_name(name) == "cloud metadata"


def test_ordinary_names_are_not_refused_by_name() -> None:
    assert blocked_name("storage.googleapis.com") is None
    assert blocked_name("s3.amazonaws.com") is None


# -- the cloud path, probed inside a network namespace that has only loopback -----------------
# Nothing here can leave the machine: the probe runs under `unshare -rn` (a new network
# namespace with only `lo`), and strace records every connect() it makes.
PROBE = r'''
import asyncio, sys
from pathlib import Path
from aiohttp import web
from aisdl.errors import SourceError
from aisdl.sources.cloud import CloudSource
from aisdl.sources.cloud_settings import CloudSettings

async def main(kind, mode, target, hosts):
    async def answer(request):
        if mode == "redirect":
            raise web.HTTPFound(target)
        # Connection: close, so that each request needs a new (checked) connection
        return web.Response(body=b"x", headers={
            "ETag": '"e"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
            "Connection": "close"})
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    host = "store.rebind.test" if mode == "rebind" else "127.0.0.1"
    url = f"http://{host}:{port}"
    env = {"s3": {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "k",
                  "AWS_SECRET_ACCESS_KEY": "s"},
           "gcs": {"STORAGE_EMULATOR_HOST": url},
           "azure": {"AZURE_STORAGE_ACCOUNT_NAME": "a", "AZURE_STORAGE_ENDPOINT": url}}[kind]
    source = CloudSource(CloudSettings.from_env(env, allow_private=True))
    link = {"s3": "s3://b/k", "gcs": "gs://b/k", "azure": "az://b/k"}[kind]
    if mode == "rebind":  # checked while it names loopback, then re-pointed at the target
        Path(hosts).write_text(f"127.0.0.1 {host}\n")
        await source.head(link)
        Path(hosts).write_text(f"{target} {host}\n")
        await asyncio.sleep(0.1)
    try:
        async with source.open(link, timeout=3) as obj:
            print("READ", obj.meta)
    except SourceError as exc:
        print("ERROR", exc.message)
    await source.aclose()

asyncio.run(main(*sys.argv[1:]))
'''


def _probe(tmp_path: Path, kind: str, mode: str, target: str) -> tuple[str, list[str]]:
    """Run the probe in a loopback-only namespace: (its output, the non-loopback connects)."""
    if shutil.which("unshare") is None or shutil.which("strace") is None:
        pytest.skip("needs unshare and strace")
    if subprocess.run(["unshare", "-rnm", "true"], capture_output=True).returncode:
        pytest.skip("cannot make a user + network namespace here")
    (tmp_path / "probe.py").write_text(PROBE)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    trace = tmp_path / "trace"
    script = (f"ip link set lo up && mount --bind {hosts} /etc/hosts && "
              f"exec strace -f -qq -e trace=connect -o {trace} {sys.executable} "
              f"{tmp_path / 'probe.py'} {kind} {mode} {target} {hosts}")
    r = subprocess.run(["unshare", "-rnm", "bash", "-c", script], capture_output=True,
                       text=True, timeout=120)
    connects = [line for line in trace.read_text().splitlines()
                if "connect(" in line and "AF_INET" in line
                and "127.0.0.1" not in line and '"::1"' not in line]
    return r.stdout + r.stderr, connects


@pytest.mark.parametrize(("kind", "target", "refused"), [
    ("s3", "http://169.254.169.254/latest/meta-data/", "169.254.169.254 (cloud metadata)"),
    ("s3", "https://169.254.169.254/latest/meta-data/", "169.254.169.254 (cloud metadata)"),
    ("s3", "http://100.100.100.200/latest/meta-data/", "100.100.100.200 (cloud metadata)"),
    ("s3", "http://[fd00:ec2::254]/latest/meta-data/", "fd00:ec2::254 (cloud metadata)"),
    ("gcs", "http://169.254.169.254/computeMetadata/v1/", "169.254.169.254 (cloud metadata)"),
    ("gcs", "http://metadata.google.internal/computeMetadata/v1/",
     "metadata.google.internal (cloud metadata)"),
    ("azure", "http://169.254.169.254/metadata/instance", "169.254.169.254 (cloud metadata)"),
    ("s3", "http://[fec0::1]/", "fec0::1 (site-local)"),
])
def test_a_cloud_endpoint_cannot_redirect_to_metadata(tmp_path: Path, kind: str, target: str,
                                                      refused: str) -> None:
    """An S3 endpoint (a GCS emulator, STORAGE_EMULATOR_HOST; an Azure endpoint) answering 302
    to a metadata address: the read fails as refused egress, and no connection to it (nor to
    any other address but loopback) is even attempted."""
    out, connects = _probe(tmp_path, kind, "redirect", target)
    assert f"ERROR dload: egress blocked: {refused}" in out, out
    assert connects == []


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_a_cloud_endpoint_name_rebound_to_metadata_is_refused(tmp_path: Path,
                                                              kind: str) -> None:
    """The endpoint's name resolved to loopback when it was first checked and used, then to the
    metadata address: the next connection is checked again and refused."""
    out, connects = _probe(tmp_path, kind, "rebind", "169.254.169.254")
    assert "ERROR dload: egress blocked: 169.254.169.254 (cloud metadata)" in out, out
    assert connects == []
