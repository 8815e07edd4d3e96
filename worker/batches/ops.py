"""What a batch's makers, members and keepers send, as exchanges with no I/O of their own.

Each operation is a generator: it yields the commands of one round trip (a list, sent in
one write on one connection) and is sent their replies, in order; its return value is the
result. ``handles.py`` drives them on a blocking socket, the daemon on a Trio client, the
unit tests on a scripted server where any interleaving and any crash can be tried.

The invariants (docs/workflows.md#batches):

- A token is confirmed (delayed, priority 0) only while its job cannot yet run (the job is
  put parked and made runnable after): a job never ends before its token counts.
- A job's end is recorded before the job is deleted or buried: a crash in between runs
  the job again, and recording again changes nothing (delete of a gone token, bury of a
  buried one).
- A callback fires by ``kick-job`` of its parked job: beanstalkd moves a delayed job to
  ready once, so of all the clients that see a batch complete, exactly one fires it.
- Whoever ends the last pending token (a job, or the close) sees the counts at zero after
  its own change: beanstalkd runs commands one at a time, so the last change is followed
  by a ``stats-tube`` that sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from tubeworker.batches.model import (
    _OPENER_BODY,
    _TOKEN_BODY,
    KINDS,
    PARKED,
    TENTATIVE,
    TIMERS_TUBE,
    TOKEN_TTR,
    BatchRef,
    Counts,
    Kind,
    Manifest,
    batch_tube,
    read_timer,
    timer_body,
)
from tubeworker.beanstalk import protocol as p

__all__ = [
    "BatchError",
    "Callback",
    "Exchange",
    "Opened",
    "Status",
    "add_job",
    "close_batch",
    "expire",
    "open_batch",
    "read_status",
    "record_burial",
    "record_success",
]

T = TypeVar("T")
R = TypeVar("R", bound=p.Reply)
Exchange = Generator[list[p.Command], list[p.Reply], T]
_SWEEP_LIMIT = 10_000  # jobs a keeper deletes from one batch per pass


class BatchError(Exception):
    """beanstalkd answered a batch's command with something it cannot go on from."""


@dataclass(frozen=True, slots=True)
class Callback:
    """A callback job, ready to park: its tube, body, priority and TTR (task for show)."""

    tube: str
    task: str
    body: bytes
    priority: int = p.DEFAULT_PRIORITY
    ttr: int = p.DEFAULT_TTR


@dataclass(frozen=True, slots=True)
class Opened:
    """A batch just opened: what its jobs carry, and what closes it."""

    id: str
    opener: int
    callbacks: Mapping[Kind, int]
    manifest: int
    timer: int

    opened: int = 0

    def ref(self, token: int) -> BatchRef:
        return BatchRef(self.id, token, self.opener, self.callbacks, self.opened)


def _expect(reply: p.Reply, kind: type[R], doing: str) -> R:
    if not isinstance(reply, kind):
        raise BatchError(f"{doing}: beanstalkd answered {reply!r}")
    return reply


def open_batch(
    batch_id: str,
    callbacks: Mapping[Kind, Callback],
    *,
    retention: int,
    description: str = "",
) -> Exchange[Opened]:
    """Open a batch: its timer first (so a maker that dies here leaves nothing the keeper
    cannot find), its parked callbacks, its opener, its manifest (buried)."""
    tube = batch_tube(batch_id)
    (_, timer) = yield [p.Use(TIMERS_TUBE), p.Put(timer_body(batch_id, retention), 0, retention)]
    timer_id = _expect(timer, p.Inserted, "putting the batch's timer").id
    parked: dict[Kind, int] = {}
    shown: dict[Kind, tuple[int, str, str]] = {}
    for kind in KINDS:
        callback = callbacks.get(kind)
        if callback is None:
            continue
        (_, put) = yield [
            p.Use(callback.tube),
            p.Put(callback.body, callback.priority, PARKED, callback.ttr),
        ]
        parked[kind] = _expect(put, p.Inserted, f"parking the {kind} callback").id
        shown[kind] = (parked[kind], callback.tube, callback.task)
    (_, opener) = yield [p.Use(tube), p.Put(_OPENER_BODY, 0, PARKED, TOKEN_TTR)]
    opener_id = _expect(opener, p.Inserted, "putting the batch's opener").id
    manifest = Manifest(batch_id, time.time(), opener_id, shown, retention, description, timer_id)
    (put,) = yield [p.Put(manifest.body(), 0, 0, TOKEN_TTR)]
    manifest_id = _expect(put, p.Inserted, "putting the batch's manifest").id
    (reserved, buried, _) = yield [
        p.ReserveJob(manifest_id),
        p.Bury(manifest_id, 0),
        p.Use("default"),  # a tube some connection uses is never freed
    ]
    _expect(reserved, p.Reserved, "keeping the batch's manifest")
    _expect(buried, p.Buried, "keeping the batch's manifest")
    return Opened(batch_id, opener_id, parked, manifest_id, timer_id, int(manifest.created))


def add_job(
    opened: BatchRef,
    tube: str,
    make_body: Callable[[BatchRef], bytes],
    *,
    priority: int,
    ttr: int,
) -> Exchange[int]:
    """Put a job in the batch (``opened``: the batch's ref, any token): a tentative token,
    held; the job, parked; then, in one write, the token confirmed and the job kicked
    (``kick-job``: ready at its priority, and written to the binlog). Returns the job's id.

    A maker that dies before the last write leaves its token ready at the tentative
    priority, counted for nothing, and at most the job parked (never run): its retry (the
    handler that made it runs again) puts both again."""
    (_, token) = yield [p.Use(opened.tube), p.Put(_TOKEN_BODY, TENTATIVE, 0, TOKEN_TTR)]
    token_id = _expect(token, p.Inserted, "putting the job's batch token").id
    body = make_body(opened.with_token(token_id))
    (held, _, put) = yield [
        p.ReserveJob(token_id),
        p.Use(tube),
        p.Put(body, priority, PARKED, ttr),
    ]
    _expect(held, p.Reserved, "holding the job's batch token")
    if isinstance(put, p.Buried):
        raise BatchError("beanstalkd buried the job at put (out of memory)")
    job_id = _expect(put, p.Inserted, "putting the job").id
    (confirmed, kicked) = yield [p.Release(token_id, 0, PARKED), p.KickJob(job_id)]
    _expect(confirmed, p.Released, "confirming the job's batch token")
    _expect(kicked, p.Kicked, "letting the job go")
    return job_id


def _fire(callbacks: Mapping[Kind, int], kinds: tuple[Kind, ...]) -> Exchange[tuple[Kind, ...]]:
    """Kick each parked callback of ``kinds``: the ones this call fired (KICKED)."""
    wanted = [kind for kind in kinds if kind in callbacks]
    if not wanted:
        return ()
    replies = yield [p.KickJob(callbacks[kind]) for kind in wanted]
    return tuple(
        kind for kind, reply in zip(wanted, replies, strict=True) if isinstance(reply, p.Kicked)
    )


def close_batch(ref: BatchRef) -> Exchange[tuple[Kind, ...]]:
    """No more jobs from the maker (jobs of the batch may still add some): delete the
    opener and fire what is due now. Returns the callbacks this close fired."""
    (_, stats) = yield [p.Delete(ref.opener), p.StatsTube(ref.tube)]
    counts = Counts.of(stats)
    due = counts.due()
    if counts.buried:
        due = ("death", *due)
    return (yield from _fire(ref.callbacks, due))


def record_success(ref: BatchRef) -> Exchange[tuple[Kind, ...]]:
    """The job succeeded: its token goes, and the batch fires what that completes."""
    (_, stats) = yield [p.Delete(ref.token), p.StatsTube(ref.tube)]
    return (yield from _fire(ref.callbacks, Counts.of(stats).due()))


def record_burial(ref: BatchRef) -> Exchange[tuple[Kind, ...]]:
    """The job is buried: its token is buried too (held by id, then buried), ``death``
    fires if the batch is closed, and what that completes. A token already gone (the job
    succeeded before: this is a repeat) or never confirmed changes nothing."""
    (token,) = yield [p.StatsJob(ref.token)]
    if not isinstance(token, p.JobStats) or token.pri >= TENTATIVE:
        return ()
    (held,) = yield [p.ReserveJob(ref.token)]
    if not isinstance(held, p.Reserved):  # another run of the job is recording it
        return ()
    (buried, opener, stats) = yield [
        p.Bury(ref.token, 0),
        p.StatsJob(ref.opener),
        p.StatsTube(ref.tube),
    ]
    _expect(buried, p.Buried, "burying the job's batch token")
    due = Counts.of(stats).due()
    if isinstance(opener, p.NotFound):  # closed: death may fire
        due = ("death", *due)
    return (yield from _fire(ref.callbacks, due))


# ---- reading and forgetting


@dataclass(frozen=True, slots=True)
class Status:
    """What ``tubeworker batch ID`` shows."""

    id: str
    counts: Counts
    manifest: Manifest | None
    open: bool
    fired: Mapping[Kind, bool]  # each callback: fired (True) or parked (False)


def read_status(batch_id: str) -> Exchange[Status | None]:
    """A batch's state, read without changing it; None when the server has no such batch."""
    tube = batch_tube(batch_id)
    (stats,) = yield [p.StatsTube(tube)]
    if not isinstance(stats, p.TubeStats) or not _holds_jobs(stats):
        return None  # (a tube kept only by a client's use of it holds no batch)
    # Back to the default tube after: a tube used by a connection is never freed.
    (_, first, _) = yield [p.Use(tube), p.PeekBuried(), p.Use("default")]
    manifest = Manifest.read(first.body) if isinstance(first, p.Found) else None
    counts = Counts.of(stats)
    if manifest is None:
        return Status(batch_id, counts, None, open=True, fired={})
    kinds = list(manifest.callbacks)
    replies = yield [
        p.StatsJob(manifest.opener),
        *(p.StatsJob(manifest.callbacks[kind][0]) for kind in kinds),
    ]
    fired = {
        kind: not (isinstance(reply, p.JobStats) and reply.state == "delayed" and not reply.kicks)
        for kind, reply in zip(kinds, replies[1:], strict=True)
    }
    return Status(batch_id, counts, manifest, isinstance(replies[0], p.JobStats), fired)


def _holds_jobs(stats: p.TubeStats) -> bool:
    return any(
        (
            stats.current_jobs_ready,
            stats.current_jobs_reserved,
            stats.current_jobs_delayed,
            stats.current_jobs_buried,
        )
    )


def expire(timer: p.Reserved) -> Exchange[str]:
    """The keeper's turn at a batch whose timer came due (``timer`` reserved by this
    connection): forget it if it is complete (its unfired callbacks deleted, its tube
    emptied), or drop it if it was never closed, or wait one more retention for its
    pending jobs. Returns what was done, for the log."""
    read = read_timer(timer.body)
    if read is None:
        yield [p.Delete(timer.id)]
        return "not a batch timer: deleted"
    batch_id, retention = read
    status = yield from read_status(batch_id)
    if status is None:
        yield [p.Delete(timer.id)]
        return "gone"
    if status.manifest is not None and not status.open and status.counts.pending > 0:
        yield [p.Release(timer.id, 0, retention)]
        return f"{status.counts.pending} jobs pending: kept for another {retention} s"
    what = "complete: forgotten"
    if status.open:
        what = "never closed: dropped"
    if status.manifest is not None:
        for job_id, _, _ in status.manifest.callbacks.values():
            yield from _drop_parked(job_id)
    left = yield from _empty_tube(batch_tube(batch_id))
    if left:
        yield [p.Release(timer.id, 0, 1)]
        return f"{what} ({left} jobs still to delete)"
    yield [p.Delete(timer.id)]
    return what


def _drop_parked(job_id: int) -> Exchange[None]:
    """Delete a callback that never fired; one that fired (or is running) is left alone."""
    (held,) = yield [p.ReserveJob(job_id)]
    if not isinstance(held, p.Reserved):
        return
    (stats,) = yield [p.StatsJob(job_id)]
    if isinstance(stats, p.JobStats) and stats.kicks == 0 and stats.delay == PARKED:
        yield [p.Delete(job_id)]
    else:  # fired: back to ready as it was
        yield [p.Release(job_id, stats.pri if isinstance(stats, p.JobStats) else 0, 0)]


def _empty_tube(tube: str) -> Exchange[int]:
    """Delete every job of a batch's tube (the manifest last); how many were left over."""
    yield [p.Use(tube)]
    deleted = 0
    for peek in (p.PeekReady(), p.PeekDelayed(), p.PeekBuried()):
        while deleted < _SWEEP_LIMIT:
            (found,) = yield [peek]
            if not isinstance(found, p.Found):
                break
            yield [p.Delete(found.id)]
            deleted += 1
    yield [p.Use("default")]
    if deleted < _SWEEP_LIMIT:
        return 0
    (stats,) = yield [p.StatsTube(tube)]
    return Counts.of(stats).pending + (1 if isinstance(stats, p.TubeStats) else 0)
