"""Demo handlers, registered by this distribution's own entry points (``demo.*``).

Used by ``tubeworker demo``, the tests and the benchmark. Payloads are the envelope's
``payload``; on pools bound to one handler the raw body is read as JSON instead.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import trio

from tubeworker import Bury, Job, handler


def _options(job: Job) -> dict[str, Any]:
    try:
        data = job.data()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@handler()
async def echo(job: Job) -> None:
    """Log the job and succeed."""
    job.log.info("echo", payload=job.payload, body_bytes=len(job.body))


@handler()
async def sleep(job: Job) -> None:
    """Wait ``{"seconds": x}`` (default 1), then succeed: a stand-in for I/O."""
    seconds = _options(job).get("seconds", 1)
    if not isinstance(seconds, int | float) or seconds < 0:
        raise Bury(f"'seconds' must be a number >= 0, got {seconds!r}")
    await trio.sleep(seconds)


@handler()
async def fail(job: Job) -> None:
    """Always raise: retried with backoff until max_attempts, then buried."""
    raise RuntimeError(f"demo.fail always fails (attempt {job.attempt})")


@handler()
async def flaky(job: Job) -> None:
    """Fail with probability ``{"fail_rate": p}`` (default 0.5)."""
    rate = _options(job).get("fail_rate", 0.5)
    if not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise Bury(f"'fail_rate' must be between 0 and 1, got {rate!r}")
    if random.random() < rate:
        raise RuntimeError(f"demo.flaky failed (fail_rate {rate}, attempt {job.attempt})")


@handler()
def checksum(job: Job) -> None:
    """CPU-bound and synchronous: ``{"rounds": n}`` SHA-256 rounds over the body.

    Runs in a thread in the io profile and in a worker process in the compute profile.
    """
    rounds = _options(job).get("rounds", 10_000)
    if not isinstance(rounds, int) or not 0 <= rounds <= 10_000_000:
        raise Bury(f"'rounds' must be an integer 0..10000000, got {rounds!r}")
    digest = job.body
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
