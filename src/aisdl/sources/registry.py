"""Which source reads a link: picked by scheme, so the engine never branches on one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aisdl.sources.http import HttpSource

if TYPE_CHECKING:
    from aisdl.sources.cloud import CloudSource

CLOUD_SCHEMES = ("s3", "gs", "az")


class Sources:
    def __init__(self, http: HttpSource, cloud: CloudSource) -> None:
        self.http = http
        self.cloud = cloud

    def for_link(self, link: str) -> Any:
        scheme = link.split("://", 1)[0].lower()
        return self.cloud if scheme in CLOUD_SCHEMES else self.http
