"""The dashboard with roles, in a real browser: a daemon whose ``[control]`` has a viewer's
``read_token_file`` beside the operator's ``token_file``. Opened with no token, the page
asks for one (its reads answer 401); a viewer who logs in sees the data, live, with no
action offered and job bodies withheld; an action sent anyway is refused (403). The
operator's token, entered in the same tab, brings the actions and the bodies back, with
``redact``'s fields masked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import TOKEN, Fleet, require_beanstalkd, running_fleet
from tests.browser.page import DEADLINE, Page, client, tube_view, visible_controls
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

VIEWER = "browser-viewer-token"
CARD = "4111 1111 1111 1111"
TUBE = "roles-parked"  # not worked: its job stays ready to be looked at
#: What a viewer may click: the reads, and the Token button (to log in as someone else).
READS = {
    "Token \u2713",  # the Token button, holding one
    "\u2039 Prev",
    "Next \u203a",
    "Peek ready",
    "Peek delayed",
    "Peek buried",
    "View",
    "#filter",
    "#per-page",
    "#show-internal",
    "List jobs",
    "More \u203a",
    "#jobs-state",
    "#jobs-grep",
}


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_beanstalkd()
    workdir = tmp_path_factory.mktemp("roles")
    (workdir / "viewer").write_text(VIEWER + "\n")
    control = (f'read_token_file = "{workdir / "viewer"}"', 'redact = ["payload.card_number"]')
    with running_fleet(workdir, token=TOKEN, control=control) as running:
        yield running


def log_in(page: Page, token: str) -> None:
    """Type the token into the dialog the page opened (or the Token button opens)."""
    if not page.js("return document.getElementById('token-dialog').open"):
        page.click("#token-button")
    page.driver.find_element("css selector", "#token-input").send_keys(token)
    page.click("#token-save")
    wait_until_sync(
        lambda: page.js("return sessionStorage.getItem('tubeworker.token')") == token,
        what="the token kept for the tab",
    )


def unexpected_errors(page: Page) -> list[str]:
    """The console's errors, but for the live events' socket refused before the login."""
    return [e for e in page.script_errors() if "/events" not in e]


def test_given_a_viewer_then_the_dashboard_shows_data_and_offers_no_action(
    browser: Any, roles: Fleet, screenshots: Path
) -> None:
    with client(roles, TUBE) as c:
        c.put(json.dumps({"task": "charge", "payload": {"card_number": CARD, "name": "Ada"}}))
    page = Page(browser, roles.base, screenshots)
    browser.get(f"{roles.base}/#/overview")
    browser.execute_script("sessionStorage.clear()")  # a tab that has no token yet
    page.open("#/overview")

    # No token: the reads are refused and the page asks for one.
    wait_until_sync(
        lambda: page.js("return document.getElementById('token-dialog').open"),
        what="the token dialog opened by a refused read",
    )
    assert page.row(f"{roles.server.address}|{TUBE}") is None  # nothing shown without it
    log_in(page, VIEWER)

    wait_until_sync(
        lambda: page.js("return document.body.dataset.actions") == "viewer",
        what="the page told it holds a viewer's token",
    )
    wait_until_sync(
        lambda: page.row(f"{roles.server.address}|{TUBE}") is not None,
        timeout=DEADLINE,
        what="the viewer's overview lists the tube",
    )
    assert page.row(f"{roles.server.address}|{TUBE}")["ready"] == "1"  # type: ignore[index]
    wait_until_sync(lambda: page.text("#live") == "● live", what="the live events, with it")
    assert page.text("#read-only") == "viewer: read-only"
    extra = set(visible_controls(page)) - READS
    assert extra == set(), f"actions shown to a viewer: {sorted(extra)}"

    page.go(tube_view(roles, TUBE))
    page.click("#peek-ready")
    wait_until_sync(lambda: page.js("return !document.getElementById('job').hidden"), what="job")
    wait_until_sync(lambda: "withheld" in page.text("#job-kind"), what="the body withheld")
    assert CARD not in page.text("#job-body")
    assert "Ada" not in page.text("#job-body")
    assert page.js("return document.getElementById('job-download').hidden")  # nothing to fetch
    extra = set(visible_controls(page)) - READS
    assert extra == set(), f"actions shown to a viewer, a job open: {sorted(extra)}"
    page.shot("viewer")

    # An action sent anyway, from the page with its token: refused, and said why.
    refused = page.driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch("/api/kick", {
          method: "POST",
          headers: {"Content-Type": "application/json",
                    Authorization: `Bearer ${sessionStorage.getItem("tubeworker.token")}`},
          body: JSON.stringify({tube: arguments[0]}),
        }).then(async (r) => done([r.status, (await r.json()).error]));
        """,
        TUBE,
    )
    assert refused == [403, "a viewer's token reads; actions need the operator's"]

    # The operator's token in the same tab: actions and bodies (masked) come back.
    log_in(page, TOKEN)
    wait_until_sync(
        lambda: page.js("return document.body.dataset.actions") == "enabled",
        what="the page told it holds the operator's token",
    )
    page.click("#peek-ready")
    wait_until_sync(lambda: '"name": "Ada"' in page.text("#job-body"), what="the body shown")
    assert '"card_number": "***"' in page.text("#job-body")
    assert CARD not in page.text("#job-body")
    assert not page.js("return document.getElementById('job-download').hidden")
    assert set(visible_controls(page)) - READS, "no action offered to the operator"
    assert unexpected_errors(page) == []
    overview = httpx.get(f"{roles.base}/api/overview", timeout=10)
    assert overview.status_code == 401  # and outside the browser, still no read without one
