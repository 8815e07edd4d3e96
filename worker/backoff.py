"""Exponential backoff with full jitter, as pure functions.

Used by the reconnect loop and by the job retry policy. Kept at the bottom of the import
graph (it imports nothing of ours) so the transport can use it too.
"""

from __future__ import annotations

import random

__all__ = ["exponential_delay", "full_jitter_delay"]

# 2**63 seconds is far beyond any cap; clamping the exponent avoids float overflow.
_MAX_EXPONENT = 63


def exponential_delay(attempt: int, *, base: float, cap: float) -> float:
    """The un-jittered delay before retry number ``attempt`` (1 for the first retry)."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if base < 0 or cap < 0:
        raise ValueError("base and cap must be >= 0")
    return min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))


def full_jitter_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """A delay drawn uniformly from [0, exponential_delay]: AWS's "full jitter".

    Spreads retries of many clients that failed together, so they do not return together.
    """
    ceiling = exponential_delay(attempt, base=base, cap=cap)
    return (rng or random).uniform(0.0, ceiling)
