"""Small records shared by every layer: buckets and the attributes of a stored object."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aisdl.errors import BadRequest

# Provider as AIS names it internally → the scheme it is written with.
PROVIDER_SCHEME = {"ais": "ais", "aws": "s3", "gcp": "gs", "azure": "az", "oci": "oc"}
# Every scheme or alias a user may type → the provider.
SCHEME_PROVIDER = {
    "ais": "ais", "aws": "aws", "s3": "aws", "gcp": "gcp", "gs": "gcp",
    "azure": "azure", "az": "azure", "oci": "oci", "oc": "oci",
}
REMOTE_PROVIDERS = ("aws", "gcp", "azure", "oci")
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def normalize_provider(p: str | None) -> str:
    p = (p or "ais").lower()
    if p not in SCHEME_PROVIDER:
        raise BadRequest(f"invalid backend provider {p!r}", tcode="ErrInvalidBackendProvider")
    return SCHEME_PROVIDER[p]


def check_bucket_name(name: str) -> str:
    if not _BUCKET_NAME.match(name) or name.startswith(".") or ".." in name:
        raise BadRequest(
            f"bucket name {name!r} is invalid: use 1-64 letters, digits, '-', '_' or '.'"
            " (not starting with '.')"
        )
    return name


@dataclass(frozen=True, order=True)
class Bucket:
    provider: str
    name: str

    @classmethod
    def of(cls, name: str, provider: str | None = "ais") -> Bucket:
        return cls(normalize_provider(provider), check_bucket_name(name))

    @property
    def cname(self) -> str:
        """`ais://name`, `gs://name` — how AIS prints a bucket."""
        return f"{PROVIDER_SCHEME[self.provider]}://{self.name}"

    @property
    def is_remote(self) -> bool:
        return self.provider in REMOTE_PROVIDERS

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "provider": self.provider,
                "namespace": {"uuid": "", "name": ""}}


@dataclass
class ObjectAttrs:
    """What the catalog knows of one stored object.

    `custom` holds the source's validators as received (`source`, `link`, `ETag`,
    `LastModified`, `src_version`, `md5`, `crc32c`); a missing key means the source sent none.
    """

    name: str
    size: int
    version: str = "1"
    cksum_type: str = "xxhash2"
    cksum: str = ""
    atime_ns: int = 0
    custom: dict[str, str] = field(default_factory=dict)
