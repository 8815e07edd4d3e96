"""Pure parts of lanes: how a pool is split into connections, and deadlines."""

from __future__ import annotations

import pytest
from tubeworker.job import handler
from tubeworker.runtime.lane import handler_timeout, lane_sizes, touch_interval


@pytest.mark.parametrize(
    ("concurrency", "per_connection", "servers", "sizes"),
    [
        (200, 50, 1, [50, 50, 50, 50]),
        (30, 7, 1, [6, 6, 6, 6, 6]),
        (10, 50, 1, [10]),
        (4, 50, 2, [2, 2]),  # at least one lane per server
        (1, 50, 3, [1]),  # but never an empty lane
        (5, 1, 1, [1, 1, 1, 1, 1]),  # one job per connection
    ],
)
def test_lane_sizes(concurrency: int, per_connection: int, servers: int, sizes: list[int]) -> None:
    assert lane_sizes(concurrency, per_connection, servers) == sizes


async def _noop(job: object) -> None:
    pass


@pytest.mark.parametrize(
    ("options", "pool_timeout", "ttr", "expected"),
    [
        ({}, None, 60, 59.0),  # default: TTR minus the margin
        ({"timeout": 10}, None, 60, 10),
        ({"timeout": 100}, None, 60, 59.0),  # never past TTR - margin
        ({}, 5.0, 60, 5.0),  # the pool's timeout
        ({}, None, 1, 0.5),  # a TTR of 1 keeps half of it
        ({"long_running": True}, None, 2, None),  # touched: no limit
        ({"long_running": True, "timeout": 30}, None, 2, 30),
    ],
)
def test_handler_timeout(
    options: dict[str, object], pool_timeout: float | None, ttr: int, expected: float | None
) -> None:
    spec = handler(**options)(_noop).__tubeworker_handler__  # type: ignore[arg-type,attr-defined]
    assert handler_timeout(spec, pool_timeout, ttr, 1.0) == expected


def test_touch_interval_is_well_inside_the_ttr() -> None:
    assert touch_interval(2, 1.0) == 1.0
    assert touch_interval(60, 1.0) == 30.0
    assert touch_interval(1, 1.0) == 0.25


def _finished(outcome: object) -> object:
    from tubeworker.beanstalk import protocol as p
    from tubeworker.runtime.lane import _Finished

    stats = p.JobStats(7, "jobs", "reserved", 99, 0, 0, 60, 59, 0, 1, 0, 0, 0, 0)
    return _Finished(outcome, 7, stats, "h", 0.0)  # type: ignore[arg-type]


def test_an_outcome_beanstalkd_did_not_apply_is_recorded_as_what_happened() -> None:
    from tubeworker.beanstalk import protocol as p
    from tubeworker.runtime.lane import _unapplied
    from tubeworker.runtime.outcome import BuryJob, DeleteJob, ReleaseJob, ReturnJob

    # A delete answered NOT_FOUND: the job was no longer ours; nothing we did ended it.
    gone = _unapplied(_finished(DeleteJob()), p.NotFound())  # type: ignore[arg-type]
    assert gone.outcome == ReturnJob("not applied: beanstalkd answered NotFound")
    # A release the server could only do as a bury (out of memory): it is buried.
    buried = _unapplied(_finished(ReleaseJob(5, 99, "x")), p.Buried())  # type: ignore[arg-type]
    assert isinstance(buried.outcome, BuryJob)
    assert buried.outcome.priority == 99
