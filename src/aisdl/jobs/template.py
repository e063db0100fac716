"""Bash-style brace templates of range downloads (spec 3.3).

`prefix-{0001..0010..1}-gap-{0..2}-suffix` names the cartesian product of its ranges, the LAST
range varying fastest; every number is zero-padded to min(len(start), len(end)) digits, and the
end is included only when a whole number of steps reaches it.

A template may name up to 10,000,000 objects, so nothing here expands it: the count is a product,
names are produced lazily, and `iter_from(n)` / `name_at(n)` jump straight to the n-th name by
reading n as a mixed-radix number — that is how a job resumes after a restart without replaying.

One deliberate difference from upstream: a stray `}` after the last range is rejected (upstream
keeps it as literal suffix text), and so is an unterminated `{`, so that every brace in a
template is part of a range.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

from aisdl.errors import BadRequest

MAX_NAMES = 10_000_000
_EXAMPLE = "(expecting e.g. 'prefix-{0001..0010..1}-suffix')"
# A minus sign is let through only so that `{-1..5}` gets the precise "'start' is negative" error.
_NUMBER = re.compile(r"-?[0-9]+")


def has_template(text: str) -> bool:
    """Whether a source link is a range template (the CLI's test, spec 3.2 step 3).

    Any brace makes one, where upstream needs both `{` and `}`: `http://h/a{1..3` is a template
    with an unterminated range, refused as such, not the literal object name `a{1..3`."""
    return "{" in text or "}" in text


@dataclass(frozen=True)
class TemplateRange:
    """One `{start..end..step}` and the literal text (`gap`) that follows it."""

    start: int
    end: int
    step: int
    width: int
    gap: str

    @property
    def count(self) -> int:
        return (self.end - self.start) // self.step + 1

    def part(self, i: int) -> str:
        """The i-th number of this range, padded, followed by the gap."""
        return f"{self.start + i * self.step:0{self.width}d}{self.gap}"


class RangeTemplate:
    """A parsed template; `len()` is the number of names, iteration yields them in order."""

    def __init__(self, template: str) -> None:
        self.template = template
        first = template.find("{")
        if first < 0 and "}" in template:
            self._invalid("'}' without '{'")
        if first < 0:
            raise BadRequest(f"not a 'bash' template \"{template}\": no '{{start..end}}' range "
                             f"{_EXAMPLE}")
        self.prefix = template[:first]
        if "}" in self.prefix:
            self._invalid("'}' without '{'")
        ranges: list[TemplateRange] = []
        pos = first
        while True:
            close = template.find("}", pos)
            if close < 0 or "{" in template[pos + 1:close]:
                self._invalid(f"unterminated '{{' at character {pos + 1} {_EXAMPLE}")
            nxt = template.find("{", close + 1)
            gap = template[close + 1:nxt] if nxt >= 0 else template[close + 1:]
            if "}" in gap:
                self._invalid("'}' without '{'")
            ranges.append(self._parse_range(template[pos + 1:close], gap))
            if nxt < 0:
                break
            pos = nxt
        self.ranges = tuple(ranges)

        total = 1
        for r in self.ranges:
            total *= r.count
            if total > MAX_NAMES:
                raise BadRequest(f"parsed-template: too many values (more than {MAX_NAMES} max)")
        self.count = total

    def _invalid(self, detail: str = "") -> NoReturn:
        if detail:
            raise BadRequest(f"invalid 'bash' template \"{self.template}\": {detail}")
        raise BadRequest(f"invalid 'bash' template \"{self.template}\" {_EXAMPLE}")

    def _parse_range(self, body: str, gap: str) -> TemplateRange:
        texts = body.split("..")
        if not 2 <= len(texts) <= 3 or "" in texts:
            self._invalid()
        for text in texts:
            if not _NUMBER.fullmatch(text):
                self._invalid(f"range values must be whole numbers, got \"{text}\" {_EXAMPLE}")
        start, end = int(texts[0]), int(texts[1])
        step = int(texts[2]) if len(texts) == 3 else 1
        # Same order of checks as upstream, so the same template gets the same error.
        if start > end:
            self._invalid("'start' cannot be greater than 'end'")
        if start < 0:
            self._invalid("'start' is negative")
        if step <= 0:
            self._invalid("'step' is non-positive")
        return TemplateRange(start, end, step, min(len(texts[0]), len(texts[1])), gap)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"RangeTemplate({self.template!r})"

    def __iter__(self) -> Iterator[str]:
        return self.iter_from(0)

    def _digits(self, index: int) -> list[int]:
        """`index` as a mixed-radix number, one digit per range (last range least significant)."""
        digits = []
        for r in reversed(self.ranges):
            index, d = divmod(index, r.count)
            digits.append(d)
        digits.reverse()
        return digits

    def _check(self, index: int, allow_end: bool) -> None:
        if not 0 <= index < self.count + allow_end:
            raise IndexError(f"template index {index} out of range (0..{self.count - 1})")

    def name_at(self, index: int) -> str:
        self._check(index, allow_end=False)
        digits = self._digits(index)
        return self.prefix + "".join(r.part(d) for r, d in zip(self.ranges, digits, strict=True))

    def iter_from(self, index: int) -> Iterator[str]:
        """Names from the index-th on; `index == len(self)` yields nothing (a finished job)."""
        self._check(index, allow_end=True)  # raise now, not at the first next()
        if index == self.count:
            return iter(())
        return self._generate(self._digits(index))

    def _generate(self, digits: list[int]) -> Iterator[str]:
        # An odometer over the outer ranges; the innermost range changes on every name, so it is
        # a %-format over a range() — about twice as fast as an f-string per name.
        *outer, last = self.ranges
        numbers = range(last.start, last.start + last.count * last.step, last.step)
        parts = [r.part(d) for r, d in zip(outer, digits, strict=False)]
        j = digits[-1]
        while True:
            head = self.prefix + "".join(parts)
            fmt = f"{_escape(head)}%0{last.width}d{_escape(last.gap)}"
            yield from map(fmt.__mod__, numbers[j:])
            j = 0
            i = len(outer) - 1
            while i >= 0:
                digits[i] += 1
                if digits[i] < outer[i].count:
                    parts[i] = outer[i].part(digits[i])
                    break
                digits[i] = 0
                parts[i] = outer[i].part(0)
                i -= 1
            if i < 0:
                return


def _escape(text: str) -> str:
    return text.replace("%", "%%")
