"""Deadlines and touch schedules of running jobs (pure functions)."""

from __future__ import annotations

import pytest

from tubeworker.job import handler
from tubeworker.runtime.run import handler_timeout, touch_interval


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
