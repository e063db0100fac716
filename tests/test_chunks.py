"""Chunks: how big they are, how a job's connections split between them, and what a chunk's
journal proves placed after a crash (the decisions, on files in a temporary folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aisdl.engine.chunks import Journal, Row, journal_file, placed_rows
from aisdl.jobs.records import Cursor
from aisdl.jobs.run import CHUNK_BYTES, MAX_CHUNK, ChunkSizer, entries_left, lane_connections
from aisdl.models import Bucket
from aisdl.store.layout import Layout

BCK = Bucket("ais", "b")


def test_the_first_chunk_is_one_item_then_a_lanes_transfers_doubling_to_the_cap() -> None:
    sizer = ChunkSizer(conns=16)
    sizes = [sizer.next() for _ in range(8)]
    assert sizes == [1, 16, 32, 64, 128, 256, MAX_CHUNK, MAX_CHUNK]


def test_chunks_double_per_round_of_lanes() -> None:
    sizer = ChunkSizer(conns=1, lanes=4)
    assert [sizer.next() for _ in range(13)] == [1] + [1] * 4 + [2] * 4 + [4] * 4
    sizer = ChunkSizer(conns=16, lanes=4)
    assert [sizer.next() for _ in range(9)] == [1] + [16] * 4 + [32] * 4


@pytest.mark.parametrize(("left", "lanes", "expected"), [
    (4, 4, [1, 1, 1, 1]),                      # 4 big files: one per lane, so per process
    (8, 4, [1, 2, 2, 1, 1, 1]),                # a lane's share of what is left
    (40, 4, [1, 10, 8, 6, 4, 3, 2, 2, 1, 1, 1, 1]),
    (5000, 4, [1, 16, 16, 16, 16, 32]),        # big jobs: as before
    (-1, 4, [1, 16, 16, 16, 16, 32]),          # unknown size (a listing): as before
])
def test_a_job_of_known_size_is_spread_over_every_lane(left: int, lanes: int,
                                                      expected: list[int]) -> None:
    sizer = ChunkSizer(conns=16, lanes=lanes, left=left)
    sizes = [sizer.next() for _ in range(len(expected))]
    assert sizes == expected
    if left >= 0 and left < 100:
        assert sum(sizes) == left  # (handed out in full, nothing asked twice)


@pytest.mark.parametrize(("total", "low", "above", "expected"), [
    (1000, 0, set(), 1000),
    (1000, 600, {610, 620}, 400),   # resumed: read from low on, the done ones above included
    (1000, 1000, set(), 0),
    (-1, 50, set(), -1),            # a listing: unknown
])
def test_a_resumed_job_sizes_its_chunks_by_the_entries_it_reads(
        total: int, low: int, above: set[int], expected: int) -> None:
    assert entries_left(total, Cursor(low, above)) == expected


@pytest.mark.parametrize(("size", "conns", "expected"), [
    (64 << 10, 16, MAX_CHUNK),         # small files: the cap
    (1 << 20, 16, 64),                 # 64 MiB worth
    (512 << 20, 16, 16),               # never below the chunk's transfers at once
    (512 << 20, 1, 1),
])
def test_big_files_make_small_chunks(size: int, conns: int, expected: int) -> None:
    sizer = ChunkSizer(conns, lanes=2)
    for _ in range(20):
        sizer.next()
    sizer.saw(size)
    assert sizer.next() == expected
    assert CHUNK_BYTES == 64 << 20


@pytest.mark.parametrize(("connections", "lanes"), [(64, 4), (64, 16), (10, 4), (3, 3), (1, 1),
                                                    (7, 2)])
def test_a_jobs_connections_split_exactly_between_its_lanes(connections: int, lanes: int) -> None:
    split = lane_connections(connections, lanes)
    assert len(split) == lanes and sum(split) == connections
    assert max(split) - min(split) <= 1 and min(split) >= 1


def _place(layout: Layout, job: str, index: int, name: str, data: bytes,
           journal: Journal, *, rename: bool = True) -> Row:
    work = layout.work_file(BCK, name, job, f".{index}")
    Path(work).write_bytes(data)
    row = Row(index, name, 1, size=len(data), cksum="x", placed=True)
    journal.write(row)
    if rename:
        layout.place(BCK, name, work)
    return row


def test_a_journal_proves_placed_only_what_was_renamed(tmp_path: Path) -> None:
    layout, job = Layout([str(tmp_path / "mp")]), "job1"
    path = journal_file(layout, job, 7)
    journal = Journal(path)
    done = _place(layout, job, 0, "a", b"aaa", journal)
    _place(layout, job, 1, "b", b"bbb", journal, rename=False)   # killed before the rename
    failed = _place(layout, job, 2, "c/d", b"ccc", journal)
    failed.placed, failed.error = False, "refused"                  # then refused at record
    journal.write(failed)
    short = _place(layout, job, 3, "e", b"eee", journal)
    Path(layout.object_file(BCK, "e")).write_bytes(b"e")           # not the bytes it named
    journal.close()
    with open(path, "ab") as f:
        f.write(b'[4,"f",1,0,3')                                    # a line cut by the crash
    assert short.index == 3
    assert [(r.index, r.name, r.size) for r in placed_rows(layout, BCK, job, path)] == [
        (done.index, "a", 3)]


def test_a_missing_journal_proves_nothing(tmp_path: Path) -> None:
    layout = Layout([str(tmp_path / "mp")])
    assert placed_rows(layout, BCK, "job", journal_file(layout, "job", 1)) == []
    assert not os.path.exists(layout.journal_dir("job"))
