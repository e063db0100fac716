"""Sizes and durations as users type them (`1GiB`, `500MB`, `1m30s`, `500ms`) and print them."""

from __future__ import annotations

import re

from aisdl.errors import BadRequest

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(text: str, what: str = "size") -> int:
    """`1GiB` → 1073741824, `500MB` → 500000000, `1024` → 1024."""
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise BadRequest(
            f"invalid {what} {text!r} (expected e.g. 1GiB, 500MB or a number of bytes)")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str, what: str = "duration") -> float:
    """Go-style durations (`1m30s`, `500ms`, `0s`); a bare number means seconds."""
    s = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise BadRequest(f"invalid {what} {text!r} (expected e.g. 30s, 500ms, 1m30s)")
    return total


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for whole units: 90 → `1m30s`, 0.5 → `500ms`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out, rest = "", round(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out + (f"{rest}s" if rest or not out else "")


def iec(n: int | float, digits: int = 2) -> str:
    """Bytes in IEC units as the AIS CLI prints them: `512B`, `16.39MiB`, `1.82GiB`."""
    if n < 1024:
        return f"{int(n)}B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:.{digits}f}{unit}"
    raise AssertionError("unreachable")
