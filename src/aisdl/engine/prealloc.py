"""Reserving a large body's disk blocks before its bytes arrive (Linux `fallocate` with
FALLOC_FL_KEEP_SIZE). ext4 otherwise reserves and maps every page as it is written (delayed
allocation): 4 × 512 MiB took ~20% less system time with the blocks reserved up front. The
file's size stays the bytes written, so a crash or a retry still resumes from what arrived; and
a body larger than the free space fails as its writing starts instead of after filling the disk.
`os.posix_fallocate` cannot keep the size, hence the libc call."""

from __future__ import annotations

import ctypes
import errno
import os
import sys

WORTH_FROM = 1 << 20  # smaller bodies are written in one go: nothing to gain per page
_KEEP_SIZE = 0x01     # FALLOC_FL_KEEP_SIZE

_fallocate = None
if sys.platform == "linux" and sys.maxsize > 2**32:  # 64-bit: off_t is int64
    _fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int


def preallocate(fd: int, offset: int, size: int | None) -> None:
    """Reserve a body's blocks from `offset` (where its writing starts) to its `size` (None:
    the source did not say) when worth it. OSError(ENOSPC) when the disk cannot hold them;
    filesystems that cannot preallocate simply write as usual."""
    if _fallocate is None or size is None or size - offset < WORTH_FROM:
        return
    if _fallocate(fd, _KEEP_SIZE, offset, size - offset) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err, os.strerror(err))
