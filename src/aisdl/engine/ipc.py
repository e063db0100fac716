"""Messages between the node and its fetch workers: pickled lists in length-prefixed frames.
Messages queued during one turn of the event loop leave together, in one frame and one write,
so a busy pipe costs a syscall per batch rather than per message."""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from typing import Any

_LEN = struct.Struct("!I")


class Outbox:
    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._pending: list[Any] = []

    def put(self, message: Any) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(message)

    def flush(self) -> None:
        if self._pending:
            messages, self._pending = self._pending, []
            data = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
            self._write(_LEN.pack(len(data)) + data)


async def receive(reader: asyncio.StreamReader) -> list[Any]:
    """The next frame's messages; IncompleteReadError when the other side has gone."""
    (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    messages: list[Any] = pickle.loads(await reader.readexactly(size))
    return messages
