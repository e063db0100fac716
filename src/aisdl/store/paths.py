"""Object names: which are valid, and how a download link's name is normalized.

Object names become file paths under a bucket directory, so a name is refused before any
filesystem call when it could escape the bucket or alias another name on disk.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from aisdl.errors import BadRequest

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# A name of these characters alone is its own URL path (no scheme, query, fragment or escape):
# normalizing it only validates it (templates make millions of such names).
_PLAIN = re.compile(r"[A-Za-z0-9._~/-]+")


def check_object_name(name: str) -> str:
    """Return `name` if it is a valid object name, else raise BadRequest.

    Refused: empty names, a trailing or leading `/`, `.`/`..` or empty segments (`a//b` would
    alias `a/b` on disk), a leading `~/`, NUL bytes.
    """
    if "/" not in name and name not in ("", ".", "..") and "\x00" not in name:
        return name  # one segment: nothing else to check (the usual template name)
    if (
        not name
        or name.startswith(("/", "~/"))
        or name.endswith("/")
        or "\x00" in name
        or any(seg in ("", ".", "..") for seg in name.split("/"))
    ):
        raise BadRequest(f'invalid object name "{name}"')
    return name


def normalize_object_name(name: str) -> str:
    """AIS `NormalizeObjName`: a name parsed as a URL with a non-empty path becomes that path,
    percent-decoded (so `?query` and `#fragment` go away); then it is validated."""
    if _PLAIN.fullmatch(name) and not name.startswith("//"):
        return check_object_name(name)
    try:
        url = urlsplit(name)
    except ValueError as exc:
        raise BadRequest(f'invalid object name "{name}": {exc}') from exc
    path = url.path
    if url.scheme and not name[len(url.scheme) + 1:].startswith("/"):
        path = ""  # `file:x.txt` is an opaque URL to Go: its path is empty, the name stays
    if path:
        if _BAD_ESCAPE.search(path):
            raise BadRequest(f'invalid object name "{name}": invalid URL escape')
        try:
            name = unquote(path, errors="strict")
        except UnicodeDecodeError as exc:
            raise BadRequest(f'invalid object name "{name}": not UTF-8 once decoded') from exc
    return check_object_name(name)
