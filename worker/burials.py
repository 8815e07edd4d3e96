"""Why a job was buried, kept in beanstalkd itself.

beanstalkd stores no reason for a burial. When the daemon buries a job (and beanstalkd has
confirmed it), it puts a small JSON *record* into a companion tube nobody works on,
``tubeworker.buried.<TUBE>``: the buried job's id, its creation time (to recognise the
same job after ids are reused), the cause, the reason and the attempt. The record lives as
long as beanstalkd keeps its jobs (with ``-b``, across restarts), whichever worker buried
the job, and survives the worker.

Reading the records never consumes them: a reader reserves them all on one connection,
reads them, and closes the connection, which hands them straight back to beanstalkd. A
record whose job is no longer buried (kicked, deleted, or its id reused) is stale and is
deleted by the reader. Each companion tube is bounded (``MAX_RECORDS``): the oldest records
go first. Pattern pools never watch ``tubeworker.*`` tubes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Final

import greenstalk

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client

__all__ = [
    "MAX_RECORDS",
    "PREFIX",
    "BurialRecord",
    "read_records",
    "records_tube",
    "write_record",
]

PREFIX: Final = "tubeworker.buried."
MAX_RECORDS: Final = 10_000  # per tube: past it, the oldest records are deleted
_MAX_REASON: Final = 1000
_CLOCK_SLACK: Final = 3.0  # seconds: creation times recomputed from ages agree this well


@dataclass(frozen=True, slots=True)
class BurialRecord:
    job_id: int
    tube: str
    created_at: float  # wall time the job was put (now - its age): tells a reused id apart
    buried_at: float
    cause: str
    reason: str
    attempt: int
    record_id: int = 0  # the record's own job id (set when read)

    def to_body(self) -> bytes:
        data = asdict(self)
        data.pop("record_id")
        return json.dumps(data, separators=(",", ":")).encode()

    def describes(self, stats: p.JobStats, now: float) -> bool:
        """True if ``stats`` is the buried job this record is about (not a reused id)."""
        same_job = abs((now - stats.age) - self.created_at) <= _CLOCK_SLACK
        return stats.state == "buried" and stats.tube == self.tube and same_job


def records_tube(tube: str) -> str:
    """The companion tube of ``tube`` (a hash keeps it within the 200-byte name limit)."""
    name = PREFIX + tube
    if len(name) <= 200:
        return name
    digest = hashlib.sha256(tube.encode()).hexdigest()[:16]
    return PREFIX + tube[: 200 - len(PREFIX) - 17] + "~" + digest


async def write_record(client: Client, record: BurialRecord) -> int:
    """Put ``record`` in its companion tube (on the job's server); returns the record's id.
    Keeps the tube within MAX_RECORDS by deleting its oldest records."""
    tube = records_tube(record.tube)
    await client.use(tube)
    record_id = await client.put(record.to_body(), priority=2**31, ttr=60)
    stats = await client.stats_tube(tube)
    excess = stats.current_jobs_ready - MAX_RECORDS
    for _ in range(max(0, excess)):
        oldest = await client.peek_ready()
        await client.delete(oldest.id)
    return record_id


def new_record(
    job_id: int, stats: p.JobStats, cause: str, reason: str, attempt: int
) -> BurialRecord:
    now = time.time()
    return BurialRecord(
        job_id=job_id,
        tube=stats.tube,
        created_at=round(now - stats.age, 3),
        buried_at=round(now, 3),
        cause=cause,
        reason=reason[:_MAX_REASON],
        attempt=attempt,
    )


async def read_records(
    client: Client, tube: str, *, limit: int = MAX_RECORDS
) -> list[tuple[BurialRecord, p.JobStats]]:
    """The records of ``tube`` whose job is still buried, each with the job's stats.

    Uses (and then closes) ``client``: records are reserved to be read and go back to
    beanstalkd when the connection closes. Stale records are deleted.
    """
    found: list[tuple[BurialRecord, p.JobStats]] = []
    try:
        await client.watch(records_tube(tube))
        await client.ignore("default")
        now = time.time()
        for _ in range(limit):
            try:
                reserved = await client.reserve(timeout=0)
            except (greenstalk.TimedOutError, greenstalk.DeadlineSoonError):
                break
            record = _decode(reserved)
            job = await _stats_or_none(client, record.job_id) if record else None
            if record is None or job is None or not record.describes(job, now):
                await client.delete(reserved.id)  # stale or garbage: cleaned up here
                continue
            found.append((record, job))
    finally:
        await client.aclose()  # the records we reserved are ready again at once
    return found


def _decode(reserved: p.Reserved) -> BurialRecord | None:
    try:
        data = json.loads(reserved.body)
        return BurialRecord(**data, record_id=reserved.id)
    except (ValueError, TypeError):
        return None


async def _stats_or_none(client: Client, job_id: int) -> p.JobStats | None:
    try:
        return await client.stats_job(job_id)
    except greenstalk.NotFoundError:
        return None
