"""When to try a failed fetch again, and how long to wait first."""

from __future__ import annotations

import random
import re

from aisdl.config import RetryPolicy
from aisdl.errors import SourceError


def backoff_delay(policy: RetryPolicy, attempt: int, error: SourceError) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins (capped)."""
    if error.retry_after is not None:
        return min(max(error.retry_after, 0.0), policy.max_delay)
    ceiling = min(policy.max_delay, policy.base_delay * (2 ** attempt))
    return random.uniform(ceiling / 2, ceiling)


def should_retry(policy: RetryPolicy, attempt: int, error: SourceError) -> bool:
    """`attempt` counts failures so far in the current budget (reset when bytes arrive)."""
    return error.transient and attempt + 1 < policy.attempts


ATTEMPTS_CAP = 4  # x the policy's attempts: the most tries of one file (or blob part), progress
                  # or not: a source that sends a few bytes before each reset renews the budget


def out_of_tries(policy: RetryPolicy, attempts: int, failures: int, error: SourceError) -> bool:
    """Whether a failed fetch ends here: `attempts` tries in all, `failures` in the current
    budget."""
    return attempts >= ATTEMPTS_CAP * policy.attempts or not should_retry(policy, failures, error)


# Why a fetch was tried again, as the node's metrics count it (`aisdl_retries_total{cause}`).
RETRY_CAUSES = ("connect", "5xx", "429", "timeout", "stall", "reset", "slow", "other")
_STATUS = re.compile(r"with (\d{3}) status code")


def retry_cause(error: SourceError, got_bytes: bool) -> str:
    """The cause of a retry, from the failed try's error and whether it received body bytes
    (a timeout after some of the body is a stall; before it, a timeout). Matched on the
    message, as engine/hostlimit.py does: a SourceError carries no kind, and these are the
    wordings of sources/http.py, engine/curl.py and sources/cloud.py."""
    message = error.message
    if status := _STATUS.search(message):
        code = int(status.group(1))
        return "429" if code == 429 else "5xx" if code >= 500 else "other"
    if "timed out" in message:
        return "stall" if got_bytes else "timeout"
    if message.startswith("transfer slower than"):
        return "slow"
    if "cannot connect" in message:
        return "connect"
    if "connection lost" in message or "reset" in message.lower():
        return "reset"
    return "other"
