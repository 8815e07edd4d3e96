"""Recording outcomes: what a reply beanstalkd did not apply as asked turns into."""

from __future__ import annotations

import datetime
import re

from structlog.testing import capture_logs

from tubeworker.beanstalk import protocol as p
from tubeworker.observe.counters import JobCounters
from tubeworker.observe.logs import _clock
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


def test_the_fast_job_line_is_the_very_line_structlog_writes() -> None:
    # The daemon's logging (JSON, batched): the job line is written directly, and must be
    # the same bytes structlog's JSON renderer gives (timestamps aside), for every outcome.
    import io
    import json
    import re

    import structlog

    from tubeworker.observe.logs import configure_logging, line_buffer

    outcomes = [
        (DeleteJob(), None),
        (DeleteJob(Cause.DEFERRED, 'its API is open: waits as job 9 "x" for 3 s'), None),
        (ReleaseJob(4, 99, Cause.HANDLER_ERROR, "ValueError: bad \u00e9\n"), "order-42"),
        (BuryJob(99, Cause.ATTEMPTS_EXHAUSTED, "gave up"), None),
        (ReturnJob(Cause.DRAIN_DEADLINE, "drain deadline passed"), "x\\y"),
    ]
    stream = io.StringIO()
    try:
        configure_logging("json", "info", stream=stream, batched=True)
        buffer = line_buffer()
        assert buffer is not None
        log = structlog.get_logger("tubeworker").bind(pool="p", lane=0, server="127.0.0.1:1")
        fast = OutcomeLog(JobCounters(), log, job_lines=True)
        slow = OutcomeLog(JobCounters(), log, job_lines=True)
        slow._fast = None  # the structlog path, for comparison
        for outcome, id_key in outcomes:
            for writer in (fast, slow):
                writer.record(Finished(outcome, 7, STATS, "h\u00e9", 0.0, id_key))
        buffer.flush()
    finally:
        configure_logging("json", "info")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 * len(outcomes)
    stamp = re.compile(r'"timestamp": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z"')
    duration = re.compile(r'"duration": [0-9.e-]+')
    for ours, theirs in zip(lines[::2], lines[1::2], strict=True):
        assert stamp.search(ours), ours
        assert duration.search(ours), ours
        # The same bytes, but for the moment each was written.
        same = [duration.sub("D", stamp.sub("T", line)) for line in (ours, theirs)]
        assert same[0] == same[1]
        assert json.loads(ours)["event"].startswith("job ")


def test_the_fast_job_line_stands_aside_when_structlog_is_configured_again() -> None:
    # An application (or structlog.testing.capture_logs) that configures structlog after the
    # daemon's logging must see every job line through its own processors.
    import io

    import structlog

    from tubeworker.observe.logs import configure_logging, job_lines

    try:
        configure_logging("json", "info", stream=io.StringIO(), batched=True)
        log = structlog.get_logger("tubeworker").bind(pool="p")
        assert job_lines(log) is not None
        with capture_logs() as logs:
            assert job_lines(log) is None
            OutcomeLog(JobCounters(), log, job_lines=True).record(
                Finished(DeleteJob(), 7, STATS, "h", 0.0, None)
            )
        assert [entry["event"] for entry in logs] == ["job done"]
    finally:
        configure_logging("json", "info")


def test_the_fast_lines_timestamp_has_structlogs_form() -> None:
    stamp = _clock.stamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", stamp), stamp
    ours = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(tz=datetime.UTC) - ours).total_seconds()) < 5
