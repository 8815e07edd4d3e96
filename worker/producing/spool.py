"""The producer's durable spool: where a job goes when no server stores it, so that an
app keeps working through a broker outage and loses no enqueue.

A spool is one SQLite file in WAL mode (the standard library has SQLite; every commit is
synced, so an app killed at any point keeps what it spooled). Jobs wait in the order they
came; a flush delivers them oldest first: it *claims* the oldest unclaimed job (one
atomic statement: marked before it is put), puts it, then deletes it. Two flushers (the
app's and ``tubeworker spool flush``) never take the same job. A flusher killed between a
put and its delete leaves its claim behind: the next flush on the same host sees that
process gone and takes the job back at once (from another host, after CLAIM_SECONDS), and
delivers it again: the only duplicate, and the envelope's ``id`` lets a consumer tell. A job's delay
counts from when it was enqueued, not from when it was delivered.

The spool is bounded (``max_bytes`` of bodies): when full, :class:`SpoolFull` is raised,
never a silent drop and never a wait.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tubeworker.producing.checks import PutRequest
from tubeworker.producing.errors import InvalidJob, JobBuried, NoServerAvailable, SpoolFull

__all__ = ["DEFAULT_MAX_BYTES", "FlushResult", "Receipt", "Spool", "SpoolStatus"]

DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
CLAIM_SECONDS: Final = 60.0  # a flusher that died mid-put: its job is free again after this
_BUSY_TIMEOUT_MS: Final = 30_000  # another flusher's put holds the write lock meanwhile

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tube TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL,
    delay INTEGER NOT NULL,
    ttr INTEGER NOT NULL,
    spooled_at REAL NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0,
    claimed_by TEXT,  -- host:pid of the flusher delivering it
    error TEXT  -- set when no server will ever take it (too big): kept, not retried
);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES ('bytes', 0);
"""


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"  # (read each time: a fork changes it)


def _gone(holder: str) -> bool:
    """Whether the flusher ``host:pid`` is a process of this host that no longer runs."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class Receipt(int):
    """What ``enqueue`` and ``put`` return: the job's id (an ``int``, as before), and
    whether it was ``spooled`` instead (then the id is 0, not known until it is delivered;
    ``spool_id`` is its place in the spool), or not put as a ``duplicate`` (``unique_for``:
    then the id is the first job's, 0 when unknown)."""

    spooled: bool
    spool_id: int | None
    duplicate: bool

    def __new__(
        cls,
        job_id: int,
        *,
        spooled: bool = False,
        spool_id: int | None = None,
        duplicate: bool = False,
    ) -> Receipt:
        receipt = super().__new__(cls, job_id)
        receipt.spooled = spooled
        receipt.spool_id = spool_id
        receipt.duplicate = duplicate
        return receipt

    def __repr__(self) -> str:
        if self.spooled:
            return f"Receipt(spooled, spool_id={self.spool_id})"
        if self.duplicate:
            return f"Receipt(duplicate of {int(self)})"
        return f"Receipt({int(self)})"


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    path: str
    jobs: int
    bytes: int
    max_bytes: int
    oldest: float | None  # when the oldest waiting job was spooled (Unix seconds)
    refused: tuple[tuple[int, str], ...] = ()  # (spool id, why) of jobs no server will take

    def oldest_age(self, now: float | None = None) -> float | None:
        if self.oldest is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.oldest)


@dataclass(frozen=True, slots=True)
class FlushResult:
    delivered: int
    left: int
    error: NoServerAvailable | None = None  # why it stopped early


class Spool:
    """One spool file. Thread-safe (one SQLite connection, behind a lock)."""

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a spooled job survives a power cut too
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.pending = self._count()  # this process's view; a flush refreshes it

    def _count(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE error IS NULL").fetchone()
        return int(count)

    def add(self, request: PutRequest, *, now: float | None = None) -> int:
        """Keep ``request``; its place in the spool. :class:`SpoolFull` when it is full."""
        size = len(request.body)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (used,) = self._db.execute("SELECT value FROM totals WHERE name='bytes'").fetchone()
                if used + size > self.max_bytes:
                    raise SpoolFull(
                        f"the spool {self.path} is full ({used} of {self.max_bytes} bytes of "
                        f"jobs waiting; this one is {size}): no server stores jobs and none "
                        "are delivered",
                        path=str(self.path),
                    )
                cursor = self._db.execute(
                    "INSERT INTO jobs (tube, body, priority, delay, ttr, spooled_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        request.tube,
                        request.body,
                        request.priority,
                        request.delay,
                        request.ttr,
                        time.time() if now is None else now,
                    ),
                )
                self._db.execute("UPDATE totals SET value = value + ? WHERE name='bytes'", (size,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.pending += 1
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def claim(self, *, now: float | None = None) -> tuple[int, PutRequest] | None:
        """The oldest job nobody is delivering, now claimed by this caller (for
        CLAIM_SECONDS); None when none waits. Its delay is what is left of it."""
        moment = time.time() if now is None else now
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET claimed_until = ?, claimed_by = ? WHERE id = (SELECT id FROM "
                "jobs WHERE claimed_until <= ? ORDER BY id LIMIT 1) "
                "RETURNING id, tube, body, priority, delay, ttr, spooled_at",
                (moment + CLAIM_SECONDS, _me(), moment),
            ).fetchone()
        if row is None:
            return None
        job_id, tube, body, priority, delay, ttr, spooled_at = row
        left = max(0, delay - max(0, int(moment - spooled_at)))
        return job_id, PutRequest(tube, bytes(body), priority, left, ttr)

    def delivered(self, job_id: int) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "DELETE FROM jobs WHERE id = ? RETURNING length(body)", (job_id,)
                ).fetchone()
                if row is not None:
                    self._db.execute(
                        "UPDATE totals SET value = MAX(0, value - ?) WHERE name='bytes'", row
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.pending = max(0, self.pending - 1)

    def unclaim(self, job_id: int) -> None:
        """Not delivered (no server stored it): free for the next flush, in its place."""
        with self._lock:
            self._db.execute("UPDATE jobs SET claimed_until = 0 WHERE id = ?", (job_id,))

    def refuse(self, job_id: int, reason: str) -> None:
        """No server will ever take it (bigger than their max-job-size): kept with the
        reason, never retried; ``tubeworker spool status`` lists it."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET claimed_until = 1e300, error = ? WHERE id = ?", (reason, job_id)
            )

    def reclaim_dead(self) -> int:
        """Free the claims of flushers of this host that are gone (killed mid-flush), so
        their jobs go next, in their place; how many were freed."""
        with self._lock:
            holders = self._db.execute(
                "SELECT DISTINCT claimed_by FROM jobs WHERE claimed_until > ? AND error IS NULL",
                (time.time(),),
            ).fetchall()
            dead = [h for (h,) in holders if h and _gone(h)]
            for holder in dead:
                self._db.execute(
                    "UPDATE jobs SET claimed_until = 0 WHERE claimed_by = ? AND error IS NULL",
                    (holder,),
                )
            return len(dead)

    def flush(self, put: Callable[[PutRequest], int], *, limit: int | None = None) -> FlushResult:
        """Deliver waiting jobs oldest first with ``put`` (which raises NoServerAvailable
        when no server stores one: the flush stops there, that job kept in its place)."""
        self.reclaim_dead()
        delivered = 0
        while limit is None or delivered < limit:
            claimed = self.claim()
            if claimed is None:
                break
            job_id, request = claimed
            try:
                put(request)
            except NoServerAvailable as exc:
                self.unclaim(job_id)
                return FlushResult(delivered, self.refresh(), exc)
            except JobBuried:
                pass  # stored (buried by a server short of memory): delivered
            except InvalidJob as exc:
                self.refuse(job_id, str(exc))
                continue
            except BaseException:
                self.unclaim(job_id)
                raise
            self.delivered(job_id)
            delivered += 1
        return FlushResult(delivered, self.refresh())

    def refresh(self) -> int:
        """How many jobs wait (this process's figure, read again)."""
        with self._lock:
            self.pending = self._count()
            return self.pending

    def status(self) -> SpoolStatus:
        with self._lock:
            count, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(spooled_at) FROM jobs WHERE error IS NULL"
            ).fetchone()
            refused = self._db.execute(
                "SELECT id, error FROM jobs WHERE error IS NOT NULL ORDER BY id LIMIT 100"
            ).fetchall()
            (used,) = self._db.execute("SELECT value FROM totals WHERE name='bytes'").fetchone()
            self.pending = int(count)
        return SpoolStatus(
            str(self.path),
            int(count),
            int(used),
            self.max_bytes,
            oldest,
            tuple((int(i), str(e)) for i, e in refused),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
