"""When to try a failed fetch again, and how long to wait first."""

from __future__ import annotations

import random

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
