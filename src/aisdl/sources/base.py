"""What every source (http, and later s3/gcs/azure/ais) gives the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SourceObject:
    """Validators of one object as its source describes it. None = the source did not say."""

    source: str = "web"            # web, gcp, aws, azure, ais: where the bytes came from
    size: int | None = None
    etag: str | None = None        # without quotes
    last_modified: str | None = None
    version: str | None = None     # x-goog-generation, x-amz-version-id, ...
    md5: str | None = None         # hex
    crc32c: str | None = None      # hex
    sha256: str | None = None      # hex (the Hugging Face Hub publishes it for LFS files)

    def custom(self, link: str) -> dict[str, str]:
        """The custom metadata stored with the object (AIS names where AIS has one)."""
        md = {"source": self.source, "link": link}
        for key, value in (("ETag", self.etag), ("LastModified", self.last_modified),
                           ("src_version", self.version), ("md5", self.md5),
                           ("crc32c", self.crc32c), ("sha256", self.sha256)):
            if value:
                md[key] = value
        if self.size is not None:
            md["src_size"] = str(self.size)
        return md

    @classmethod
    def from_custom(cls, md: dict[str, str]) -> SourceObject:
        size = md.get("src_size")
        return cls(source=md.get("source", ""), size=int(size) if size else None,
                   etag=md.get("ETag"), last_modified=md.get("LastModified"),
                   version=md.get("src_version"), md5=md.get("md5"), crc32c=md.get("crc32c"),
                   sha256=md.get("sha256"))

    def same_as(self, other: SourceObject) -> bool:
        """True when both describe the same bytes: nothing comparable differs and at least one
        strong validator (version, ETag, MD5, CRC32C, SHA-256), or Last-Modified with size,
        matches."""
        if self.size is not None and other.size is not None and self.size != other.size:
            return False
        strong = 0
        for mine, theirs in ((self.version, other.version), (self.etag, other.etag),
                             (self.md5, other.md5), (self.crc32c, other.crc32c),
                             (self.sha256, other.sha256)):
            if mine and theirs:
                if mine != theirs:
                    return False
                strong += 1
        if strong:
            return True
        return bool(self.last_modified and self.last_modified == other.last_modified
                    and self.size is not None and self.size == other.size)


class OpenedObject(Protocol):
    """An open read of an object, from byte `offset` (0 unless a ranged resume was honoured)."""

    meta: SourceObject
    offset: int
    not_modified: bool   # the source confirmed our stored copy is current (e.g. HTTP 304)

    def chunks(self, size: int) -> AsyncIterator[bytes]: ...
