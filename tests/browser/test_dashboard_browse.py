"""The job browser on a tube's view, in a real browser: list a tube's jobs by state, search
their bodies, put one again, move a state's jobs to another tube (with the token)."""

from __future__ import annotations

import json
import urllib.parse
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


def test_a_bulk_move_stopped_midway_leaves_each_job_in_one_tube_or_the_other(
    fleet: Fleet, browser: Any, screenshots: Path
) -> None:
    source, target = "move-from", "move-to"
    with client(fleet, source) as beanstalk:
        for n in range(1000):
            beanstalk.put(f"job {n}")
    page = Page(browser, fleet.base, screenshots)
    page.open(tube_view(fleet, source))
    page.set_token(TOKEN)
    page.js("document.getElementById('jobs-state').value = 'ready'")
    page.js(f"document.getElementById('jobs-move-to').value = '{target}'")
    page.click("#jobs-move")
    page.confirm()
    page.js("document.getElementById('jobs-move-stop').click()")  # during the first chunk
    wait_until_sync(
        lambda: "Stopped: moved" in page.text("#jobs-move-progress"), what="the move stopped"
    )
    moved = tube_stats(fleet, target)["current-jobs-ready"]
    left = tube_stats(fleet, source)["current-jobs-ready"]
    assert (moved, left) == (200, 800)  # one chunk, then the stop: every job in one tube
    bodies: list[bytes] = []
    with greenstalk.Client(
        (fleet.server.host, fleet.server.port), encoding=None, watch=[source, target]
    ) as reader:
        for _ in range(1000):
            job = reader.reserve(timeout=5)
            bodies.append(bytes(job.body))
    assert sorted(bodies) == sorted(f"job {n}".encode() for n in range(1000))  # none twice
    assert page.script_errors() == []


def test_put_templates_are_saved_in_the_browser_exported_and_imported(
    fleet: Fleet, browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    page = Page(browser, fleet.base, screenshots)
    page.open(tube_view(fleet, TUBE))
    page.js("localStorage.removeItem('tubeworker.templates')")

    def open_put() -> None:
        page.click("#tube-put")
        wait_until_sync(lambda: page.js("return document.getElementById('put-dialog').open"))

    open_put()
    page.js(
        'document.getElementById(\'put-body\').value = \'{"task": "report", "payload": {}}\';'
        "document.getElementById('put-priority').value = '7';"
        "document.getElementById('put-template-name').value = 'nightly report';"
    )
    page.js("document.getElementById('put-template-save').click()")
    page.js("document.getElementById('put-dialog').close('cancel')")
    page.driver.refresh()  # a new page: the template is still there
    page.open(tube_view(fleet, TUBE))
    open_put()
    page.js(
        "const s = document.getElementById('put-template'); s.value = 'nightly report';"
        "s.dispatchEvent(new Event('change'));"
    )
    assert page.js("return document.getElementById('put-priority').value") == "7"
    assert "report" in page.js("return document.getElementById('put-body').value")
    page.js("document.getElementById('put-templates-export').click()")
    href = str(page.js("return document.getElementById('put-templates-link').href"))
    exported = urllib.parse.unquote(href.split(",", 1)[1])
    assert json.loads(exported)[0]["name"] == "nightly report"

    other = tmp_path / "templates.json"
    other.write_text(json.dumps([{"name": "cleanup", "tube": "maint", "body": "{}"}]))
    page.driver.find_element("css selector", "#put-templates-import").send_keys(str(other))
    wait_until_sync(
        lambda: (
            page.js(
                "return [...document.querySelectorAll('#put-template option')].map(o => o.value)"
            )
            == ["", "cleanup", "nightly report"]
        ),
        what="the imported template listed",
    )
    page.js("document.getElementById('put-dialog').close('cancel')")
    assert page.script_errors() == []
