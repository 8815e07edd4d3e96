"""Exponential backoff with full jitter, and reading a ``Retry-After``, as pure functions.

Used by the reconnect loop, the job retry policy, flow control and handlers (through the
public API). Kept at the bottom of the import graph (it imports nothing of ours) so the
transport can use it too.
"""

from __future__ import annotations

import datetime
import email.utils
import random
import re

__all__ = ["RETRY_AFTER_CEILING", "exponential_delay", "full_jitter_delay", "parse_retry_after"]

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


# The longest wait a Retry-After is taken at (a server asking for a day is capped).
RETRY_AFTER_CEILING = 3600.0
# RFC 9110 delta-seconds is 1*DIGIT; a fraction is tolerated since some servers send one.
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(
    value: str, now: float, *, ceiling: float = RETRY_AFTER_CEILING
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None if it is not one.

    ``now`` is the wall clock (``time.time()``) an HTTP-date is measured against; a date in
    the past gives 0. The result is within [0, ``ceiling``].
    """
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        try:
            moment = email.utils.parsedate_to_datetime(text)
            if moment.tzinfo is None:  # "-0000" or no zone: HTTP-dates are always GMT
                moment = moment.replace(tzinfo=datetime.UTC)
            seconds = moment.timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), ceiling)
