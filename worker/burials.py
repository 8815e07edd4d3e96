"""Why a job was buried, kept in beanstalkd itself.

beanstalkd stores no reason for a burial. When the daemon buries a job (and beanstalkd has
confirmed it), it puts a small JSON *record* into a companion tube nobody works on,
``tubeworker.buried.<TUBE>``: the buried job's id, its creation time (to recognise the
same job after ids are reused), the cause, the reason, the attempt, the job's ``kicks``
(to recognise a burial from before a kick) and, when the handler raised, its traceback.
The record lives as long as beanstalkd keeps its jobs (with ``-b``, across restarts),
whichever worker buried the job, and survives the worker.

Reading the records never consumes them: a reader reserves them all on one connection,
reads them, and closes the connection, which hands them straight back to beanstalkd. A
record whose job is no longer buried (kicked, deleted, or its id reused), or that an
earlier burial of a job left behind (the job was kicked and buried again), is stale and is
deleted by the reader: a job has at most one record, its latest. Each companion tube is
bounded (``MAX_RECORDS``): the oldest records go first. Pattern pools never watch
``tubeworker.*`` tubes.

A record's body stays under ``MAX_RECORD_BYTES``, less than half of beanstalkd's default
``max-job-size`` (65,535 bytes): the reason is cut at 1000 characters, and the traceback
keeps its last ``MAX_TRACEBACK`` characters (the frames nearest the error; fewer if its
characters are costly in JSON), always ending with the exception's line.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback as tb
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

import greenstalk

from tubeworker.beanstalk import protocol as p

if TYPE_CHECKING:
    # Only for annotations: the runner (also in compute worker processes) imports this
    # module for format_traceback and pays nothing for the client.
    from tubeworker.beanstalk.client import Client

__all__ = [
    "MAX_RECORDS",
    "MAX_RECORD_BYTES",
    "MAX_TRACEBACK",
    "PREFIX",
    "BurialRecord",
    "format_traceback",
    "new_record",
    "read_record",
    "read_records",
    "records_tube",
    "trim_traceback",
    "write_record",
]

PREFIX: Final = "tubeworker.buried."
MAX_RECORDS: Final = 10_000  # per tube: past it, the oldest records are deleted
MAX_TRACEBACK: Final = 4096  # characters: the end of the traceback is kept
MAX_RECORD_BYTES: Final = 32_000  # a record's body: under half of beanstalkd's default max
_MAX_REASON: Final = 1000
_MAX_EXCEPTION_LINE: Final = 1000  # the exception's own line, always kept, cut at this
_CUT: Final = "(earlier lines cut)\n"
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
    # The job's kicks when it was buried: a kick since makes the record stale. None in
    # records written before tubeworker kept it.
    kicks: int | None = None
    traceback: str = ""  # the handler's, when an exception it raised buried the job
    id_key: str | None = None  # the envelope's "id" (the producer's idempotency key)
    record_id: int = 0  # the record's own job id (set when read)

    def to_body(self) -> bytes:
        """The record as JSON, under MAX_RECORD_BYTES (its traceback cut shorter if
        needed: JSON escapes may take 12 bytes for one character)."""
        data = asdict(self)
        data.pop("record_id")
        if self.kicks is None:
            data.pop("kicks")
        if self.id_key is None:
            data.pop("id_key")
        keep = len(self.traceback)
        while True:
            if keep < len(self.traceback):
                data["traceback"] = _keep_end(self.traceback, keep)
            if not data["traceback"]:
                data.pop("traceback")
            body = json.dumps(data, separators=(",", ":")).encode()
            if len(body) <= MAX_RECORD_BYTES or "traceback" not in data:
                return body
            keep //= 2

    def describes(self, stats: p.JobStats, now: float) -> bool:
        """True if ``stats`` is the buried job this record is about (not a reused id, and
        not kicked since this burial)."""
        same_job = abs((now - stats.age) - self.created_at) <= _CLOCK_SLACK
        not_kicked_since = self.kicks is None or self.kicks == stats.kicks
        return stats.state == "buried" and stats.tube == self.tube and same_job and not_kicked_since


def _recency(record: BurialRecord) -> tuple[int, float, int]:
    """Orders the records of one job, latest last: each burial of a job comes after at
    least one more attempt (the bury itself counts), so the attempt decides; the burial
    time (another worker's clock) and the record's id (records are written
    asynchronously, by whichever worker buried it) only break ties."""
    return (record.attempt, record.buried_at, record.record_id)


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
    job_id: int,
    stats: p.JobStats,
    cause: str,
    reason: str,
    attempt: int,
    *,
    traceback: str = "",
    id_key: str | None = None,
) -> BurialRecord:
    """The record of a burial beanstalkd confirmed; ``stats`` are the job's as it was
    reserved (its kicks do not change while it is reserved)."""
    now = time.time()
    return BurialRecord(
        job_id=job_id,
        tube=stats.tube,
        created_at=round(now - stats.age, 3),
        buried_at=round(now, 3),
        cause=cause,
        reason=reason[:_MAX_REASON],
        attempt=attempt,
        kicks=stats.kicks,
        traceback=traceback,
        id_key=id_key,
    )


# --------------------------------------------------------------------------- tracebacks


def format_traceback(exc: BaseException, limit: int = MAX_TRACEBACK) -> str:
    """``exc``'s traceback as Python prints it (with its causes), in at most about
    ``limit`` characters: the frames nearest the error are kept, and the exception's own
    line always (cut at 1000 characters)."""
    formatted = tb.TracebackException.from_exception(exc)
    return trim_traceback(
        "".join(formatted.format()), "".join(formatted.format_exception_only()), limit
    )


def trim_traceback(text: str, last: str, limit: int = MAX_TRACEBACK) -> str:
    """``text`` cut to its end (whole lines) to fit ``limit``, keeping ``last`` (the
    exception line it ends with; an exception group's tree ends with its sub-exceptions
    instead, and is only cut)."""
    if len(text) <= limit:
        return text
    if last and text.endswith(last):
        text = text[: -len(last)]
        if len(last) > _MAX_EXCEPTION_LINE:
            last = last[: _MAX_EXCEPTION_LINE - 2] + "…\n"
    else:
        last = ""
    return _keep_end(text, max(0, limit - len(last) - len(_CUT)), cut=True) + last


def _keep_end(text: str, size: int, *, cut: bool = False) -> str:
    """The last ``size`` characters of ``text``, from the start of a frame (else of a
    line), after a note that lines were cut (``cut``: even when it is all there is)."""
    if len(text) <= size and not cut:
        return text
    start = len(text) - min(size, len(text))
    if start > 0:
        frame = text.find("\n  File ", start - 1)
        line = text.find("\n", start - 1)
        chosen = frame if frame >= 0 else line
        start = len(text) if chosen < 0 else chosen + 1
    return _CUT + text[start:]


# --------------------------------------------------------------------------- reading


async def read_records(
    client: Client, tube: str, *, limit: int = MAX_RECORDS
) -> list[tuple[BurialRecord, p.JobStats]]:
    """The latest record of each job of ``tube`` that is still buried (at most ``limit``
    jobs), each with the job's stats.

    Uses (and then closes) ``client``: records are reserved to be read and go back to
    beanstalkd when the connection closes. Stale records are deleted: those whose job is
    no longer buried, and those a later record of the same job supersedes.
    """
    latest: dict[int, tuple[BurialRecord, p.JobStats]] = {}
    try:
        await client.watch(records_tube(tube))
        await client.ignore("default")
        now = time.time()
        for _ in range(MAX_RECORDS + limit):  # records put meanwhile cannot keep us here
            if len(latest) >= limit:
                break
            reserved = await _next_record(client)
            if reserved is None:
                break
            record = _decode(reserved)
            if record is None:
                await client.delete(reserved.id)  # garbage: cleaned up here
                continue
            kept = latest.get(record.job_id)
            job = kept[1] if kept else await _stats_or_none(client, record.job_id)
            if job is None or not record.describes(job, now):
                await client.delete(reserved.id)  # stale: cleaned up here
                continue
            if kept is not None:
                older, record = sorted((kept[0], record), key=_recency)
                await client.delete(older.record_id)  # superseded: cleaned up here
            latest[record.job_id] = (record, job)
    finally:
        await client.aclose()  # the records we reserved are ready again at once
    return list(latest.values())


async def read_record(client: Client, job_id: int, stats: p.JobStats) -> BurialRecord | None:
    """The latest record of buried job ``job_id`` (``stats``: its stats now), if it has
    one. Uses (and then closes) ``client`` as :func:`read_records` does; the job's stale
    records are deleted, other jobs' records are left as they are."""
    found: BurialRecord | None = None
    try:
        await client.watch(records_tube(stats.tube))
        await client.ignore("default")
        now = time.time()
        for _ in range(MAX_RECORDS * 2):  # records put meanwhile cannot keep us here
            reserved = await _next_record(client)
            if reserved is None:
                break
            record = _decode(reserved)
            if record is not None and record.job_id != job_id:
                continue
            if record is None or not record.describes(stats, now):
                await client.delete(reserved.id)
                continue
            if found is not None:
                older, record = sorted((found, record), key=_recency)
                await client.delete(older.record_id)
            found = record
    finally:
        await client.aclose()
    return found


async def _next_record(client: Client) -> p.Reserved | None:
    try:
        return await client.reserve(timeout=0)
    except (greenstalk.TimedOutError, greenstalk.DeadlineSoonError):
        return None


# Each field and the types it may have; a record missing any but the optional ones (not
# in older records) is garbage.
_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "job_id": (int,),
    "tube": (str,),
    "created_at": (int, float),
    "buried_at": (int, float),
    "cause": (str,),
    "reason": (str,),
    "attempt": (int,),
    "kicks": (int, type(None)),
    "traceback": (str,),
    "id_key": (str, type(None)),
}
_OPTIONAL: Final = frozenset({"kicks", "traceback", "id_key"})


def _decode(reserved: p.Reserved) -> BurialRecord | None:
    """The record in a body, or None for garbage. Fields a later version adds are
    ignored, so that records it writes are not taken for garbage (and deleted)."""
    try:
        data = json.loads(reserved.body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    values: dict[str, Any] = {}
    for name, types in _FIELDS.items():
        if name not in data:
            if name in _OPTIONAL:
                continue
            return None
        value = data[name]
        if not isinstance(value, types) or isinstance(value, bool):
            return None
        values[name] = value
    return BurialRecord(**values, record_id=reserved.id)


async def _stats_or_none(client: Client, job_id: int) -> p.JobStats | None:
    try:
        return await client.stats_job(job_id)
    except greenstalk.NotFoundError:
        return None
