"""Per-job limits: a smooth token bucket for bytes per hour."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """Bytes flow at `rate` per second on average; at most `burst` may go at once.

    Debt is allowed (a read may take more than is available); the next take waits it off, so
    the long-run rate is exact whatever the read sizes.
    """

    def __init__(self, bytes_per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = bytes_per_hour / 3600.0
        self.burst = max(1.0, min(self.rate, float(1 << 20)))  # one second's worth, ≤ 1 MiB
        self._tokens = self.burst
        self._clock = clock
        self._stamp = clock()

    def __repr__(self) -> str:
        return f"<TokenBucket {self.rate:.1f} B/s burst={self.burst:.0f} tokens={self._tokens:.0f}>"

    @property
    def chunk_size(self) -> int:
        """How many bytes a reader should ask for at a time to keep the flow smooth."""
        return max(1, int(self.burst // 4) or 1)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def wait_ready(self) -> None:
        """Wait until there is no debt."""
        self._refill()
        while self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / self.rate)
            self._refill()

    def charge(self, n: int) -> None:
        self._refill()
        self._tokens -= n
