"""The ``floor`` benchmark's loops do the jobs they claim (tests/bench/floor.py)."""

from __future__ import annotations

import pytest

from tests.bench import floor


@pytest.mark.parametrize("system", floor.SYSTEMS)
def test_each_system_runs_its_jobs_no_faster_than_their_waits_allow(system: str) -> None:
    result = floor._child(system, jobs=40, concurrency=10)
    # 40 jobs that wait 20 ms, 10 at a time: at least four rounds of waits.
    assert result["elapsed"] >= 4 * 0.02
    assert result["cpu"] > 0
