"""HTTPS: `ais serve --tls-cert/--tls-key`, the CLI's `AIS_CLIENT_CA`/`AIS_SKIP_VERIFY_CRT`, and
AIStore's SDK against an HTTPS node (its PUT probe is answered by a redirect)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from conftest import Ais
from helpers import free_port as _free_port
from helpers_tls import TlsNode, make_cert


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory,
             certs: tuple[Path, Path]) -> Iterator[TlsNode]:
    base = tmp_path_factory.mktemp("tlsnode")
    n = TlsNode(_free_port(), base / "home", base / "node.log", *certs)
    n.start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def tls_ais(tls_node: TlsNode, tmp_path: Path) -> Ais:
    home = tmp_path / "cli-home"
    home.mkdir()
    cli = Ais(tls_node, home, tmp_path)
    for var in ("AIS_CLIENT_CA", "AIS_SKIP_VERIFY_CRT", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        cli.env.pop(var, None)
    return cli


def test_cli_with_client_ca(tls_ais: Ais, tls_node: TlsNode, tmp_path: Path) -> None:
    env = {"AIS_CLIENT_CA": str(tls_node.cert)}
    tls_ais("bucket", "create", "ais://tlsca", env=env)
    src = tmp_path / "f.txt"
    src.write_text("over tls\n")
    tls_ais("put", str(src), "ais://tlsca/f.txt", env=env)
    assert tls_ais("get", "ais://tlsca/f.txt", "-", env=env).stdout == "over tls\n"
    assert "f.txt" in tls_ais("ls", "ais://tlsca", env=env).stdout
    tls_ais("object", "cp", "ais://tlsca/f.txt", "ais://tlsca/g.txt", env=env)
    assert tls_ais("get", "ais://tlsca/g.txt", "-", env=env).stdout == "over tls\n"
    big, empty = tmp_path / "big.bin", tmp_path / "empty.bin"
    big.write_bytes(os.urandom(3 << 20) * 2)
    empty.write_bytes(b"")
    tls_ais("put", str(big), "ais://tlsca/big.bin", env=env)
    tls_ais("put", str(empty), "ais://tlsca/empty.bin", env=env)
    tls_ais("get", "ais://tlsca/big.bin", str(tmp_path / "back.bin"), env=env)
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    assert tls_ais("get", "ais://tlsca/empty.bin", "-", env=env).stdout == ""


def test_cli_skip_verify(tls_ais: Ais) -> None:
    tls_ais("bucket", "create", "ais://tlsskip", env={"AIS_SKIP_VERIFY_CRT": "true"})
    assert "tlsskip" in tls_ais("ls", env={"AIS_SKIP_VERIFY_CRT": "true"}).stdout


def test_cli_without_trust_gets_one_line_certificate_error(tls_ais: Ais) -> None:
    result = tls_ais("ls", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert "certificate" in lines[0].lower()
    assert "AIS_CLIENT_CA" in lines[0]
    # a wrong CA file is refused the same way, and a missing one is named
    result = tls_ais("ls", check=False, env={"AIS_CLIENT_CA": "/nonexistent/ca.pem"})
    assert result.returncode == 2 and "/nonexistent/ca.pem" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_https_node_serves_no_plain_http(tls_node: TlsNode) -> None:
    with requests.Session() as s:
        s.trust_env = False
        plain = f"http://127.0.0.1:{tls_node.port}/v1/health"
        with pytest.raises(requests.ConnectionError):
            s.get(plain, timeout=5)
    result = subprocess.run([sys.executable, "-m", "aisdl", "ls"], capture_output=True,
                            text=True, timeout=60,
                            env={**os.environ, "AIS_ENDPOINT": plain.removesuffix("/v1/health")})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_smap_says_https(tls_node: TlsNode) -> None:
    with requests.Session() as s:
        s.trust_env = False
        smap = s.get(f"{tls_node.endpoint}/v1/daemon", params={"what": "smap"},
                     verify=str(tls_node.cert), timeout=5).json()
    assert smap["proxy_si"]["public_net"]["direct_url"] == tls_node.endpoint


@pytest.mark.filterwarnings("ignore:Skipping SSL certificate verification")
@pytest.mark.parametrize("trust", ["ca_cert", "skip_verify"])
def test_sdk_over_https(tls_node: TlsNode, trust: str, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    from aistore.sdk import Client as SdkClient

    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AIS_AUTHN_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    kwargs = {"ca_cert": str(tls_node.cert)} if trust == "ca_cert" else {"skip_verify": True}
    client = SdkClient(tls_node.endpoint, timeout=(5, 10), **kwargs)  # type: ignore[arg-type]
    bck = client.bucket(f"sdk-{trust.replace('_', '')}")
    bck.create(exist_ok=True)
    body = b"x" * 100_000
    bck.object("a/b.bin").get_writer().put_content(body)
    assert bck.object("a/b.bin").get_reader().read_all() == body
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 << 20))
    bck.object("big.bin").get_writer().put_file(str(big))
    assert bck.object("big.bin").get_reader().read_all() == big.read_bytes()
    assert [e.name for e in bck.list_all_objects()] == ["a/b.bin", "big.bin"]
    assert client.cluster().is_ready()


@pytest.mark.parametrize("which", ["cert", "key"])
def test_serve_with_missing_tls_file_is_one_line_error(tmp_path: Path,
                                                       certs: tuple[Path, Path],
                                                       which: str) -> None:
    cert, key = certs
    args = {"cert": (tmp_path / "nope.crt", key), "key": (cert, tmp_path / "nope.key")}[which]
    proc = subprocess.run(
        [sys.executable, "-m", "aisdl", "serve", "--port", str(_free_port()),
         "--home", str(tmp_path / "home"), "--tls-cert", str(args[0]), "--tls-key", str(args[1])],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert "nope" in lines[0]


def test_serve_with_a_key_that_is_not_the_certificates(tmp_path: Path,
                                                       certs: tuple[Path, Path]) -> None:
    _, other_key = make_cert(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "aisdl", "serve", "--port", str(_free_port()),
         "--home", str(tmp_path / "home"), "--tls-cert", str(certs[0]),
         "--tls-key", str(other_key)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr


def test_serve_with_an_encrypted_key_says_so_instead_of_asking(tmp_path: Path,
                                                               certs: tuple[Path, Path]) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    cert, key = certs
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(load_pem_private_key(key.read_bytes(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    proc = subprocess.run(
        [sys.executable, "-m", "aisdl", "serve", "--port", str(_free_port()),
         "--home", str(tmp_path / "home"), "--tls-cert", str(cert), "--tls-key", str(encrypted)],
        capture_output=True, text=True, timeout=60, input="")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "encrypted" in lines[0], proc.stderr


def test_serve_needs_both_cert_and_key(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aisdl", "serve", "--port", str(_free_port()),
         "--home", str(tmp_path / "home"), "--tls-cert", str(certs[0])],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--tls-key" in proc.stderr


def test_no_background_node_for_an_https_endpoint(tmp_path: Path) -> None:
    """A background node serves plain HTTP: an `https://` endpoint with nothing there is an
    error that names it, and no node is started."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIS")}
    env.update(AIS_ENDPOINT=f"https://127.0.0.1:{port}", HOME=str(tmp_path),
               AISDL_HOME=str(tmp_path / ".aisdl"))
    proc = subprocess.run([sys.executable, "-m", "aisdl", "ls"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"https://127.0.0.1:{port}" in lines[0], proc.stderr
    assert "Started a background node" not in proc.stderr
    assert not (tmp_path / ".aisdl" / "node.log").exists()
