"""What needs an operator, in a real browser: a daemon with two beanstalkd servers and a
fleet-wide limit, the second server killed. The page says on every view that the limit is
degraded (and why), and the APIs view's fleet-limits table shows the tokens in reach; once
the server is back, both go quiet again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import require_beanstalkd
from tests.browser.page import DEADLINE, Page
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

RATE = 10


@contextlib.contextmanager
def two_servers_and_a_fleet_limit(workdir: Path) -> Iterator[tuple[str, BeanstalkdProcess]]:
    """The control plane's URL and the second server (the test kills it)."""
    with BeanstalkdProcess() as first, BeanstalkdProcess() as second:
        config = workdir / "worker.toml"
        config.write_text(
            "\n".join(
                [
                    "[worker]",
                    f'servers = ["{first.address}", "{second.address}"]',
                    "drain_timeout = 5",
                    "[handlers]",
                    '"work" = "tests.browser.handlers:work"',
                    "[api.partner]",
                    'hosts = ["partner.invalid"]',
                    f"rate = {RATE}",
                    "fleet = true",
                    "[[pool]]",
                    'tubes = ["troubles"]',
                    "concurrency = 2",
                    "[control]",
                    "metrics_interval = 0.3",
                ]
            )
            + "\n"
        )
        port = free_port()
        daemon = DaemonProcess(config, workdir)
        try:
            daemon.start("--control", f"127.0.0.1:{port}")
            daemon.wait_ready()
            yield f"http://127.0.0.1:{port}", second
        finally:
            daemon.stop()


def troubles(page: Page) -> list[str]:
    """The warnings shown above the view (none while the box is hidden)."""
    if page.js("return document.getElementById('troubles').hidden"):
        return []
    said: list[str] = page.js(
        "return [...document.querySelectorAll('#troubles p')].map(p => p.textContent)"
    )
    return said


def limit_state(page: Page) -> str | None:
    row = "#fleet-limits tr[data-limit='partner']"
    state: str | None = page.js(
        f"const td = document.querySelector(\"{row} td[data-col='state']\");"
        "return td ? td.textContent : null"
    )
    return state


def test_given_a_server_of_a_fleet_limit_killed_then_every_view_says_the_limit_is_degraded(
    browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    require_beanstalkd()
    with two_servers_and_a_fleet_limit(tmp_path) as (base, second):
        page = Page(browser, base, screenshots)
        page.open("#/apis")
        wait_until_sync(lambda: limit_state(page) == "ok", timeout=DEADLINE, what="the limit ok")
        assert troubles(page) == []

        second.kill9()
        wait_until_sync(lambda: troubles(page), timeout=DEADLINE, what="the page's warning")
        (said,) = troubles(page)
        assert said.startswith("Fleet limit degraded: partner: server down: ")
        assert second.address in said
        assert f"{RATE // 2} of {RATE} tokens in reach" in said
        page.go("#/apis")
        wait_until_sync(
            lambda: (limit_state(page) or "").startswith("degraded"),
            timeout=DEADLINE,
            what="the fleet-limits row degraded",
        )
        reach = page.js(
            "return document.querySelector(\"#fleet-limits tr[data-limit='partner']\")"
            ".children[3].textContent"
        )
        assert reach == str(RATE // 2)
        page.shot("fleet-limit-degraded")
        for view in ("#/overview", "#/workers", "#/buried"):  # said on every view
            page.go(view)
            assert troubles(page), view

        second.restart()
        wait_until_sync(lambda: not troubles(page), timeout=30, what="the warning gone")
        assert page.script_errors() == []
