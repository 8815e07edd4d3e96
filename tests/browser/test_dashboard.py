"""The dashboard in a real browser: headless Chromium (Debian's) driven by Selenium, against
a real beanstalkd and a real daemon (``tubeworker run`` with its control plane and a token
file). Every wait is on a condition with a deadline; the views' screenshots are saved."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import greenstalk
import httpx
import pytest

from tests.browser.conftest import TOKEN, Fleet
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

DEADLINE = 10.0  # seconds for anything the page should show "within a few seconds"


class Page:
    """The dashboard as a user sees it, through the driver."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots

    def js(self, script: str, *args: object) -> Any:
        return self.driver.execute_script(script, *args)

    def open(self, fragment: str = "#/overview") -> None:
        self.driver.get(f"{self.base}/{fragment}")
        wait_until_sync(
            lambda: self.js("return document.body.dataset.ready") == "1",
            timeout=DEADLINE,
            what="the page's first data",
        )

    def go(self, fragment: str) -> None:
        """Another view of the same page (no reload)."""
        self.js("location.hash = arguments[0]", fragment)
        view = fragment[2:].split("/")[0]
        wait_until_sync(
            lambda: self.js("return document.body.dataset.view") == view, what=f"view {view}"
        )

    def click(self, css: str) -> None:
        """Click, again if the live page redrew the element between finding and clicking."""
        from selenium.common.exceptions import StaleElementReferenceException

        def clicked() -> bool:
            try:
                self.driver.find_element("css selector", css).click()
            except StaleElementReferenceException:
                return False
            return True

        wait_until_sync(clicked, what=f"a click on {css}")

    def confirm(self) -> None:
        wait_until_sync(
            lambda: self.js("return document.getElementById('confirm').open"),
            what="the confirmation dialog",
        )
        self.click("#confirm-yes")

    def set_token(self, token: str) -> None:
        self.click("#token-button")
        self.driver.find_element("css selector", "#token-input").send_keys(token)
        self.click("#token-save")
        wait_until_sync(
            lambda: self.js("return sessionStorage.getItem('tubeworker.token')") == token,
            what="the token kept in sessionStorage",
        )

    def forget_token(self) -> None:
        self.click("#token-button")
        self.click("#token-forget")
        wait_until_sync(
            lambda: self.js("return sessionStorage.getItem('tubeworker.token')") is None,
            what="the token forgotten",
        )

    def row(self, key: str) -> dict[str, str] | None:
        """The overview's cells of one tube (``server|tube``), or None if not shown."""
        result: dict[str, str] | None = self.js(
            """
            const tr = document.querySelector(`#tubes tr[data-key="${CSS.escape(arguments[0])}"]`);
            if (!tr) return null;
            const cells = {};
            for (const td of tr.querySelectorAll("td[data-col]")) {
              cells[td.dataset.col] = td.textContent;
            }
            return cells;
            """,
            key,
        )
        return result

    def buried_rows(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = self.js(
            """
            return [...document.querySelectorAll("#buried tr[data-job]")].map((tr) => ({
              id: tr.dataset.job,
              cause: tr.querySelector('td[data-col="cause"]').textContent,
              reason: tr.querySelector('td[data-col="reason"]').textContent,
            }));
            """
        )
        return rows

    def card(self, container: str, name: str) -> str:
        text: str = self.js(
            'const c = document.querySelector(`#${arguments[0]} [data-card="${arguments[1]}"] '
            ".card-value`); return c ? c.textContent : null;",
            container,
            name,
        )
        return text

    def text(self, css: str) -> str:
        value: str = self.js("return document.querySelector(arguments[0]).textContent", css)
        return value

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def script_errors(self) -> list[str]:
        """Errors in the console, but for answers the page expects (a refused action's 401,
        a peek's 404): those are shown to the user and are part of the tests."""
        entries = self.driver.get_log("browser")
        return [
            e["message"]
            for e in entries
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
        ]


@pytest.fixture
def page(browser: Any, fleet: Fleet, screenshots: Path) -> Iterator[Page]:
    page = Page(browser, fleet.base, screenshots)
    yield page
    assert page.script_errors() == []


def client(fleet: Fleet, tube: str = "default") -> greenstalk.Client:
    return greenstalk.Client((fleet.server.host, fleet.server.port), use=tube, watch=tube)


def tube_stats(fleet: Fleet, tube: str) -> dict[str, Any]:
    with client(fleet) as c:
        return dict(c.stats_tube(tube))


def tube_view(fleet: Fleet, tube: str) -> str:
    return f"#/tube/{quote(fleet.server.address, safe='')}/{quote(tube, safe='')}"


def envelope(task: str, n: int) -> str:
    return json.dumps({"task": task, "payload": {"n": n}})


def test_given_tubes_on_the_server_then_the_overview_shows_what_stats_tube_reports(
    fleet: Fleet, page: Page
) -> None:
    with client(fleet, "shown-a") as c:
        c.put("a1")
        c.put("a2", priority=0)  # urgent
        c.put("a3")
        c.put("later", delay=600)
        c.put("later too", delay=600)
        c.use("shown-b")
        c.put("b1")
        c.put("b2")
        c.watch("shown-b")
        c.ignore("shown-a")
        c.bury(c.reserve(timeout=5))
        c.pause_tube("shown-b", 300)

    page.open()

    def shown_as_reported() -> bool:
        for tube in ("shown-a", "shown-b"):
            cells = page.row(f"{fleet.server.address}|{tube}")
            stats = tube_stats(fleet, tube)
            expected = {
                col: str(stats[f"current-jobs-{col}"])
                for col in ("ready", "reserved", "delayed", "buried", "urgent")
            }
            if cells is None or {k: cells[k] for k in expected} != expected:
                return False
            if (stats["pause-time-left"] > 0) != cells["paused"].endswith("left"):
                return False
        return True

    wait_until_sync(shown_as_reported, timeout=DEADLINE, what="the counts stats-tube reports")
    with client(fleet) as c:
        tubes = [t for t in c.tubes() if not t.startswith("tubeworker.")]
    wait_until_sync(
        lambda: page.card("totals", "tubes") == str(len(tubes)), what="the number of tubes"
    )
    cells = page.row(f"{fleet.server.address}|shown-a")
    assert cells is not None
    assert (cells["ready"], cells["urgent"], cells["delayed"]) == ("3", "1", "2")  # a2 is urgent
    page.shot("overview")
    page.go("#/buried")  # the tubes with buried jobs
    key = f"{fleet.server.address}|shown-b"
    wait_until_sync(
        lambda: page.js(
            'return !!document.querySelector(`#buried-tubes tr[data-key="${arguments[0]}"]`)',
            key,
        ),
        what="shown-b among the tubes with buried jobs",
    )


def test_given_a_job_a_handler_buries_then_it_appears_with_its_reason_and_a_kick_runs_it(
    fleet: Fleet, page: Page
) -> None:
    page.open(tube_view(fleet, "browser-bury"))
    page.set_token(TOKEN)
    page.js("window.__sameDocument = 'yes'")  # gone if the page were reloaded

    with client(fleet, "browser-bury") as c:
        job_id = c.put(envelope("bury_once", 1))
    started = time.monotonic()

    def listed() -> bool:
        return any(r["id"] == str(job_id) for r in page.buried_rows())

    wait_until_sync(listed, timeout=DEADLINE, what="the buried job in the list")
    shown_after = time.monotonic() - started
    row = next(r for r in page.buried_rows() if r["id"] == str(job_id))
    assert row["reason"] == "customer 1 has no address on file"
    assert row["cause"] == "handler_bury"
    assert page.js("return window.__sameDocument") == "yes"
    assert shown_after < DEADLINE
    page.click(f'#buried tr[data-job="{job_id}"] button[data-action="view"]')
    wait_until_sync(
        lambda: '"task": "bury_once"' in page.text("#job-body"),
        what="the job's body, pretty-printed",
    )
    page.shot("tube-buried")

    page.click(f'#buried tr[data-job="{job_id}"] button[data-action="kick-job"]')
    page.confirm()
    wait_until_sync(lambda: 1 in fleet.runs("end"), timeout=DEADLINE, what="the kicked job to run")

    def deleted() -> bool:  # the handler's line comes just before the worker's delete
        with client(fleet) as c:
            try:
                c.stats_job(job_id)
            except greenstalk.NotFoundError:
                return True
        return False

    wait_until_sync(deleted, timeout=DEADLINE, what="the job deleted by the worker")
    wait_until_sync(lambda: page.buried_rows() == [], what="the list without the job")
    wait_until_sync(  # the daemon's log line of the action (lines are written in batches)
        lambda: any(
            a["action"] == "kick-job" and a["id"] == job_id
            for a in fleet.log_events("dashboard action")
        ),
        what="the action's log line",
    )


def test_given_a_tube_paused_from_the_page_then_its_jobs_wait_until_it_is_resumed(
    fleet: Fleet, page: Page
) -> None:
    page.open(tube_view(fleet, "browser-pause"))
    page.set_token(TOKEN)
    field = page.driver.find_element("css selector", "#tube-pause-seconds")
    field.clear()
    field.send_keys("120")
    page.click("#tube-pause")
    page.confirm()
    wait_until_sync(
        lambda: tube_stats(fleet, "browser-pause")["pause-time-left"] > 0,
        what="the tube paused on the server",
    )
    wait_until_sync(
        lambda: (page.card("tube-counts", "paused") or "").endswith("left"),
        what="the page showing the pause",
    )

    with client(fleet, "browser-pause") as c:
        c.put(envelope("work", 2))
        c.use("browser-sentinel")
        c.put(envelope("work", 3))
    # The sentinel, put after, runs: the daemon reserved since, and skipped the paused tube.
    wait_until_sync(lambda: 3 in fleet.runs("end"), timeout=DEADLINE, what="the sentinel job")
    assert 2 not in fleet.runs("end")
    assert tube_stats(fleet, "browser-pause")["current-jobs-ready"] == 1
    wait_until_sync(
        lambda: (
            page.card("tube-counts", "ready") == "1"
            and "paused from the dashboard" in page.text("#tube-pause-reason")
        ),
        timeout=DEADLINE,
        what="the waiting job and why the tube is paused, on the page",
    )
    page.shot("tube-paused")

    page.click("#tube-resume")
    page.confirm()
    wait_until_sync(lambda: 2 in fleet.runs("end"), timeout=DEADLINE, what="the job after resume")

    def logged() -> list[object]:
        actions = [a for a in fleet.log_events("dashboard action") if a["action"] == "pause"]
        return [a["seconds"] for a in actions][-2:]

    wait_until_sync(lambda: logged() == ["120", 0], what="both actions' log lines")


def test_given_no_token_then_an_action_from_the_page_is_refused(fleet: Fleet, page: Page) -> None:
    with client(fleet, "refused") as c:
        c.put("x")
        c.watch("refused")
        c.ignore("default")
        c.bury(c.reserve(timeout=5))
    page.open(tube_view(fleet, "refused"))
    page.forget_token()
    page.click("#tube-kick-all")
    page.confirm()
    wait_until_sync(
        lambda: page.js("return document.body.dataset.lastAction") == "refused",
        what="the refusal",
    )
    assert "Refused (401)" in page.text("#toast")
    assert tube_stats(fleet, "refused")["current-jobs-buried"] == 1
    # The same from outside the page: no token, or a wrong one.
    url = f"{fleet.base}/api/kick"
    assert httpx.post(url, json={"tube": "refused"}, timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(url, json={"tube": "refused"}, headers=wrong, timeout=5).status_code == 401
    assert tube_stats(fleet, "refused")["current-jobs-buried"] == 1
    wait_until_sync(
        lambda: any(e["action"] == "kick" for e in fleet.log_events("dashboard action refused")),
        what="the refusal's log line",
    )


def test_given_the_workers_view_then_the_daemon_is_listed_and_can_be_quieted(
    fleet: Fleet, page: Page
) -> None:
    page.open("#/workers")
    page.set_token(TOKEN)

    def cell(col: str) -> str | None:
        text: str | None = page.js(
            'const td = document.querySelector(`#workers tr[data-worker="local"] '
            'td[data-col="${arguments[0]}"]`); return td ? td.textContent : null;',
            col,
        )
        return text

    wait_until_sync(lambda: cell("state") == "running", what="the daemon listed, running")
    assert str(fleet.daemon.pid) in page.text("#workers")
    page.shot("workers")
    page.click('#workers tr[data-worker="local"] button[data-action="quiet"]')
    page.confirm()
    status = f"{fleet.base}/status"
    wait_until_sync(lambda: httpx.get(status, timeout=5).json()["quiet"], what="quiet")
    wait_until_sync(lambda: cell("state") == "quiet", timeout=DEADLINE, what="shown quiet")
    page.click('#workers tr[data-worker="local"] button[data-action="resume"]')
    page.confirm()
    wait_until_sync(lambda: not httpx.get(status, timeout=5).json()["quiet"], what="resumed")
    page.go("#/apis")
    page.shot("apis")


def test_given_a_handler_error_buries_a_job_then_its_panel_shows_the_traceback(
    fleet: Fleet, page: Page
) -> None:
    page.open(tube_view(fleet, "browser-bury"))
    with client(fleet, "browser-bury") as c:
        failed = c.put(envelope("fail_hard", 3))
        asked = c.put(envelope("bury_once", 4))  # buried by Bury: no traceback

    def listed() -> bool:
        return {str(failed), str(asked)} <= {r["id"] for r in page.buried_rows()}

    wait_until_sync(listed, timeout=DEADLINE, what="both buried jobs in the list")
    page.click(f'#buried tr[data-job="{failed}"] button[data-action="view"]')
    wait_until_sync(
        lambda: page.js("return !document.getElementById('job-traceback').hidden"),
        what="the traceback under the reason",
    )
    traceback = page.text("#job-traceback")
    assert traceback.startswith("Traceback (most recent call last):")
    assert ", in fail_hard" in traceback
    assert ", in _charge" in traceback
    assert traceback.endswith("ValueError: card 3 declined\n")
    page.click(f'#buried tr[data-job="{asked}"] button[data-action="view"]')
    wait_until_sync(
        lambda: page.text("#job-title").startswith(f"Job {asked} "), what="the other job"
    )
    assert page.js("return document.getElementById('job-traceback').hidden")
    with client(fleet) as c:
        c.delete(failed)
        c.delete(asked)
