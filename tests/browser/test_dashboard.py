"""The dashboard in a real browser: headless Chromium (Debian's) driven by Selenium, against
a real beanstalkd and a real daemon (``tubeworker run`` with its control plane and a token
file). Every wait is on a condition with a deadline; the views' screenshots are saved."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import greenstalk
import httpx
import pytest

from tests.browser.conftest import TOKEN, Fleet
from tests.browser.page import DEADLINE, Page, client, envelope, tube_stats, tube_view
from tests.support.waiting import wait_until_sync
from tubeworker.burials import records_tube

pytestmark = pytest.mark.slow


@pytest.fixture
def page(browser: Any, fleet: Fleet, screenshots: Path) -> Iterator[Page]:
    page = Page(browser, fleet.base, screenshots)
    yield page
    assert page.script_errors() == []


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


def test_given_ready_jobs_no_worker_watches_then_the_page_says_so(fleet: Fleet, page: Page) -> None:
    # Given 32 ready jobs in a tube nobody watches, and 1 in a tube a connection watches
    with client(fleet, "nobody-home") as c:
        for n in range(32):
            c.put(f"job {n}")
    with client(fleet, "somebody-home") as watcher:  # watches it, never reserves
        watcher.put("waits for its worker's turn")
        page.open()

        def backlog(tube: str) -> str | None:
            cells = page.row(f"{fleet.server.address}|{tube}")
            return None if cells is None else cells["backlog"]

        # Then the overview says it plainly (it used to show only the ∞ of jobs not moving)
        wait_until_sync(lambda: backlog("nobody-home") == "no worker", what="no worker")
        wait_until_sync(lambda: backlog("somebody-home") == "\u221e", what="watched: not moving")

        def unwatched_on_server() -> int:  # as beanstalkd says it (this probe watches neither)
            with greenstalk.Client(
                (fleet.server.host, fleet.server.port), watch="probe-watcher"
            ) as probe:
                tubes = [t for t in probe.tubes() if not t.startswith("tubeworker.")]
                stats = [probe.stats_tube(t) for t in tubes]
            return sum(
                1 for st in stats if st["current-jobs-ready"] > 0 and st["current-watching"] == 0
            )

        wait_until_sync(
            lambda: page.card("totals", "no-worker") == str(unwatched_on_server()),
            what="the count of tubes no worker watches",
        )
        page.go(tube_view(fleet, "nobody-home"))
        wait_until_sync(lambda: page.js("return !document.getElementById('tube-unwatched').hidden"))
        assert page.text("#tube-unwatched").startswith(
            "No worker watches this tube: its 32 ready jobs wait until one does"
        )
        assert page.card("tube-counts", "watching") == "0"
        page.go(tube_view(fleet, "somebody-home"))
        wait_until_sync(lambda: page.card("tube-counts", "watching") == "1", what="1 watching")
        assert page.js("return document.getElementById('tube-unwatched').hidden")


def seconds_shown(text: str) -> float:
    """ "130 ms" or "1.25 s" (as the page shows run times) in seconds."""
    value, unit = text.split()
    return float(value) / 1000 if unit == "ms" else float(value)


def test_given_jobs_run_then_the_workers_view_shows_each_handlers_rate_and_run_time(
    fleet: Fleet, page: Page
) -> None:
    # Given ten jobs of the `work` handler that take 0.2 s each
    ns = set(range(100, 110))
    with client(fleet, "browser-sentinel") as c:
        for n in sorted(ns):
            c.put(json.dumps({"task": "work", "payload": {"n": n, "sleep": 0.2}}))
    wait_until_sync(lambda: ns <= set(fleet.runs("end")), timeout=DEADLINE, what="the jobs")
    # When the Workers view is open
    page.open("#/workers")

    def cell(col: str) -> str | None:
        text: str | None = page.js(
            'const td = document.querySelector(`#handlers tr[data-handler="work"] '
            'td[data-col="${arguments[0]}"]`); return td ? td.textContent : null;',
            col,
        )
        return text

    # Then the handler's totals are the daemon's, with its rate and run time of the minute
    def done_per_status() -> str:
        work = httpx.get(f"{fleet.base}/status", timeout=5).json()["handlers"]["work"]
        return str(work["outcomes"]["deleted"])

    wait_until_sync(lambda: cell("done") == done_per_status(), what="work's done total")
    wait_until_sync(lambda: cell("done-rate") not in (None, "\u2013"), what="work's rate")
    assert float(cell("done-rate") or 0) > 0
    mean = seconds_shown(cell("run-mean") or "")
    assert 0.1 <= mean < 5  # mostly 0.2 s runs (a few instant ones of other tests)
    within = cell("run-p95") or ""
    assert within.startswith("\u2264 ")  # "≤ 250 ms": the bucket 95 % of the runs fell in
    assert seconds_shown(within[2:]) >= 0.2
    assert cell("failed") == "0"
    page.shot("workers")


def test_given_tubeworkers_own_tubes_then_the_overview_hides_them_and_never_sums_them(
    fleet: Fleet, page: Page
) -> None:
    # Given a tube of tubeworker's own: the burial record the daemon writes
    with client(fleet, "browser-fail") as c:
        c.put(envelope("bury_always", 200))
    records = records_tube("browser-fail")
    wait_until_sync(lambda: 200 in fleet.runs("buried"), timeout=DEADLINE, what="the burial")

    def jobs_in(tube: str) -> int:
        try:
            return int(tube_stats(fleet, tube)["current-jobs-ready"]) + int(
                tube_stats(fleet, tube)["current-jobs-buried"]
            )
        except greenstalk.NotFoundError:
            return 0

    wait_until_sync(lambda: jobs_in(records) > 0, timeout=DEADLINE, what="the record")

    def sums(internal: bool) -> dict[str, str]:
        """The totals beanstalkd reports over the tubes of work (with tubeworker's own)."""
        with client(fleet) as c:
            tubes = [t for t in c.tubes() if internal or not t.startswith("tubeworker.")]
            stats = [c.stats_tube(t) for t in tubes]
        return {
            state: str(sum(int(st[f"current-jobs-{state}"]) for st in stats))
            for state in ("ready", "delayed", "buried")
        }

    def cards() -> dict[str, str]:
        return {state: page.card("totals", state) for state in ("ready", "delayed", "buried")}

    page.open()
    key = f"{fleet.server.address}|{records}"
    # Then the overview shows only the tubes of work, and its totals are theirs
    wait_until_sync(lambda: cards() == sums(False), what="totals without tubeworker's tubes")
    assert sums(False) != sums(True)  # the record is a job: summing it would show
    assert page.row(key) is None
    assert "of tubeworker's own hidden" in page.text("#page-info")
    # When asked, they are listed, marked, and still not summed
    page.click("#show-internal")
    wait_until_sync(lambda: page.row(key) is not None, what="the records tube listed")
    assert "tubeworker's" in page.text(f'#tubes tr[data-key="{key}"] td[data-col="tube"]')
    assert cards() == sums(False)
    page.click("#show-internal")
    wait_until_sync(lambda: page.row(key) is None, what="hidden again")


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


def test_given_a_typed_task_then_the_put_dialog_refuses_a_bad_payload_naming_the_field(
    fleet: Fleet, page: Page
) -> None:
    page.open(tube_view(fleet, "browser-sentinel"))
    page.set_token(TOKEN)

    def put(body: str) -> None:
        page.click("#tube-put")
        wait_until_sync(lambda: page.js("return document.getElementById('put-dialog').open"))
        field = page.driver.find_element("css selector", "#put-body")
        field.clear()
        field.send_keys(body)
        page.click("#put-send")
        page.confirm()

    before = tube_stats(fleet, "browser-sentinel")["total-jobs"]
    put('{"task": "typed_welcome", "payload": {"user_id": "nope"}}')
    wait_until_sync(
        lambda: page.js("return document.body.dataset.lastAction") == "failed",
        what="the refusal",
    )
    toast = page.text("#toast")
    assert "payload.user_id: input should be a valid integer" in toast
    assert "payload.email: field required" in toast
    assert tube_stats(fleet, "browser-sentinel")["total-jobs"] == before  # nothing sent

    put('{"task": "typed_welcome", "payload": {"user_id": 77, "email": "a@example.org"}}')
    wait_until_sync(lambda: 77 in fleet.runs("end"), what="the valid job run")
