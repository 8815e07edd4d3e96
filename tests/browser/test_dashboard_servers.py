"""The dashboard's Servers view in a real browser: a daemon with two beanstalkd servers
shows each one's version, connections, jobs and binlog; the second killed -9 is 'down'
with why at the next read, and 'up' again once it is back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import require_beanstalkd
from tests.browser.page import DEADLINE, Page
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow


def health(page: Page, server: str) -> str:
    page.go("#/overview")  # the view reads /api/servers when it opens
    page.go("#/servers")
    return str(page.js(
        "const c = document.querySelector(`#servers-table tr[data-server='${arguments[0]}']"
        " [data-col='health']`); return c ? c.textContent : '';",
        server,
    ))  # fmt: skip


def test_the_servers_view_shows_each_beanstalkd_and_a_dead_one(
    browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    require_beanstalkd()
    binlog = tmp_path / "binlog"
    binlog.mkdir()
    with BeanstalkdProcess(binlog_dir=binlog) as first, BeanstalkdProcess() as second:
        config = tmp_path / "worker.toml"
        config.write_text(
            f'[worker]\nservers = ["{first.address}", "{second.address}"]\n'
            '[[pool]]\ntubes = ["work"]\n[control]\nmetrics_interval = 0.3\n'
        )
        port = free_port()
        daemon = DaemonProcess(config, tmp_path)
        try:
            daemon.start("--control", f"127.0.0.1:{port}")
            daemon.wait_ready()
            page = Page(browser, f"http://127.0.0.1:{port}", screenshots)
            page.open("#/servers")
            for server in (first, second):
                wait_until_sync(lambda s=server: health(page, s.address) == "up",  # type: ignore[misc]
                                timeout=DEADLINE, what=f"{server.address} up")  # fmt: skip
            row = page.text(f"#servers-table tr[data-server='{first.address}']")
            assert "file(s)" in row  # its binlog
            assert "working" in row
            page.shot("servers")
            second.kill9()
            wait_until_sync(lambda: health(page, second.address) == "down", timeout=DEADLINE,
                            what="the killed server down")  # fmt: skip
            assert health(page, first.address) == "up"

            # Its history: points before, a gap while it is down (never a zero), points
            # after; and the page draws each server's three series.
            def connections() -> list[float | None]:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/servers", timeout=5).json()
                (row,) = [r for r in answer["servers"] if r["server"] == second.address]
                return list(row["history"]["connections"])

            wait_until_sync(lambda: connections()[-1:] == [None], timeout=DEADLINE,
                            what="a gap in its history while it is down")  # fmt: skip
            assert connections()[0] is not None  # it was up at first: a point
            second.restart()
            wait_until_sync(lambda: health(page, second.address) == "up", timeout=DEADLINE,
                            what="back up")  # fmt: skip
            wait_until_sync(lambda: connections()[-1] is not None, timeout=DEADLINE,
                            what="points again once it is back")  # fmt: skip
            page.go("#/overview")
            page.go("#/servers")
            wait_until_sync(
                lambda: (
                    page.js("return document.querySelectorAll('#servers-history figure').length")
                    == 6
                ),
                what="three charts per server",
            )
            assert page.script_errors() == []
        finally:
            daemon.stop()
