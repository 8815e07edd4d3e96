"""Fixtures of the reliability suite.

``TUBEWORKER_RELIABILITY=long`` scales the scenarios up (more jobs, more faults: a few
minutes); by default they run short, as part of ``make test``. Every process a scenario
starts (daemons, proxies; beanstalkd comes from tests/conftest.py) is stopped by the
fixture that made it, by PID.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tests.reliability.ledger import Ledger
from tests.reliability.proxy import Proxy
from tests.support.process import DaemonProcess

T = TypeVar("T")

LONG = os.environ.get("TUBEWORKER_RELIABILITY", "").strip().lower() == "long"


@dataclass(frozen=True)
class Scale:
    """Counts and durations for the short (default) or long run."""

    long: bool

    def pick(self, short: T, long: T) -> T:
        return long if self.long else short


@pytest.fixture(scope="session")
def scale() -> Scale:
    return Scale(LONG)


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Every daemon a test starts goes in here and is stopped by PID at teardown."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


@pytest.fixture
def make_proxy() -> Iterator[Callable[[str], Proxy]]:
    """``make_proxy("host:port")``: a running proxy, stopped at teardown."""
    proxies: list[Proxy] = []

    def make(upstream: str) -> Proxy:
        proxy = Proxy(upstream).start()
        proxies.append(proxy)
        return proxy

    yield make
    errors = []
    for proxy in proxies:
        proxy.stop()
        errors += proxy.errors
    assert not errors, f"the proxy hit unexpected errors: {errors}"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.log")
