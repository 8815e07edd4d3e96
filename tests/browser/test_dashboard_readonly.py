"""The dashboard with no token configured, in a real browser: a daemon with no ``[control]
token_file``, and ``tubeworker dashboard`` with no ``--token-file``. No token could ever be
accepted, so the page says it is read-only and offers no action (it used to show every
button, each answered by a 401 asking for a token that cannot exist)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Fleet, require_beanstalkd, running_fleet
from tests.browser.page import (
    DEADLINE,
    Page,
    charts_agree_with_cards,
    charts_and_cards,
    client,
    envelope,
    tube_view,
    visible_controls,
)
from tests.support.beanstalkd import free_port
from tests.support.process import REPO
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

#: What a read-only page may still offer: paging, filtering, peeking, viewing a job.
READS = {
    "\u2039 Prev",  # the pagers
    "Next \u203a",
    "Peek ready",
    "Peek delayed",
    "Peek buried",
    "View",
    "#filter",
    "#per-page",
    "#show-internal",
    "List jobs",  # the job browser's reads
    "More \u203a",
    "#jobs-state",
    "#jobs-grep",
}
BADGE = "read-only (no token configured)"


@pytest.fixture(scope="module")
def readonly(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A daemon whose control plane has no token file."""
    require_beanstalkd()
    with running_fleet(tmp_path_factory.mktemp("readonly"), token=None) as running:
        yield running


def shows_no_action(page: Page, what: str) -> None:
    wait_until_sync(
        lambda: page.js("return document.body.dataset.actions") == "read-only",
        what=f"{what}: the page told it is read-only",
    )
    assert page.text("#read-only") == BADGE
    assert page.js("return document.getElementById('read-only').getClientRects().length") > 0
    extra = set(visible_controls(page)) - READS
    assert extra == set(), f"{what}: actions shown on a read-only dashboard: {sorted(extra)}"


def look_everywhere(page: Page, fleet_base: str, tube_fragment: str) -> None:
    """Every view, with a buried job's row and its detail open: nothing to act with."""
    page.open("#/overview")
    shows_no_action(page, "overview")
    wait_until_sync(  # unknown on both where nothing is known yet (a chart once drew 0.0 %)
        lambda: charts_agree_with_cards(page), what=f"charts = cards: {charts_and_cards(page)}"
    )
    page.open(tube_fragment)
    wait_until_sync(
        lambda: page.js("return document.querySelectorAll('#buried tr[data-job]').length") > 0,
        timeout=DEADLINE,
        what="the buried job listed",
    )
    page.click('#buried tr[data-job] button[data-action="view"]')
    wait_until_sync(lambda: page.js("return !document.getElementById('job').hidden"), what="job")
    shows_no_action(page, "a tube, with a job open")
    for view in ("#/workers", "#/apis", "#/buried"):
        page.go(view)
        shows_no_action(page, view)


def test_given_no_token_file_then_the_daemons_dashboard_is_read_only(
    browser: Any, readonly: Fleet, screenshots: Path
) -> None:
    with client(readonly, "browser-fail") as c:
        c.put(envelope("bury_always", 1))
    wait_until_sync(lambda: 1 in readonly.runs("buried"), timeout=DEADLINE, what="the burial")
    with client(readonly, "ro-paused") as c:
        c.put("waits")
        c.pause_tube("ro-paused", 600)  # the APIs view lists it (its Resume is an action)
    page = Page(browser, readonly.base, screenshots)

    look_everywhere(page, readonly.base, tube_view(readonly, "browser-fail"))
    page.go("#/workers")
    wait_until_sync(
        lambda: page.js("return !!document.querySelector('#workers tr[data-worker=\"local\"]')"),
        what="the daemon listed",
    )
    page.shot("read-only")
    assert page.script_errors() == []

    # Asked anyway (not through the page): refused, and said why.
    refused = httpx.post(f"{readonly.base}/api/kick", json={"tube": "browser-fail"}, timeout=5)
    assert refused.status_code == 403
    assert "read-only" in refused.json()["error"]
    overview = httpx.get(f"{readonly.base}/api/overview", timeout=10).json()
    assert overview["actions_enabled"] is False


def test_given_the_dashboard_alone_without_a_token_file_then_it_is_read_only(
    browser: Any, readonly: Fleet, screenshots: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUBEWORKER_")}
    with open(tmp_path / "err", "wb") as err:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tubeworker", "dashboard"),
                *("--server", readonly.server.address, "--listen", f"127.0.0.1:{port}"),
                *("--interval", "0.3"),
            ],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError((tmp_path / "err").read_text())
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until_sync(up, timeout=20, what="the dashboard's /healthz")
        with client(readonly, "browser-fail") as c:
            c.put(envelope("bury_always", 2))
        wait_until_sync(lambda: 2 in readonly.runs("buried"), timeout=DEADLINE, what="burial")
        page = Page(browser, base, screenshots)
        look_everywhere(page, base, tube_view(readonly, "browser-fail"))
        assert page.script_errors() == []
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
    assert "read-only" in (tmp_path / "err").read_text()
