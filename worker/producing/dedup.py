"""Enqueue-time de-duplication on beanstalkd alone: best effort, with a race window.

``enqueue(..., id="order-42-receipt", unique_for="10m")`` puts the job only if no job with
that id was put in the last ``unique_for``. beanstalkd has no "put if absent", so this is a
check then a write: the job is put, then a marker for its id (a delayed job in tube
``tubeworker.dedup.<hash of the id>``, its body the job's id, delayed ``unique_for``); an
enqueue that finds a delayed marker is a duplicate and returns the first job's id. Two
producers that check at the same instant both put: the window is the time between one's
check and its marker (about two round trips; docs/unique.md has the figure measured). A
marker whose delay has run out turns ready: it is expired, and the next enqueue of that id
(or the daemon's sweeper) deletes it. Markers live on the producer's first server; when
that server cannot be asked, the job is put without the check (and said so in the log).

Sans-I/O: :func:`check` and :func:`mark` are the round trips, as generators that yield
each write's commands and are sent its replies; the producers drive them over their own
connections (``tubeworker.batches.drive``). Both leave the connection using the marker tube.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator

from tubeworker.beanstalk import protocol as p

__all__ = [
    "DEDUP_PREFIX",
    "check",
    "dedup_tube",
    "found_duplicate",
    "mark",
    "mark_commands",
]

Steps = Generator[list[p.Command], list[p.Reply], int | None]

DEDUP_PREFIX = "tubeworker.dedup."
MAX_EXPIRED = 10  # expired markers of one id deleted per enqueue


def dedup_tube(key: str) -> str:
    return DEDUP_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:40]


def check_commands(tube: str) -> list[p.Command]:
    """What the check sends first: the marker tube's counts."""
    return [p.StatsTube(tube)]


def found_duplicate(found: p.Reply) -> int | None:
    """The first job's id from a peeked delayed marker (0 when its body says none)."""
    if not isinstance(found, p.Found):
        return None
    try:
        return int(found.body)
    except ValueError:
        return 0


def mark_commands(job_id: int, seconds: int) -> list[p.Command]:
    """The marker, put in the marker tube (already used) after the job."""
    return [p.Put(str(int(job_id)).encode(), 0, seconds, 1)]  # int(): a Receipt prints as one


def check(key: str) -> Steps:
    """The first job's id if ``key``'s marker is there, else None; expired markers of it
    (ready ones) are deleted on the way."""
    tube = dedup_tube(key)
    (stats,) = yield check_commands(tube)
    if not isinstance(stats, p.TubeStats):
        return None  # no marker tube: never put, or all gone
    (used,) = yield [p.Use(tube)]
    if not isinstance(used, p.Using):
        return None
    if stats.current_jobs_delayed:
        (found,) = yield [p.PeekDelayed()]
        return found_duplicate(found)
    for _ in range(min(stats.current_jobs_ready, MAX_EXPIRED)):
        (found,) = yield [p.PeekReady()]
        if not isinstance(found, p.Found):
            break
        yield [p.Delete(found.id)]
    return None


def mark(key: str, job_id: int, seconds: int) -> Steps:
    """Put ``key``'s marker for ``job_id``, delayed ``seconds``."""
    (used,) = yield [p.Use(dedup_tube(key))]
    if isinstance(used, p.Using):  # never a marker in another tube
        yield mark_commands(job_id, seconds)
    return None
