"""A self-signed certificate made in the test, and a node that serves HTTPS with it."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Node


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (its own CA) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aisdl test node")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "node.crt", directory / "node.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsNode(Node):
    """A node serving HTTPS with `cert`/`key`; healthy once it answers over TLS."""

    def __init__(self, port: int, home: Path, log_path: Path, cert: Path, key: Path,
                 more_args: tuple[str, ...] = ()) -> None:
        super().__init__(port, home, log_path,
                         extra_args=("--tls-cert", str(cert), "--tls-key", str(key), *more_args))
        self.endpoint = f"https://127.0.0.1:{port}"
        self.cert = cert

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"the node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with requests.Session() as s:
                    s.trust_env = False
                    if s.get(f"{self.endpoint}/v1/health", verify=str(self.cert),
                             timeout=0.5).status_code == 200:
                        return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        pytest.fail(f"the node did not answer over HTTPS in {timeout}s:\n{self.log()}")
