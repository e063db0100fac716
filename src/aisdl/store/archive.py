"""Inside stored archives ("shards"): the member list, one member's bytes, a selection of members.

Datasets are mostly tar shards, so a listing can show their members (`shard.tar/member`, as AIS
lists them) and a GET can read one member (`archpath`) or a tar of the members that match
(`archregx` + `archmode`). Formats: tar, tar.gz / tgz and zip, read with the standard library.
A shard is known by its name's extension, or by an `archmime` the client gives; a GET with
neither also looks at the file's first bytes, as AIS does.

Everything here blocks on the disk: callers run it on an executor thread. Each request is bounded
in members, name length and time, so a hostile or huge archive cannot hold a thread for long.
"""

from __future__ import annotations

import collections
import io
import os
import re
import tarfile
import threading
import time
import zipfile
from collections.abc import Generator, Iterator
from typing import IO, NamedTuple

from aisdl.errors import BadRequest, NotFound, TooLarge

TAR, TGZ, ZIP = ".tar", ".tar.gz", ".zip"
EXTENSIONS = (".tar", ".tgz", ".tar.gz", ".zip")  # AIS also has .tar.lz4: not in the stdlib
MAX_MEMBERS = 100_000
MAX_NAME_BYTES = 1024
MAX_SCAN_SECONDS = 30.0
MATCH_MODES = ("regexp", "prefix", "suffix", "substr", "wdskey")
_CHUNK = 1 << 20
_CACHED_LISTS = 16


class Member(NamedTuple):
    name: str
    size: int  # uncompressed
    offset: int  # where its bytes start in a plain tar; -1 otherwise


def kind_by_name(name: str) -> str | None:
    """The archive kind an object name says it is (AIS: by extension only when listing)."""
    if name.endswith(".tar"):
        return TAR
    if name.endswith((".tgz", ".tar.gz")):
        return TGZ
    if name.endswith(".zip"):
        return ZIP
    return None


def kind_by_mime(mime: str) -> str:
    """`archmime` as AIS takes it: `tar`, `.tgz`, `application/zip`, ..."""
    if "tar.gz" in mime or "tgz" in mime:
        return TGZ
    if "tar.lz4" in mime:
        raise BadRequest(f"archmime {mime!r}: .tar.lz4 archives are not supported by this node")
    if "tar" in mime:
        return TAR
    if "zip" in mime:
        return ZIP
    raise BadRequest(f"invalid archmime {mime!r} (expected one of {', '.join(EXTENSIONS)})")


def detect_kind(path: str) -> str | None:
    """The kind by the file's first bytes (a GET of an object with no archive extension)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:2] == b"\x1f\x8b":
        return TGZ
    if head[:2] == b"PK":
        return ZIP
    if head[257:262] == b"ustar":
        return TAR
    return None


def check_member_name(name: str) -> str:
    """An `archpath` (AIS: a leading `/` is dropped)."""
    name = name.removeprefix("/")
    if not name or len(name.encode()) > MAX_NAME_BYTES or "\x00" in name:
        raise BadRequest(f"invalid archpath {name[:100]!r}")
    return name


# -- listing -------------------------------------------------------------------------------------
class _Listed(NamedTuple):
    in_order: list[Member]  # as stored: a multi-file GET answers in this order, as AIS does
    by_name: list[Member]  # as listed


_lists: collections.OrderedDict[tuple[str, int, int, int], _Listed] = collections.OrderedDict()
_lists_lock = threading.Lock()


def list_members(path: str, kind: str, label: str, *, by_name: bool = True) -> list[Member]:
    """The archive's files (directories left out), sorted by name or as stored. Recently listed
    archives are remembered by (path, inode, size, mtime), so paging through a big shard reads
    it once."""
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _lists_lock:
        listed = _lists.get(key)
        if listed is not None:
            _lists.move_to_end(key)
    if listed is None:
        in_order = list(_scan(path, kind, label))
        listed = _Listed(in_order, sorted(in_order, key=lambda m: m.name))
        with _lists_lock:
            _lists[key] = listed
            while len(_lists) > _CACHED_LISTS:
                _lists.popitem(last=False)
    return listed.by_name if by_name else listed.in_order


def _scan(path: str, kind: str, label: str) -> Iterator[Member]:
    deadline = time.monotonic() + MAX_SCAN_SECONDS
    count = 0
    try:
        for name, size, offset in _entries(path, kind):
            count += 1
            if count > MAX_MEMBERS:
                raise TooLarge(f"{label}: more than {MAX_MEMBERS} files in the archive")
            if time.monotonic() > deadline:
                raise TooLarge(f"{label}: reading the archive took more than"
                               f" {MAX_SCAN_SECONDS:.0f}s")
            if len(name.encode()) > MAX_NAME_BYTES:
                raise BadRequest(f"{label}: a file name in the archive is longer than"
                                 f" {MAX_NAME_BYTES} bytes")
            yield Member(name, size, offset)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise BadRequest(f"{label}: not a valid {kind.lstrip('.')} archive: {exc}") from exc


def _entries(path: str, kind: str) -> Iterator[tuple[str, int, int]]:
    if kind == ZIP:
        with zipfile.ZipFile(path) as zf:
            for zinfo in zf.infolist():
                if not zinfo.is_dir():
                    yield _clean(zinfo.filename), zinfo.file_size, -1
        return
    # A plain tar is read by seeking past the data; a compressed one is read as a stream.
    with (tarfile.open(path, "r:") if kind == TAR else tarfile.open(path, "r|gz")) as tf:
        for info in tf:
            if info.isfile():
                yield _clean(info.name), info.size, info.offset_data if kind == TAR else -1


def _clean(name: str) -> str:
    """AIS lists `path.Join(shard, member)`: `./a` is `a`."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


# -- reading -------------------------------------------------------------------------------------
def open_member(path: str, kind: str, member: str, label: str) -> tuple[io.RawIOBase, int]:
    """An open reader of one member's bytes, and its size; 404 when the archive lacks it, 400
    when the object is not an archive of that kind (an `archmime` that does not fit)."""
    try:
        return _open_member(path, kind, member, label)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise BadRequest(f"{label}: not a valid {kind.lstrip('.')} archive: {exc}") from exc


def _open_member(path: str, kind: str, member: str, label: str) -> tuple[io.RawIOBase, int]:
    wanted = _clean(member)
    if kind == TAR:
        for m in list_members(path, kind, label, by_name=False):  # the first of a name
            if m.name == wanted:
                f = open(path, "rb")  # noqa: SIM115 - the caller closes it
                f.seek(m.offset)
                return _Limited(f, m.size), m.size
        raise _missing(member, label)
    if kind == ZIP:
        zf = zipfile.ZipFile(path)
        for zinfo in zf.infolist():
            if not zinfo.is_dir() and _clean(zinfo.filename) == wanted:
                return _Closing(zf.open(zinfo), zf), zinfo.file_size
        zf.close()
        raise _missing(member, label)
    tf = tarfile.open(path, "r|gz")
    try:
        for info in _bounded(tf, label):
            if info.isfile() and _clean(info.name) == wanted:
                reader = tf.extractfile(info)
                assert reader is not None  # a regular file always has one
                return _Closing(reader, tf), info.size
    except BaseException:
        tf.close()
        raise
    tf.close()
    raise _missing(member, label)


def _missing(member: str, label: str) -> NotFound:
    return NotFound(f"{member} in {label} does not exist", tcode="ErrNotFound")


def _bounded(tf: tarfile.TarFile, label: str) -> Iterator[tarfile.TarInfo]:
    deadline = time.monotonic() + MAX_SCAN_SECONDS
    try:
        for count, info in enumerate(tf, 1):
            if count > MAX_MEMBERS or time.monotonic() > deadline:
                raise TooLarge(f"{label}: the archive is too large to search (more than"
                               f" {MAX_MEMBERS} files or {MAX_SCAN_SECONDS:.0f}s)")
            yield info
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadRequest(f"{label}: not a valid {TGZ.lstrip('.')} archive: {exc}") from exc


def matcher(regex: str, mode: str) -> re.Pattern[str] | tuple[str, str]:
    """AIS's match modes for `archregx` (an empty one matches every file)."""
    if mode not in MATCH_MODES:
        raise BadRequest(f"invalid archmode {mode!r} (expected one of {', '.join(MATCH_MODES)})")
    if mode == "regexp" and regex not in ("", "*"):
        try:
            return re.compile(regex)
        except re.error as exc:
            raise BadRequest(f"invalid archregx {regex!r}: {exc}") from exc
    return (mode, "" if regex == "*" else regex)


def matches(m: re.Pattern[str] | tuple[str, str], name: str) -> bool:
    if isinstance(m, re.Pattern):
        return m.search(name) is not None
    mode, text = m
    if not text:
        return True
    if mode == "prefix":
        return name.startswith(text)
    if mode == "suffix":
        return name.endswith(text)
    if mode == "substr":
        return text in name
    if mode == "wdskey":  # WebDataset's key: the name without its extension
        return os.path.splitext(name)[0].removeprefix("/") == text
    return True  # regexp with an empty or `*` pattern


def tar_of_matches(path: str, kind: str, selected: re.Pattern[str] | tuple[str, str],
                   label: str) -> Generator[bytes, None, None]:
    """A tar stream of the matching members (AIS answers a multi-file GET with one), built as
    it goes: at most one chunk of it is in memory."""
    found = 0
    for name, size, reader in _matching(path, kind, selected, label):
        found += 1
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, int(time.time())
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        left = size
        while left > 0:
            data = reader.read(min(_CHUNK, left))
            if not data:
                raise BadRequest(f"{label}: {name} ended early in the archive")
            left -= len(data)
            yield data
        if size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)
    if not found:
        raise NotFound(f"no file that matches in {label}", tcode="ErrNotFound")
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _matching(path: str, kind: str, selected: re.Pattern[str] | tuple[str, str],
              label: str) -> Iterator[tuple[str, int, IO[bytes]]]:
    if kind == TAR:
        with open(path, "rb") as f:
            for m in list_members(path, kind, label, by_name=False):
                if matches(selected, m.name):
                    f.seek(m.offset)
                    yield m.name, m.size, f
        return
    if kind == ZIP:
        with zipfile.ZipFile(path) as zf:
            for zinfo in zf.infolist()[:MAX_MEMBERS]:
                name = _clean(zinfo.filename)
                if not zinfo.is_dir() and matches(selected, name):
                    with zf.open(zinfo) as r:
                        yield name, zinfo.file_size, r
        return
    with tarfile.open(path, "r|gz") as tf:
        for info in _bounded(tf, label):
            name = _clean(info.name)
            if info.isfile() and matches(selected, name):
                reader = tf.extractfile(info)
                assert reader is not None
                yield name, info.size, reader


class _Limited(io.RawIOBase):
    """`size` bytes of a file from where it stands."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f, self._left = f, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()
        super().close()


class _Closing(io.RawIOBase):
    """A member reader that also closes the archive it came from."""

    def __init__(self, reader: IO[bytes], owner: tarfile.TarFile | zipfile.ZipFile) -> None:
        self._r, self._owner = reader, owner

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._r.read(n)

    def close(self) -> None:
        self._r.close()
        self._owner.close()
        super().close()
