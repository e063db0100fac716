"""The egress rule: which addresses a node may fetch from, on every path."""

from __future__ import annotations

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
