"""The job browser on a tube's view, in a real browser: list a tube's jobs by state, search
their bodies, put one again, move a state's jobs to another tube (with the token)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import greenstalk
import pytest

from tests.browser.conftest import TOKEN, Fleet
from tests.browser.page import DEADLINE, Page, client, tube_stats, tube_view
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

TUBE = "browse-me"  # no pool works it: its jobs stay put


def delayed_in(fleet: Fleet, tube: str) -> int:
    try:
        return int(tube_stats(fleet, tube)["current-jobs-delayed"])
    except greenstalk.NotFoundError:  # not made yet
        return 0


def rows(page: Page) -> int:
    return int(page.js("return document.querySelectorAll('#jobs tbody tr[data-job]').length"))


def test_list_search_put_again_and_move_a_tubes_jobs(
    fleet: Fleet, browser: Any, screenshots: Path
) -> None:
    with client(fleet, TUBE) as beanstalk:
        for n in range(30):
            note = "needle" if n % 6 == 0 else "hay"
            beanstalk.put(json.dumps({"task": "x", "payload": {"n": n, "note": note}}))
        beanstalk.put("later", delay=3600)
    page = Page(browser, fleet.base, screenshots)
    page.open(tube_view(fleet, TUBE))
    page.set_token(TOKEN)
    page.click("#jobs-list")
    wait_until_sync(lambda: rows(page) == 31, timeout=DEADLINE, what="31 jobs listed")
    page.js("document.getElementById('jobs-grep').value = 'needle'")
    page.click("#jobs-list")
    wait_until_sync(lambda: rows(page) == 5, timeout=DEADLINE, what="the 5 needles")
    page.shot("browse")

    page.click("#jobs tbody tr[data-job] button[data-action='put-again']")
    page.confirm()
    wait_until_sync(lambda: tube_stats(fleet, TUBE)["total-jobs"] == 32, what="put again")

    page.js("document.getElementById('jobs-grep').value = ''")
    page.js("document.getElementById('jobs-state').value = 'delayed'")
    page.js("document.getElementById('jobs-move-to').value = 'moved-here'")
    page.click("#jobs-move")
    page.confirm()
    wait_until_sync(lambda: delayed_in(fleet, "moved-here") == 1, what="the delayed job moved")
    assert tube_stats(fleet, TUBE)["current-jobs-delayed"] == 0
    assert page.script_errors() == []
