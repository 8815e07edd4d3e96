"""Handlers for the daemon benchmarks (``[handlers]`` in the generated config).

Plain async functions taking a :class:`worker.Job`: no decorator, default options.
"""

from __future__ import annotations

import trio

from tubeworker import Job


async def noop(job: Job) -> None:
    """The overhead scenario: no work at all."""


async def sleep20(job: Job) -> None:
    """The I/O scenario: a simulated 20 ms I/O wait."""
    await trio.sleep(0.02)
