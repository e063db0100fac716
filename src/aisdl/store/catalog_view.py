"""What the catalog says about a batch of names about to be committed: which exist (and their
versions), and which would clash with a directory of objects. Read in two queries per batch
rather than two or three per object: a commit took 24.5 µs alone, 17.2 µs with the view, and on
a busy node each statement the database thread runs also hands the GIL to the event loop and
waits to get it back. Runs on the database thread, inside the batch's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

from aisdl.errors import Conflict
from aisdl.models import Bucket

_CHUNK = 500  # names per statement, well below SQLite's limit of bound parameters


def _parents(name: str) -> Iterator[str]:
    """`a/b/c` → `a`, `a/b`: the directories an object's path needs."""
    end = name.find("/")
    while end != -1:
        yield name[:end]
        end = name.find("/", end + 1)


def _chunks(names: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(names), _CHUNK):
        yield names[i:i + _CHUNK]


class CatalogView:
    """Kept up to date as the batch commits: a name may come twice in a batch, or be the parent
    of another one."""

    def __init__(self, conn: sqlite3.Connection, bck: Bucket, names: Iterable[str]) -> None:
        self.bck = bck
        wanted = list(dict.fromkeys(names))
        asked = list(dict.fromkeys([*wanted, *(p for n in wanted for p in _parents(n))]))
        self._versions: dict[str, str] = {}  # objects among the names and their parents
        for chunk in _chunks(asked):
            marks = ",".join("?" * len(chunk))
            self._versions.update(conn.execute(
                "SELECT name, version FROM objects WHERE provider = ? AND bucket = ?"
                f" AND name IN ({marks})", (bck.provider, bck.name, *chunk)).fetchall())
        self._children: dict[str, str] = {}  # name → one object named `name/...`
        new = [n for n in wanted if n not in self._versions]
        for chunk in _chunks(new):
            values = ",".join(["(?)"] * len(chunk))
            self._children.update(conn.execute(
                f"WITH names(n) AS (VALUES {values})"
                " SELECT n, child FROM (SELECT n, (SELECT name FROM objects WHERE provider = ?"
                "  AND bucket = ? AND name > n || '/' AND name < n || '0' LIMIT 1) AS child"
                "  FROM names) WHERE child IS NOT NULL",
                (*chunk, bck.provider, bck.name)).fetchall())

    def version(self, name: str) -> str | None:
        """The stored object's version ("" when unversioned); None when there is none."""
        return self._versions.get(name)

    def check_no_dir_clash(self, name: str) -> None:
        """An object cannot also be a directory of other objects (the bytes mirror the names on
        disk). Decided by the catalog, so the answer does not depend on which mountpaths the
        names hash to."""
        cname = self.bck.cname
        for parent in _parents(name):
            if parent in self._versions:
                raise Conflict(f"cannot store {cname}/{name}: {cname}/{parent} is an object,"
                               " so it cannot also be a directory")
        child = self._children.get(name)
        if child is not None:
            raise Conflict(f"cannot store {cname}/{name}: it is a directory of other objects"
                           f" (e.g. {cname}/{child})")

    def committed(self, name: str, version: str) -> None:
        self._versions[name] = version
        for parent in _parents(name):
            self._children.setdefault(parent, name)
