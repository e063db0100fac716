"""Which source reads a link: picked by scheme, so the engine never branches on one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aisdl.config import TransferLimits
from aisdl.sources.http import HttpSource

if TYPE_CHECKING:
    from aisdl.config import NodeConfig
    from aisdl.engine.curl import CurlEngine
    from aisdl.sources.cloud import CloudSource

CLOUD_SCHEMES = ("s3", "gs", "az")
READ_BUFFER = 1 << 20  # body bytes a connection buffers before it pauses reading: 64 KiB (the
                       # default) pauses and resumes a fast socket every few reads


class Sources:
    def __init__(self, http: HttpSource, cloud: CloudSource, curl: CurlEngine | None = None,
                 limits: TransferLimits | None = None) -> None:
        self.http = http
        self.cloud = cloud
        self.curl = curl  # plain http(s) GETs on libcurl, when it is there
        self.limits = limits or TransferLimits()  # what every transfer keeps to

    def for_link(self, link: str) -> Any:
        scheme = link.split("://", 1)[0].lower()
        return self.cloud if scheme in CLOUD_SCHEMES else self.http

    @classmethod
    def open(cls, config: NodeConfig, connections: int) -> Sources:
        """Every source of a node (or of one fetch worker, with its share of `connections`);
        obstore, aiohttp and pycurl load only here, inside the node's processes."""
        import aiohttp

        from aisdl.engine.curl import CurlEngine, user_agent
        from aisdl.engine.egress import EgressResolver
        from aisdl.sources.cloud import CloudSource

        allow_private = config.may_fetch_private
        per_host = min(config.max_per_host, connections)  # 0: no cap below `connections`
        connector = aiohttp.TCPConnector(
            limit=connections, limit_per_host=per_host,
            resolver=EgressResolver(allow_private), ttl_dns_cache=60)
        # Bodies are stored as sent, so never ask for a compressed one (libcurl does not either)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                        trust_env=False, read_bufsize=READ_BUFFER,
                                        skip_auto_headers=("Accept-Encoding",),
                                        headers={"User-Agent": user_agent()})
        limits = config.transfer_limits
        curl = CurlEngine(connections, per_host, allow_private, limits)
        return cls(HttpSource(session, allow_private), CloudSource(config.cloud), curl, limits)

    async def aclose(self) -> None:
        if self.curl is not None:
            self.curl.close()
        await self.http.session.close()
        await self.cloud.aclose()
