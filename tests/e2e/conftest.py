"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.process import DaemonProcess


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Every daemon a test starts goes in here and is stopped by PID at teardown."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()
