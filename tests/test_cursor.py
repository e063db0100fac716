"""A job's resume cursor: which items are done, kept as a low mark and the few done above it."""

from __future__ import annotations

import random

import pytest

from aisdl.jobs.records import Cursor


@pytest.mark.parametrize(("start", "batches", "low", "above"), [
    (Cursor(), [[0, 1, 2]], 3, set()),
    (Cursor(), [[2, 1]], 0, {1, 2}),
    (Cursor(), [[2, 1], [0]], 3, set()),
    (Cursor(), [[0, 2, 3, 5]], 1, {2, 3, 5}),
    (Cursor(), [[0, 2, 3, 5], [1, 4]], 6, set()),
    (Cursor(4, {6}), [[4]], 5, {6}),
    (Cursor(4, {6}), [[5]], 4, {5, 6}),  # 4 still to do
    (Cursor(4, {6}), [[5], [4]], 7, set()),
    (Cursor(4, {6}), [[1, 4]], 5, {6}),  # below the low: already done, changes nothing
    (Cursor(4), [[]], 4, set()),
])
def test_mark_all(start: Cursor, batches: list[list[int]], low: int, above: set[int]) -> None:
    for batch in batches:
        start.mark_all(batch)
    assert (start.low, start.above) == (low, above)


def test_mark_all_agrees_with_one_at_a_time() -> None:
    rnd = random.Random(7)
    order = list(range(2000))
    rnd.shuffle(order)
    cursor = Cursor()
    done: set[int] = set()
    for i in range(0, len(order), 37):
        batch = order[i:i + 37]
        cursor.mark_all(batch)
        done.update(batch)
        low = 0
        while low in done:
            low += 1
        assert (cursor.low, cursor.above) == (low, {d for d in done if d > low})
        assert all(cursor.done(d) for d in done)
