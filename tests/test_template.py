"""Brace templates of range jobs (spec 3.3): expansion, padding, errors, the cap, random access."""

from __future__ import annotations

import itertools
import random

import pytest

from aisdl.errors import BadRequest
from aisdl.jobs.request import JobSpec, range_name, with_scheme
from aisdl.jobs.template import MAX_NAMES, RangeTemplate, has_template
from aisdl.models import Bucket

EXAMPLE = "(expecting e.g. 'prefix-{0001..0010..1}-suffix')"


def names(template: str) -> list[str]:
    return list(RangeTemplate(template))


def test_last_range_varies_fastest() -> None:
    assert names("v0.{23..25..2}.{0..1}") == ["v0.23.0", "v0.23.1", "v0.25.0", "v0.25.1"]


@pytest.mark.parametrize(
    ("template", "first", "last", "count"),
    [
        ("{001..100}", "001", "100", 100),
        ("{1..10}", "1", "10", 10),
        ("{01..100}", "01", "100", 100),
        ("{1..1000..10}", "1", "991", 100),  # 1000 is not reachable by steps of 10
        ("img-{0000..0009..3}.jpg", "img-0000.jpg", "img-0009.jpg", 4),
        ("{5..5}", "5", "5", 1),
    ],
)
def test_single_range(template: str, first: str, last: str, count: int) -> None:
    got = names(template)
    assert (got[0], got[-1], len(got)) == (first, last, count)
    assert len(RangeTemplate(template)) == count


def test_padding_is_min_of_both_widths() -> None:
    got = names("{01..100}")
    assert got[:2] == ["01", "02"] and got[97:] == ["98", "99", "100"]
    assert names("{001..100}")[:2] == ["001", "002"]
    assert names("{1..10}")[8:] == ["9", "10"]


def test_prefix_gaps_and_suffix() -> None:
    t = RangeTemplate("https://h/p-{0..1}-gap-{00..02..2}.tgz")
    assert t.prefix == "https://h/p-"
    assert [r.gap for r in t.ranges] == ["-gap-", ".tgz"]
    assert list(t) == ["https://h/p-0-gap-00.tgz", "https://h/p-0-gap-02.tgz",
                       "https://h/p-1-gap-00.tgz", "https://h/p-1-gap-02.tgz"]


def test_percent_signs_are_literal() -> None:
    assert names("a%d{1..2}%s") == ["a%d1%s", "a%d2%s"]


@pytest.mark.parametrize("template", ["{1..}", "{1}", "}{", "{..5}", "{1..2..3..4}", "a{1..2",
                                      "{1..2}}", "}{1..2}", "{1..{2}}", "{1..2}{"])
def test_malformed(template: str) -> None:
    with pytest.raises(BadRequest) as e:
        RangeTemplate(template)
    assert str(e.value).startswith(f"invalid 'bash' template \"{template}\"")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("template", "at"), [("http://h/a{1..3", 11), ("a{1..2", 2),
                                              ("{1..2}{", 7), ("{1..{2}}", 1), ("{1..2}b{3", 8)])
def test_unterminated_brace(template: str, at: int) -> None:
    """`a{1..3` was taken as a literal name; it is a range left open."""
    with pytest.raises(BadRequest) as e:
        RangeTemplate(template)
    assert str(e.value) == (f"invalid 'bash' template \"{template}\": unterminated '{{' at"
                            f" character {at} {EXAMPLE}")


@pytest.mark.parametrize("template", ["}{", "a}b", "{1..2}}", "}{1..2}"])
def test_closing_brace_without_opening(template: str) -> None:
    with pytest.raises(BadRequest) as e:
        RangeTemplate(template)
    assert str(e.value) == f"invalid 'bash' template \"{template}\": '}}' without '{{'"


def test_not_a_template() -> None:
    with pytest.raises(BadRequest, match="not a 'bash' template \"plain.tar\""):
        RangeTemplate("plain.tar")


def test_letters_are_not_numbers() -> None:
    with pytest.raises(BadRequest, match='range values must be whole numbers, got "a"'):
        RangeTemplate("{a..z}")


@pytest.mark.parametrize(
    ("template", "detail"),
    [
        ("{5..1}", "'start' cannot be greater than 'end'"),
        ("{-1..5}", "'start' is negative"),
        ("{1..5..0}", "'step' is non-positive"),
        ("{1..5..-1}", "'step' is non-positive"),
    ],
)
def test_bad_values(template: str, detail: str) -> None:
    with pytest.raises(BadRequest) as e:
        RangeTemplate(template)
    assert str(e.value) == f"invalid 'bash' template \"{template}\": {detail}"


def test_errors_are_one_line() -> None:
    for bad in ("{1..}", "{a..z}", "{5..1}", "x", "{0..99999999}"):
        with pytest.raises(BadRequest) as e:
            RangeTemplate(bad)
        assert "\n" not in str(e.value)


def test_cap() -> None:
    assert len(RangeTemplate("{1..10000000}")) == MAX_NAMES
    assert len(RangeTemplate("{0..9999}-{0..999}")) == MAX_NAMES
    for too_many in ("{0..10000000}", "{0..10000}{0..999}", "{0..99999999999999999999999}"):
        with pytest.raises(BadRequest) as e:
            RangeTemplate(too_many)
        assert str(e.value) == "parsed-template: too many values (more than 10000000 max)"


def test_ten_million_is_lazy() -> None:
    t = RangeTemplate("https://h/shard-{0000000..9999999}.tar")
    assert len(t) == 10_000_000
    assert next(iter(t)) == "https://h/shard-0000000.tar"
    assert t.name_at(9_999_999) == "https://h/shard-9999999.tar"
    assert list(itertools.islice(t.iter_from(9_999_998), 5)) == [
        "https://h/shard-9999998.tar", "https://h/shard-9999999.tar"]


def test_random_access_agrees_with_iteration() -> None:
    rng = random.Random(7)
    for _ in range(200):
        parts = ["p"]
        for _ in range(rng.randint(1, 4)):
            start = rng.randint(0, 20)
            end = start + rng.randint(0, 15)
            width = rng.randint(1, 3)
            step = f"..{rng.randint(1, 5)}" if rng.random() < 0.5 else ""
            parts.append(f"{{{start:0{width}d}..{end}{step}}}" + rng.choice(["", "-", "/x"]))
        t = RangeTemplate("".join(parts))
        full = list(t)
        assert len(full) == len(t)
        assert len(set(full)) == len(full)
        for i in rng.sample(range(len(full) + 1), min(5, len(full) + 1)):
            assert list(t.iter_from(i)) == full[i:]
            if i < len(full):
                assert t.name_at(i) == full[i]


def test_index_bounds() -> None:
    t = RangeTemplate("{1..3}")
    assert list(t.iter_from(3)) == []
    for bad in (-1, 4):
        with pytest.raises(IndexError):
            t.iter_from(bad)
    with pytest.raises(IndexError):
        t.name_at(3)


def test_has_template() -> None:
    assert has_template("gs://b/obj{00..10}.tgz")
    assert not has_template("https://h/file")


@pytest.mark.parametrize("source", ["gs://b/obj{00..10.tgz", "http://h/a{1..3", "http://h/a}"])
def test_any_brace_makes_a_template(source: str) -> None:
    """So an unterminated range is refused as one, not fetched as a literal object name."""
    assert has_template(source)


# -- a range job's items: names made from a template of names agree with `range_name` -----------
def _slow_entries(spec: JobSpec, start: int) -> list[tuple[int, str, str, str]]:
    out = []
    for i, link in enumerate(RangeTemplate(spec.template).iter_from(start), start):
        try:
            out.append((i, range_name(spec.subdir, link), with_scheme(link), ""))
        except BadRequest as exc:
            out.append((i, "", with_scheme(link), exc.message))
    return out


@pytest.mark.parametrize(("template", "subdir"), [
    ("http://h/d/f{0..120}.bin", ""),
    ("http://h/d/f{0..12}-{7..9..2}.tar", "sub/dir/"),
    ("h:8080/a/{001..030}", "/x"),               # no scheme: fetched over http
    ("http://h/d/{0..9}x{0..3}", "a b"),          # a space: names normalized one by one
    ("http://h/d/f%41{0..9}", ""),                # an escape: decoded per name
    ("http://h/d/{0..9}/", ""),                   # trailing slash: the element before it
    ("http://h/d/x{0..9}/y{0..3}", "s"),          # ranges in two path elements
    ("http://h/d/f{0..9}?q=1", ""),               # a query is not part of the name
    ("http://h/d/..{0..3}", "../up"),             # refused names stay errors, per item
    ("http://h/d/{0..3}", "~"),
])
def test_entries_name_like_range_name(template: str, subdir: str) -> None:
    spec = JobSpec(kind="range", bucket=Bucket("ais", "b"), description="", template=template,
                   subdir=subdir)
    for start in (0, 3):
        got = [(i, n if not e else "", lk, e) for i, n, lk, e, _, _ in spec.entries(start)]
        assert got == _slow_entries(spec, start)
