"""Sizes and durations as users type them (`1GiB`, `500MB`, `1m30s`, `500ms`) and print them.

Sizes follow AIS's `--units iec|si|raw` (its CLI's cos.ParseSize and teb.FmtSize): printed in
IEC units (`16.39MiB`, the default), SI units (`17.19MB`) or as a plain number of bytes; typed
with a unit suffix that decides (`1GiB`, `1GB`, `1G`), unless --units says otherwise: `iec`
reads `1GB` as 1 GiB, `si` refuses IEC suffixes, `raw` takes bytes only."""

from __future__ import annotations

import re

from aisdl.errors import BadRequest

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
    "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4,
}
UNITS = ("iec", "si", "raw")  # the values of --units; "" (not given) reads and prints as iec
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(text: str, what: str = "size", units: str = "") -> int:
    """`1GiB` → 1073741824, `500MB` → 500000000, `1024` → 1024; `units` as AIS's --units:
    "" lets the suffix decide, `iec` reads SI suffixes as IEC ones (`1GB` → 1 GiB), `si` refuses
    IEC suffixes, `raw` refuses every unit but `B`."""
    m = _SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise BadRequest(
            f"invalid {what} {text!r} (expected e.g. 1GiB, 500MB or a number of bytes)")
    factor = _SIZE_UNITS[unit]
    if units not in ("", *UNITS):
        raise BadRequest(f"invalid units {units!r} (expected one of: {', '.join(UNITS)})")
    if unit not in ("", "b"):
        is_iec = "i" in unit
        if units == "raw" or (units == "si" and is_iec):
            expected = "a number of bytes" if units == "raw" else "e.g. 500MB, 1GB"
            raise BadRequest(f"invalid {what} {text!r} with --units {units} (expected {expected})")
        if units == "iec" and not is_iec:
            factor = _SIZE_UNITS[unit.rstrip("b") + "ib"]
    return int(float(m.group(1)) * factor)


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


def _scaled(n: int | float, digits: int, base: int, units: tuple[str, ...]) -> str:
    if n < base:
        return f"{int(n)}B"
    for unit in units:
        n /= base
        if n < base or unit == units[-1]:
            break
    return f"{n:.{digits}f}{unit}"


def iec(n: int | float, digits: int = 2) -> str:
    """Bytes in IEC units as the AIS CLI prints them: `512B`, `16.39MiB`, `1.82GiB`."""
    return _scaled(n, digits, 1024, ("KiB", "MiB", "GiB", "TiB", "PiB"))


def si(n: int | float, digits: int = 2) -> str:
    """Bytes in SI (metric) units as AIS's CLI prints them with --units si: `512B`, `17.19MB`."""
    return _scaled(n, digits, 1000, ("KB", "MB", "GB", "TB", "PB"))


def format_size(n: int | float, units: str = "", digits: int = 2) -> str:
    """A size in the units of --units: `16.39MiB` (iec, the default), `17.19MB` (si) or the
    number of bytes, `17186234` (raw)."""
    if units == "raw":
        return str(int(n))
    return si(n, digits) if units == "si" else iec(n, digits)


def format_rate(bytes_per_second: float, units: str = "", digits: int = 1) -> str:
    """A speed: `1.4MiB/s`, `1.5MB/s`, `1468006B/s` (raw keeps its `B`, as AIS prints rates)."""
    if units == "raw":
        return f"{int(bytes_per_second)}B/s"
    return f"{format_size(bytes_per_second, units, digits)}/s"


def format_amount(done: int, total: int | None, units: str = "") -> str:
    """Bytes done of a total, both in the unit the total calls for (as progress bars show them):
    `0.4/1.8 GiB`, `500/1000 B`, `0.5/1.9 GB` (si), `431700/1843200` (raw)."""
    if units == "raw":
        return f"{done}/{'?' if total is None else total}"
    base, names = (1000, _SI_NAMES) if units == "si" else (1024, _IEC_NAMES)
    scale, name = 1, "B"
    for step, unit_name in enumerate(names, start=1):
        if (done if total is None else total) < base**step:
            break
        scale, name = base**step, unit_name
    digits = 0 if scale == 1 else 1
    shown_total = "?" if total is None else f"{total / scale:.{digits}f}"
    return f"{done / scale:.{digits}f}/{shown_total} {name}"


_IEC_NAMES = ("KiB", "MiB", "GiB", "TiB", "PiB")
_SI_NAMES = ("KB", "MB", "GB", "TB", "PB")
