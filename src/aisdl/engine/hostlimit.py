"""How many transfers one source host gets at once: a limit that adapts to what the host shows
it can take. It starts modestly, grows while the host keeps up (additive increase, after a
first phase of one more per success) and halves on signs of overload: refused or reset
connections, a connection that took a second or more to open (the kernel of a host whose
listen backlog is full drops the SYN; ours sends it again after one second), 503 and 429.
A small server is never flooded; a fast one soon gets the node's full concurrency.

The decisions are pure (a clock is passed in); the node's slot scheduler (engine/limits.py)
asks `has_room`, calls `begin` when a transfer starts, `back_off` the moment it shows overload
(fetch workers report each sign at once) and `end` with what it showed."""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aisdl.errors import SourceError

START = 8    # transfers a host gets before it has shown that it keeps up
ROUND = 1.0  # seconds: the limit at most doubles per round, so that an overload that takes a
             # second to show (a dropped SYN) is heard before the limit has run far past it
SLOW_CONNECT = 1.0  # seconds: a connect this slow had its SYN dropped and sent again

# What a failed try says when the host could not take the connection or the request. Matched
# on the message: a SourceError carries no kind (the wording is that of sources/http.py and
# engine/curl.py; tests/test_fairness.py lists it).
_OVERLOAD = re.compile(
    r"cannot connect|connection lost|connection reset|connection refused|empty reply"
    r"|recv failure|send failure|server disconnected|with (?:429|503) status code",
    re.IGNORECASE)


def host_of(link: str) -> str:
    """The key a link's transfers are limited under: scheme and host[:port] (never a user or
    password in the link: the key is logged). Runs per file: the link's scheme and authority
    are cut by a regex, and parsed once per distinct one."""
    head = _HEAD.match(link)
    return _host_key(head.group() if head else link)


_HEAD = re.compile(r"[^:/?#]*://[^/?#]*")


@functools.lru_cache(maxsize=1024)
def _host_key(head: str) -> str:
    parts = urlsplit(head)
    return f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2].lower()}"


def overloaded(err: SourceError) -> bool:
    """Whether a failed try is a sign that the host is overloaded (rather than, say, a 404)."""
    return bool(_OVERLOAD.search(err.message))


def slow_connect(seconds: float) -> bool:
    """Whether opening a connection took so long that a SYN must have been dropped."""
    return seconds >= SLOW_CONNECT


class HostLimit:
    """The adaptive limit of one host: additive increase, multiplicative decrease.

    Each transfer carries the `epoch` it began in (the number of back-offs so far). Only
    transfers of the current epoch move the limit: the transfers already running when the
    limit was halved report the same overload again, and halving once for them all is enough.
    """

    def __init__(self, cap: int, *, start: int = START,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = max(1, cap)
        self.limit = float(min(start, self.cap))
        self.allowed = int(self.limit)  # transfers at once: the limit, whole
        self.in_flight = 0
        self.epoch = 0
        self.probing = True  # no overload seen yet: one more per success
        self.lowest = self.allowed
        self._clock = clock
        self._round_at = clock()
        self._round_base = self.limit

    def __repr__(self) -> str:
        return (f"<HostLimit {self.allowed}/{self.cap} in_flight={self.in_flight} "
                f"epoch={self.epoch} probing={self.probing}>")

    def has_room(self) -> bool:
        return self.in_flight < self.allowed

    def begin(self) -> int:
        """A transfer starts; returns the epoch to hand back to `end`."""
        self.in_flight += 1
        return self.epoch

    def back_off(self, epoch: int) -> bool:
        """A transfer begun in `epoch` showed that the host is overloaded (it may still run).
        True when the limit is lower than it has ever been."""
        if epoch != self.epoch:
            return False
        self._set(max(1, math.floor(self.limit / 2)))
        self.epoch += 1
        self.probing = False
        self._new_round(self._clock())
        if self.allowed < self.lowest:
            self.lowest = self.allowed
            return True
        return False

    def end(self, epoch: int, strained: bool | None) -> None:
        """A transfer ended: `strained` says whether it showed overload, None that it says
        nothing either way (cancelled, or it failed on our side)."""
        busy = self.in_flight >= self.allowed  # the limit was in use: worth growing
        self.in_flight -= 1
        if strained:
            self.back_off(epoch)
        elif strained is not None and busy and epoch == self.epoch:
            self._grow()

    def _grow(self) -> None:
        if self.limit >= self.cap:
            return
        now = self._clock()
        if now - self._round_at >= ROUND:
            self._new_round(now)
        step = 1.0 if self.probing else 1.0 / self.allowed  # one more per `allowed` that kept up
        self._set(min(self.cap, 2 * self._round_base, self.limit + step))

    def _set(self, limit: float) -> None:
        self.limit, self.allowed = float(limit), int(limit)

    def _new_round(self, now: float) -> None:
        self._round_at, self._round_base = now, self.limit
