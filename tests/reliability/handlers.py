"""Handlers for the reliability scenarios, loaded by the daemon subprocess through the
config's ``[handlers]`` table (``"rel.record" = "tests.reliability.handlers:record"``).

Every run appends one line when it starts and one when it ends to the file named by
``TUBEWORKER_RELIABILITY_LEDGER``::

    START <n> <job id> <pid> <time.time()>
    END <n> <job id> <pid> <time.time()>

``n`` is the payload's ``n`` (a token without spaces; the job id when absent). Each line is
one ``write()`` on an ``O_APPEND`` descriptor, so lines from concurrent runs and processes
never interleave. The ledger (``ledger.py``) reads the file back.

Payload keys: ``n``; ``sleep`` (seconds, default 0); ``shield`` (true: the sleep ignores
cancellation, like a handler stuck in a blocking call that cannot be interrupted); ``pad``
(ignored: makes bodies big); ``fail_first`` (true: the first attempt raises after START).
"""

from __future__ import annotations

import os
import time
from typing import Any, Final

import trio

from tubeworker import Job

__all__ = ["LEDGER_ENV", "record"]

LEDGER_ENV: Final = "TUBEWORKER_RELIABILITY_LEDGER"


def _payload(job: Job) -> dict[str, Any]:
    return job.payload if isinstance(job.payload, dict) else {}


def append(event: str, job: Job) -> None:
    n = str(_payload(job).get("n", f"id{job.id}"))
    line = f"{event} {n} {job.id} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


async def record(job: Job) -> None:
    """START, sleep ``payload["sleep"]`` seconds (shielded if ``payload["shield"]``), END."""
    append("START", job)
    payload = _payload(job)
    if payload.get("fail_first") and job.attempt == 1:
        raise RuntimeError("first attempt fails (fail_first)")
    seconds = float(payload.get("sleep", 0))
    if payload.get("shield"):
        with trio.CancelScope(shield=True):
            await trio.sleep(seconds)
    else:
        await trio.sleep(seconds)
    append("END", job)
