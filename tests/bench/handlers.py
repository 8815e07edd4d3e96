"""Handlers for the daemon benchmarks (``[handlers]`` in the generated config).

Plain async functions taking a :class:`worker.Job`: no decorator, default options.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time

import trio
from pydantic import BaseModel

from tubeworker import Job, handler


async def noop(job: Job) -> None:
    """The overhead scenario: no work at all."""


class BenchBody(BaseModel):
    """The bench body's shape (tests/bench/common.py job_body)."""

    task: str
    seq: int
    pad: str


async def noop_typed(job: Job) -> None:
    """The overhead scenario's ``tubeworker-typed``: no work, a payload model checked."""


with contextlib.suppress(TypeError):  # a baseline tree may predate payload types
    noop_typed = handler(payload=BenchBody)(noop_typed)


async def sleep20(job: Job) -> None:
    """The I/O scenario: a simulated 20 ms I/O wait."""
    await trio.sleep(0.02)


# The latency scenario: each job's body is {"t": put time (time.time())}; the handler notes
# when it started, and the process writes what it noted when it exits (after its drain).
_STARTS: list[tuple[float, float]] = []


def _write_starts() -> None:
    path = os.environ.get(LATENCY_FILE_ENV)
    if path and _STARTS:
        with open(f"{path}.{os.getpid()}", "w") as out:
            out.writelines(f"{put!r} {start!r}\n" for put, start in _STARTS)


LATENCY_FILE_ENV = "TUBEWORKER_BENCH_LATENCY_FILE"
atexit.register(_write_starts)


async def note_start(job: Job) -> None:
    """The latency scenario: when the handler started, beside when the job was put."""
    _STARTS.append((float(json.loads(job.body)["t"]), time.time()))
