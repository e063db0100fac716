"""Keeping credentials out of what the node shows: job status, descriptions and its log.

A job's link may carry a password (`https://user:pass@host/...`) and its source request
headers may carry tokens; both are kept (the job needs them to fetch, also after a restart) but
never shown. A password is shown as `<redacted>`; the user name stays, it says which account.
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"

# scheme://user:password@ ; the password runs to the last "@" before the host's "/", "?" or "#"
# (a password may hold "@"; a path may too, but the authority ends at the first "/").
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/?#@:\s]*:)[^/?#\s]*@")


def redact_text(text: str) -> str:
    """`text` with the password of every link in it replaced by `<redacted>`."""
    return _USERINFO.sub(lambda m: f"{m['head']}{REDACTED}@", text)

