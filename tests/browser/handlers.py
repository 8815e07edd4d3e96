"""Handlers for the browser tests, loaded by the daemon subprocess through [handlers].

Each run appends "<event> <n>" to the file named by TUBEWORKER_TEST_RUNLOG (O_APPEND writes
of one short line are atomic), so the test can see what ran across processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio
from pydantic import BaseModel

from tubeworker import Bury, Job, handler


def _log(event: str, n: object) -> None:
    fd = os.open(os.environ["TUBEWORKER_TEST_RUNLOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event} {n}\n".encode())
    finally:
        os.close(fd)


def _seen(event: str, n: object) -> bool:
    path = Path(os.environ["TUBEWORKER_TEST_RUNLOG"])
    return path.exists() and f"{event} {n}" in path.read_text().splitlines()


async def bury_once(job: Job) -> None:
    """Buried with a reason on its first run; done when it runs again (after a kick)."""
    n = job.payload["n"]
    if not _seen("buried", n):
        _log("buried", n)
        raise Bury(f"customer {n} has no address on file")
    _log("end", n)


class Welcome(BaseModel):
    user_id: int
    email: str


@handler(payload=Welcome)
async def typed_welcome(job: Job) -> None:
    """A typed task: the dashboard's put dialog checks its payload before sending."""
    _log("end", job.payload.user_id)


async def work(job: Job) -> None:
    """Done (after ``sleep`` seconds, when the payload says so)."""
    await trio.sleep(job.payload.get("sleep", 0))
    _log("end", job.payload["n"])


async def bury_always(job: Job) -> None:
    """Buried with a reason, every time."""
    _log("buried", job.payload["n"])
    raise Bury(f"job {job.payload['n']} cannot be done")


def _charge(card: str) -> None:
    raise ValueError(f"card {card} declined")


@handler(max_attempts=1)
async def fail_hard(job: Job) -> None:
    """Fails on its one attempt: buried with the handler's traceback."""
    _charge(str(job.payload["n"]))
