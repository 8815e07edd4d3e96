"""Shared fixtures: a real beanstalkd per test, in memory or with a binlog."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.beanstalkd import BeanstalkdMissing, BeanstalkdProcess, find_beanstalkd

# Properties are judged on their examples, never on the clock: a loaded machine (CI, a
# benchmark beside it) made an example's first call (pydantic building a validator) pass
# hypothesis's default 200 ms deadline and fail a correct property.
settings.register_profile("tubeworker", deadline=None)
settings.load_profile("tubeworker")


def _require_beanstalkd() -> None:
    try:
        find_beanstalkd()
    except BeanstalkdMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI must have it: integration tests cannot be skipped there)")
        pytest.skip(str(exc))


@pytest.fixture
def beanstalkd() -> Iterator[BeanstalkdProcess]:
    """A fresh in-memory beanstalkd on a free loopback port, stopped by PID afterwards."""
    _require_beanstalkd()
    with BeanstalkdProcess() as server:
        yield server


@pytest.fixture
def beanstalkd_binlog(tmp_path: Path) -> Iterator[BeanstalkdProcess]:
    """A beanstalkd with a binlog (`-b`, `-f 0`): restart()/kill9() keep acknowledged jobs."""
    _require_beanstalkd()
    binlog = tmp_path / "binlog"
    binlog.mkdir()
    with BeanstalkdProcess(binlog_dir=binlog, fsync_ms=0) as server:
        yield server
