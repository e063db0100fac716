"""Node settings: small frozen values, read from flags and the environment once, in node.py."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from aisdl.sources.cloud_settings import CloudSettings


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6           # total tries of one file (first + retries)
    base_delay: float = 0.5     # seconds before the first retry; doubles each time, with jitter
    max_delay: float = 30.0     # cap for one backoff sleep, and for a server's Retry-After


@dataclass(frozen=True)
class TransferLimits:
    """What every transfer of a node must keep to, whatever its job asks (see NodeConfig)."""

    stall_timeout: float = 60.0  # seconds without a byte (0: only the job's own timeout)
    min_rate: int = 1024         # bytes/s over `rate_window` (0: no floor)
    rate_window: float = 60.0
    max_object_size: int = 5 << 40  # bytes (0: no limit)

    def stall_for(self, job_timeout: float | None) -> float | None:
        """The silence a transfer is allowed: the node's window, or the job's own timeout
        where that is shorter; None: no limit at all."""
        windows = [w for w in (self.stall_timeout, job_timeout) if w]
        return min(windows) if windows else None


def default_home() -> Path:
    """`$AISDL_HOME`, else `~/.aisdl`: where a background node keeps its data and log."""
    env = os.environ.get("AISDL_HOME")
    return Path(env) if env else Path.home() / ".aisdl"


MAX_DEFAULT_FETCH_PROCS = 8  # each one drives thousands of files/s; more only cost memory


def default_fetch_procs() -> int:
    """One fetch worker process per core, up to 8; a single core fetches in the node process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cores, MAX_DEFAULT_FETCH_PROCS) if cores and cores > 1 else 0


@dataclass(frozen=True)
class NodeConfig:
    home: Path
    host: str = "127.0.0.1"
    port: int = 8080
    mountpaths: tuple[Path, ...] = ()
    allow_private_egress: bool = False
    allowed_hosts: tuple[str, ...] = ()  # more names users reach the node by (api/browser.py)
    max_connections: int = 64        # node-wide concurrent source connections
    max_per_host: int = 0            # 0 = no per-host cap below max_connections
    # Every transfer, whatever its job asks: no byte for `stall_timeout` seconds cuts it (it is
    # retried from its byte); slower than `min_rate` bytes/s over `rate_window` seconds ends it;
    # a body beyond `max_object_size` bytes ends it (0: no limit).
    stall_timeout: float = 60.0
    min_rate: int = 1024
    rate_window: float = 60.0
    max_object_size: int = 5 << 40
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    cloud: CloudSettings = field(default_factory=CloudSettings)
    event_loop: str = "asyncio"      # or "uvloop"
    fetch_procs: int = field(default_factory=default_fetch_procs)
    scheduler: str = ""              # a Dask scheduler's address: chunks run on its workers
    # `--no-auth`: the user accepts that anyone who reaches a non-loopback address controls the node
    no_auth: bool = False
    # HTTPS only when both are set (PEM files: the certificate chain, its private key)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Token checking (api/auth.py): "HS256" with a shared secret, "RS256" with the issuer's
    # public key (PEM); "" checks nothing.
    auth_algorithm: str = ""
    auth_key: bytes = field(default=b"", repr=False)

    @property
    def transfer_limits(self) -> TransferLimits:
        return TransferLimits(self.stall_timeout, self.min_rate, self.rate_window,
                              self.max_object_size)

    @property
    def endpoint(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def loopback_only(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    @property
    def auth_enabled(self) -> bool:
        """Whether the API asks for tokens (`--auth-secret` or `--auth-public-key`)."""
        return bool(self.auth_algorithm)

    @property
    def may_fetch_private(self) -> bool:
        """Loopback and private addresses are fair sources for a loopback-only node."""
        return self.loopback_only or self.allow_private_egress

    @property
    def db_path(self) -> Path:
        return self.home / "aisdl.db"

    @property
    def data_dirs(self) -> tuple[Path, ...]:
        return self.mountpaths or (self.home / "data",)
