"""The one place an outcome is recorded: its log line and its counters.

A lane records an outcome once it is known for sure: when beanstalkd confirmed the
command, or when the job went back to beanstalkd with the connection. So the line says
what really happened, never what we only meant to do.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

import structlog

from tubeworker.beanstalk import protocol as p
from tubeworker.frozen import frozen
from tubeworker.observe.counters import JobCounters
from tubeworker.observe.events import EventBus
from tubeworker.observe.logs import JobLines
from tubeworker.observe.logs import job_lines as job_lines_writer
from tubeworker.runtime.outcome import (
    DEFERRALS,
    BuryJob,
    Cause,
    DeleteJob,
    Outcome,
    ReleaseJob,
    ReturnJob,
)
from tubeworker.runtime.policy import attempt_number

__all__ = ["Finished", "OutcomeLog", "command_for", "refused", "unapplied"]


@frozen
class Finished:
    """A job's outcome, with what its log line needs."""

    outcome: Outcome
    job_id: int
    stats: p.JobStats
    handler: str | None
    started: float  # time.monotonic() when the job was reserved
    id_key: str | None = None  # the envelope's id (the producer's idempotency key)


class OutcomeLog:
    """Counts outcomes (by tube, handler, outcome and cause; durations by handler), tells
    live viewers, and writes one line per job (``job_lines``)."""

    __slots__ = ("_fast", "counters", "events", "job_lines", "log")

    def __init__(
        self,
        counters: JobCounters,
        log: structlog.typing.FilteringBoundLogger,
        job_lines: bool,
        events: EventBus | None = None,
    ) -> None:
        self.counters = counters
        self.log = log
        self.job_lines = job_lines
        self.events = events
        # The line written directly, the same bytes as structlog's (see observe.logs).
        self._fast = job_lines_writer(log) if job_lines else None

    def record(self, finished: Finished) -> None:
        outcome = finished.outcome
        name = self._count(outcome)
        stats = finished.stats
        handler = finished.handler or ""
        duration = time.monotonic() - finished.started
        counters = self.counters
        if counters.detailed:
            counters.outcomes[stats.tube, handler, name, outcome.cause.value] += 1
            counters.durations[handler].observe(duration)
        events = self.events
        if events is not None and events.listening:
            events.job(
                job_id=finished.job_id,
                tube=stats.tube,
                handler=handler,
                outcome=name,
                cause=outcome.cause.value,
                duration=round(duration, 4),
            )
        if self.job_lines:
            self._line(finished, name, duration)

    def _count(self, outcome: Outcome) -> str:
        """Bump the outcome's counter; its name in the log and the metrics."""
        counters = self.counters
        if isinstance(outcome, DeleteJob):
            if outcome.cause in DEFERRALS:
                counters.deferred += 1
            else:
                counters.deleted += 1
            return "deleted"
        if isinstance(outcome, ReleaseJob):
            counters.released += 1
            return "released"
        if isinstance(outcome, BuryJob):
            counters.buried += 1
            return "buried"
        counters.returned += 1
        return "returned"

    def _line(self, finished: Finished, name: str, duration: float) -> None:
        if self._fast is not None:
            self._fast_line(self._fast, finished, name, duration)
            return
        outcome, stats = finished.outcome, finished.stats
        fields: dict[str, object] = {
            "job_id": finished.job_id,
            "tube": stats.tube,
            "handler": finished.handler,
            "attempt": attempt_number(stats),
            "duration": round(duration, 4),
            "outcome": name,
        }
        if finished.id_key is not None:
            fields["id_key"] = finished.id_key
        if isinstance(outcome, DeleteJob):
            if outcome.cause in DEFERRALS:
                self.log.info(
                    "job deferred", **fields, cause=outcome.cause.value, reason=outcome.detail
                )
            elif outcome.cause is Cause.COMPLETED:
                self.log.info("job done", **fields)
            else:  # done without running again (a duplicate): say why
                self.log.info(
                    "job done", **fields, cause=outcome.cause.value, reason=outcome.detail
                )
            return
        if isinstance(outcome, ReleaseJob):
            fields["delay"] = outcome.delay
        fields["cause"] = outcome.cause.value
        fields["reason"] = outcome.detail
        self.log.warning("job " + name, **fields)

    @staticmethod
    def _fast_line(lines: JobLines, finished: Finished, name: str, duration: float) -> None:
        """The same line as :meth:`_line`'s, written directly."""
        outcome, stats = finished.outcome, finished.stats
        fields = (
            f'"job_id": {finished.job_id}, {lines.tube_and_handler(stats.tube, finished.handler)}'
            f'"attempt": {attempt_number(stats)}, '
            f'"duration": {round(duration, 4)!r}, "outcome": "{name}", '
        )
        if finished.id_key is not None:
            fields += f'"id_key": {json.dumps(finished.id_key)}, '
        if isinstance(outcome, DeleteJob):
            if outcome.cause is not Cause.COMPLETED:
                fields += f'"cause": "{outcome.cause.value}", '
                fields += f'"reason": {json.dumps(outcome.detail)}, '
            event = '"job deferred"' if outcome.cause in DEFERRALS else '"job done"'
            lines.write(logging.INFO, fields, event)
            return
        if isinstance(outcome, ReleaseJob):
            fields += f'"delay": {outcome.delay}, '
        fields += f'"cause": "{outcome.cause.value}", "reason": {json.dumps(outcome.detail)}, '
        lines.write(logging.WARNING, fields, f'"job {name}"')


def unapplied(finished: Finished, reply: p.Reply) -> Finished:
    """What became of a job whose outcome beanstalkd did not apply as asked."""
    if isinstance(reply, p.Buried):  # a release the server could only do as a bury (OOM)
        outcome: Outcome = BuryJob(
            finished.stats.pri,
            Cause.SERVER_BURIED,
            "beanstalkd buried it instead of releasing it (out of memory)",
        )
    elif isinstance(reply, p.NotFound):
        outcome = ReturnJob(
            Cause.NOT_OURS, "beanstalkd answered NOT_FOUND: the job is no longer reserved by us"
        )
    else:
        outcome = ReturnJob(
            Cause.SERVER_REFUSED, f"not applied: beanstalkd answered {type(reply).__name__}"
        )
    return replace(finished, outcome=outcome)


def command_for(outcome: DeleteJob | ReleaseJob | BuryJob, job_id: int) -> p.Command:
    if isinstance(outcome, DeleteJob):
        return p.Delete(job_id)
    if isinstance(outcome, ReleaseJob):
        return p.Release(job_id, outcome.priority, outcome.delay)
    return p.Bury(job_id, outcome.priority)


def refused(log: structlog.typing.FilteringBoundLogger, command: p.Command, reply: p.Reply) -> None:
    """Say why beanstalkd did not apply an outcome command."""
    job_id = getattr(command, "id", None)
    verb = type(command).__name__.lower()
    if isinstance(reply, p.NotFound):
        # Not ours any more (TTR expired and another worker has it): nothing to do.
        log.warning("outcome not applied: job no longer ours", job_id=job_id, command=verb)
    elif isinstance(reply, p.Buried):
        log.error("beanstalkd buried the job instead of releasing it", job_id=job_id)
    else:
        # OUT_OF_MEMORY / INTERNAL_ERROR on release/bury: the job may be orphaned on the
        # server until it restarts (docs/beanstalkd.md#b3). Never retry on that id.
        log.error(
            "outcome refused by beanstalkd", job_id=job_id, command=verb, reply=type(reply).__name__
        )
