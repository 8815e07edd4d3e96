"""Recording outcomes: what a reply beanstalkd did not apply as asked turns into."""

from __future__ import annotations

from structlog.testing import capture_logs

from tubeworker.beanstalk import protocol as p
from tubeworker.observe.counters import JobCounters
from tubeworker.runtime.outcome import BuryJob, Cause, DeleteJob, ReleaseJob, ReturnJob
from tubeworker.runtime.outcome_log import Finished, OutcomeLog, command_for, unapplied

STATS = p.JobStats(7, "jobs", "reserved", 99, 0, 0, 60, 59, 0, 1, 0, 0, 0, 0)


def finished(outcome: DeleteJob | ReleaseJob | BuryJob | ReturnJob) -> Finished:
    return Finished(outcome, 7, STATS, "h", 0.0)


def test_given_delete_answered_not_found_then_recorded_as_not_ours() -> None:
    gone = unapplied(finished(DeleteJob()), p.NotFound())
    assert isinstance(gone.outcome, ReturnJob)
    assert gone.outcome.cause is Cause.NOT_OURS


def test_given_release_answered_buried_then_recorded_as_buried_by_the_server() -> None:
    buried = unapplied(finished(ReleaseJob(5, 99, Cause.HANDLER_ERROR, "x")), p.Buried())
    assert isinstance(buried.outcome, BuryJob)
    assert buried.outcome.priority == 99
    assert buried.outcome.cause is Cause.SERVER_BURIED


def test_given_out_of_memory_then_recorded_as_refused() -> None:
    refused = unapplied(finished(BuryJob(99, Cause.HANDLER_BURY, "x")), p.OutOfMemory())
    assert isinstance(refused.outcome, ReturnJob)
    assert refused.outcome.cause is Cause.SERVER_REFUSED


def test_commands_keep_the_jobs_priority_and_whole_second_delay() -> None:
    assert command_for(DeleteJob(), 7) == p.Delete(7)
    assert command_for(ReleaseJob(3, 99, Cause.TIMEOUT, "t"), 7) == p.Release(7, 99, 3)
    assert command_for(BuryJob(99, Cause.POISON, "p"), 7) == p.Bury(7, 99)


def test_one_line_per_outcome_with_cause_and_reason_and_counters() -> None:
    import structlog

    counters = JobCounters()
    log = OutcomeLog(counters, structlog.get_logger("t"), job_lines=True)
    with capture_logs() as logs:
        log.record(finished(DeleteJob()))
        log.record(finished(BuryJob(99, Cause.UNKNOWN_TASK, "no handler registered for 'x'")))
        log.record(finished(ReturnJob(Cause.DRAIN_DEADLINE, "drain deadline passed")))
    assert [e["event"] for e in logs] == ["job done", "job buried", "job returned"]
    assert logs[1]["cause"] == "unknown_task"
    assert logs[1]["reason"] == "no handler registered for 'x'"
    assert "cause" not in logs[0]
    assert (counters.deleted, counters.buried, counters.returned) == (1, 1, 1)


def test_without_job_lines_only_counters() -> None:
    import structlog

    counters = JobCounters()
    with capture_logs() as logs:
        OutcomeLog(counters, structlog.get_logger("t"), job_lines=False).record(
            finished(DeleteJob())
        )
    assert logs == []
    assert counters.deleted == 1
