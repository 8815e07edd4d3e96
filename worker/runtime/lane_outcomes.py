"""The outcome side of a lane's jobs (:class:`LaneOutcomes`, LaneJobs' base): a finished
job's outcome queued for the pump, a batch job's success recorded before its delete
(docs/workflows.md#batches), beanstalkd's answer recorded, and what a lost connection
took with it."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import structlog

from tubeworker.batches.model import Counts
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address
from tubeworker.burials import new_record
from tubeworker.envelope import BatchRef, Kind
from tubeworker.runtime.excuses import Excuses
from tubeworker.runtime.outbox import Entry, Outbox
from tubeworker.runtime.outcome import BuryJob, Cause, ReturnJob
from tubeworker.runtime.outcome_log import Finished, OutcomeLog, command_for, refused, unapplied
from tubeworker.runtime.policy import attempt_number
from tubeworker.runtime.pool import Pool
from tubeworker.runtime.runs import Runs

__all__ = ["LaneOutcomes"]


class LaneOutcomes:
    """What LaneJobs does with outcomes; its attributes are LaneJobs'."""

    pool: Pool
    address: Address
    outbox: Outbox
    log: structlog.typing.FilteringBoundLogger
    outcomes: OutcomeLog
    excuses: Excuses
    runs: Runs
    server_id: str  # the server's instance id once connected
    must_close: bool  # a job was returned: close the connection when idle
    confirmed: int  # outcomes beanstalkd confirmed on this connection

    def _send_in_batch(self, finished: Finished, batch: BatchRef) -> None:
        """A batch job's success, recorded before its delete (docs/workflows.md#batches)
        on this connection: its token deleted and its batch counted in one write; that
        reply read, the callbacks it completes kicked and the job deleted in the next."""
        self.outbox.queue(Entry(p.Delete(batch.token)))
        counted = partial(self._counted, batch, finished)
        self.outbox.queue(Entry(p.StatsTube(batch.tube), finishes=finished, then=counted))

    def _counted(self, batch: BatchRef, finished: Finished, reply: p.Reply) -> list[Entry]:
        due = [kind for kind in Counts.of(reply).due() if kind in batch.callbacks]
        entries = [
            Entry(p.KickJob(batch.callbacks[kind]), then=partial(self._kicked, batch, kind))
            for kind in due
        ]
        outcome = finished.outcome
        assert not isinstance(outcome, ReturnJob)
        return [*entries, Entry(command_for(outcome, finished.job_id), finishes=finished)]

    def _kicked(self, batch: BatchRef, kind: Kind, reply: p.Reply) -> list[Entry]:
        if isinstance(reply, p.Kicked):  # this process fired it (others saw NOT_FOUND)
            self.pool.services.batches.fired(batch, (kind,))
        return []

    def _send(self, finished: Finished) -> None:
        outcome = finished.outcome
        assert not isinstance(outcome, ReturnJob)
        entry = Entry(command_for(outcome, finished.job_id), finishes=finished)
        self.outbox.queue_outcome(entry, running=len(self.runs))

    def confirm(self, command: p.Command, reply: p.Reply, finished: Finished) -> None:
        """beanstalkd answered an outcome: record what really happened to the job."""
        if not _applied(command, reply):
            refused(self.log, command, reply)
            if isinstance(reply, p.OutOfMemory | p.InternalError):
                # No binlog room (docs/beanstalkd.md#b3): hold failures from now on.
                verb = type(command).__name__.lower()
                self.pool.services.binlog(self.address).refused(verb, finished.job_id)
            self.outcomes.record(unapplied(finished, reply))
            return
        self.confirmed += 1
        self.outcomes.record(finished)
        outcome = finished.outcome
        records = self.pool.services.records
        if records is not None and isinstance(outcome, BuryJob):
            stats = finished.stats
            record = new_record(
                finished.job_id,
                stats,
                outcome.cause.value,
                outcome.detail,
                attempt_number(stats),
                traceback=outcome.traceback,
                id_key=finished.id_key,
            )
            records.add(self.address, record)
        if self.excuses and not isinstance(command, p.Release):
            self.excuses.forget(self.server_id, finished.job_id)

    def connection_ended(self) -> int:
        """Account for what the connection took with it; returns how many outcomes it
        never confirmed (their jobs are beanstalkd's again)."""
        owed = 0
        for entry in self.outbox.lost():  # sent unanswered, or never sent
            if entry.slot is not None:
                entry.slot.release()
            if entry.finishes is not None:
                owed += 1
                verb = type(entry.command).__name__.lower()
                detail = f"connection lost before beanstalkd confirmed the {verb}"
                outcome = ReturnJob(Cause.UNCONFIRMED, detail)
                self.outcomes.record(replace(entry.finishes, outcome=outcome))
                self.excuses.add(self.server_id, entry.finishes.job_id)
        self.must_close = False
        return owed


def _applied(command: p.Command, reply: p.Reply) -> bool:
    """True if beanstalkd did what the outcome command asked."""
    return (
        (isinstance(command, p.Delete) and isinstance(reply, p.Deleted))
        or (isinstance(command, p.Release) and isinstance(reply, p.Released))
        or (isinstance(command, p.Bury) and isinstance(reply, p.Buried))
    )
