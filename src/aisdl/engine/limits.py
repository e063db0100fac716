"""Limits on transfers: a smooth token bucket for a job's bytes per hour, and the node's slots
shared fairly by jobs and politely by source hosts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from aisdl.engine.hostlimit import START, HostLimit

log = logging.getLogger("aisdl.engine")
MAX_HOSTS = 4096  # hosts whose limits are remembered; idle ones are forgotten beyond that


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


# A throttled job's rate bounds it, not its concurrency: a few transfers keep its bytes flowing,
# and each one holds a slot of the node for as long as it trickles.
THROTTLED_CONNECTIONS = 4


@dataclass(slots=True)
class Ticket:
    """One slot held by a transfer; `strained` is what the transfer showed of its host (see
    HostLimit.end), set before the slot is given back."""

    job: Hashable
    host: str
    epoch: int
    strained: bool | None = None

    def answered(self) -> None:
        """The transfer ended with an answer of its host: no overload seen means it kept up."""
        if self.strained is None:
            self.strained = False


class _Held:
    """A slot held for the length of an `async with` (a plain class: this runs per transfer,
    and a generator-based context manager costs several times as much)."""

    __slots__ = ("host", "job", "slots", "ticket")

    def __init__(self, slots: FairSlots, job: Hashable, host: str) -> None:
        self.slots, self.job, self.host = slots, job, host

    async def __aenter__(self) -> Ticket:
        self.ticket = await self.slots.acquire(self.job, self.host)
        return self.ticket

    async def __aexit__(self, *exc: object) -> None:
        self.slots.release(self.ticket)


class FairSlots:
    """The node's transfer slots (`--max-conns`), shared fairly by jobs and politely by hosts.

    A freed slot goes to the job holding the fewest (the one served longest ago among equals),
    whatever the number of its workers: a job with 64 workers waiting cannot starve one with 4.
    A job only gets a slot for a host whose adaptive limit has room, so waiting for a busy host
    holds no slot of the node.
    """

    def __init__(self, total: int, per_host: int, host_start: int = START,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(1, total)
        self.per_host = max(1, min(per_host, self.total))
        self.host_start = max(1, host_start)
        self.used = 0
        self.hosts: dict[str, HostLimit] = {}
        self.held: dict[Hashable, int] = {}
        self._waiting: dict[Hashable, dict[str, deque[asyncio.Future[Ticket]]]] = {}
        self._served: dict[Hashable, int] = {}
        self._turns = itertools.count()
        self._clock = clock
        # Told when a host's limit halves here: processes that share a host halve together,
        # or each would probe the host on its own (twice the overload for two of them).
        self.on_back_off: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return (f"<FairSlots {self.used}/{self.total} jobs={len(self.held)} "
                f"waiting={sum(len(q) for h in self._waiting.values() for q in h.values())}>")

    def host(self, host: str) -> HostLimit:
        limit = self.hosts.get(host)
        if limit is None:
            if len(self.hosts) >= MAX_HOSTS:  # forget what idle hosts taught us
                for key in [k for k, v in self.hosts.items() if not v.in_flight]:
                    del self.hosts[key]
            limit = self.hosts[host] = HostLimit(self.per_host, start=self.host_start,
                                                 clock=self._clock)
        return limit

    def take(self, job: Hashable, host: str) -> _Held:
        """`async with slots.take(job, host) as ticket:` holds one slot for a transfer of
        `job` from `host`."""
        return _Held(self, job, host)

    async def acquire(self, job: Hashable, host: str) -> Ticket:
        limit = self.host(host)
        if not self._waiting and self.used < self.total and limit.has_room():
            return self._start(job, host, limit)  # nobody waits: no turn to take
        waiter: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job, {}).setdefault(host, deque()).append(waiter)
        self._dispatch()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted, then cancelled
                self.release(waiter.result())
            else:
                self._forget(job, host, waiter)
            raise

    def try_acquire(self, job: Hashable, host: str, asked: int = 0) -> Ticket | None:
        """A slot now, or None: for a blob's extra parts, which never wait (and never take a
        turn from a transfer that does). `asked`: the connections the blob was given for this
        host; a host that has shown no overload yet gets that many before its limit has grown
        to them (the blob's parts are one download a user asked to spread; a host that then
        shows overload halves its limit, which binds the parts from there on)."""
        limit = self.host(host)
        room = limit.has_room() or (limit.probing and limit.in_flight < min(asked, limit.cap))
        if not self._waiting and self.used < self.total and room:
            return self._start(job, host, limit)
        return None

    def strained(self, ticket: Ticket) -> None:
        """The transfer holding `ticket` showed that its host is overloaded."""
        ticket.strained = True
        limit = self.hosts[ticket.host]
        epoch = limit.epoch
        if limit.back_off(ticket.epoch):  # said once per new low: a few lines per host at most
            log.info("%s shows overload (refused or reset connections, dropped SYNs, 503 or "
                     "429): at most %d transfers at once from it", ticket.host, limit.allowed)
        if limit.epoch != epoch and self.on_back_off is not None:
            self.on_back_off(ticket.host)

    def back_off_host(self, host: str) -> None:
        """Another process fetching from `host` saw it overloaded: halve here too (once: the
        transfers running here began in the epoch this ends)."""
        limit = self.host(host)
        limit.back_off(limit.epoch)

    def release(self, ticket: Ticket) -> None:
        self.used -= 1
        left = self.held[ticket.job] - 1
        if left:
            self.held[ticket.job] = left
        else:
            del self.held[ticket.job]
            if ticket.job not in self._waiting:
                self._served.pop(ticket.job, None)
        self.hosts[ticket.host].end(ticket.epoch, ticket.strained)
        if self._waiting:
            self._dispatch()

    def _start(self, job: Hashable, host: str, limit: HostLimit) -> Ticket:
        self.used += 1
        self.held[job] = self.held.get(job, 0) + 1
        self._served[job] = next(self._turns)
        return Ticket(job, host, limit.begin())

    def _dispatch(self) -> None:
        while self.used < self.total and self._waiting:
            order = list(self._waiting) if len(self._waiting) == 1 else sorted(
                self._waiting, key=lambda j: (self.held.get(j, 0), self._served.get(j, -1)))
            for job in order:
                if self._grant(job):
                    break
            else:
                return  # every waiting host is at its limit

    def _grant(self, job: Hashable) -> bool:
        """Start the longest-waiting transfer of `job` whose host has room."""
        hosts = self._waiting[job]
        for host in list(hosts):
            queue = hosts[host]
            while queue and queue[0].done():  # cancelled; its task has not yet run to say so
                queue.popleft()
            limit = self.host(host)
            granted = bool(queue) and limit.has_room()
            if granted:
                queue.popleft().set_result(self._start(job, host, limit))
            self._forget(job, host, None)
            if granted:
                return True
        return False

    def _forget(self, job: Hashable, host: str,
                waiter: asyncio.Future[Ticket] | None) -> None:
        """Take `waiter` out of its queue (None: only tidy up), and queues that are empty."""
        hosts = self._waiting.get(job)
        if hosts is None or host not in hosts:
            return
        if waiter is not None:
            with contextlib.suppress(ValueError):
                hosts[host].remove(waiter)
        if not hosts[host]:
            del hosts[host]
        if not hosts:
            del self._waiting[job]
            if job not in self.held:
                self._served.pop(job, None)


class ConnectionBudget:
    """The node's `--max-conns`, handed out to chunks (a chunk runs at most the connections it
    holds, wherever it runs), so the bound holds for all jobs and fetch processes together.
    When connections are scarce they go to the job holding the fewest (among equals, the one
    served longest ago), as FairSlots does for single transfers."""

    def __init__(self, total: int) -> None:
        self.total = self.free = max(1, total)
        self.held: dict[Hashable, int] = {}
        self._waiting: dict[Hashable, deque[tuple[asyncio.Future[int], int]]] = {}
        self._served: dict[Hashable, int] = {}
        self._turns = itertools.count()

    @property
    def waiting(self) -> int:
        """Chunks waiting for connections."""
        return sum(len(q) for q in self._waiting.values())

    def __repr__(self) -> str:
        return f"<ConnectionBudget {self.total - self.free}/{self.total} jobs={len(self.held)}>"

    async def take(self, job: Hashable, want: int) -> int:
        """At least one and at most `want` connections for `job`, once it has its turn."""
        if not self._waiting and self.free:
            return self._grant(job, want)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job, deque()).append((waiter, want))
        self._dispatch()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted, then cancelled
                self.give(job, waiter.result())
            else:
                queue = self._waiting.get(job)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove((waiter, want))
                    if not queue:
                        del self._waiting[job]
            raise

    def give(self, job: Hashable, n: int) -> None:
        self.free += n
        left = self.held[job] - n
        if left:
            self.held[job] = left
        else:
            del self.held[job]
            if job not in self._waiting:
                self._served.pop(job, None)
        self._dispatch()

    def _grant(self, job: Hashable, want: int) -> int:
        n = max(1, min(want, self.free))
        self.free -= n
        self.held[job] = self.held.get(job, 0) + n
        self._served[job] = next(self._turns)
        return n

    def _dispatch(self) -> None:
        while self.free and self._waiting:
            job = min(self._waiting, key=lambda j: (self.held.get(j, 0), self._served.get(j, -1)))
            queue = self._waiting[job]
            waiter, want = queue.popleft()
            if not queue:
                del self._waiting[job]
            if not waiter.done():
                waiter.set_result(self._grant(job, want))
