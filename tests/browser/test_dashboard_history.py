"""The dashboard's history is kept by the daemon whether or not a page is open: a first view
shows what happened before it (it used to start every chart, and the failure rate, when the
page opened), and each chart ends where its card is."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import TOKEN, require_beanstalkd, running_fleet
from tests.browser.page import (
    DEADLINE,
    Page,
    charts_agree_with_cards,
    charts_and_cards,
    client,
    envelope,
)
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

BURIED = 3


def test_given_burials_before_any_page_then_the_first_view_shows_them_in_its_history(
    browser: Any, tmp_path: Path, screenshots: Path
) -> None:
    require_beanstalkd()
    with running_fleet(tmp_path, token=TOKEN) as fleet:
        # Given jobs that fail while no page is open
        with client(fleet, "browser-fail") as c:
            for n in range(BURIED):
                c.put(envelope("bury_always", n))
        wait_until_sync(
            lambda: len(fleet.runs("buried")) == BURIED, timeout=DEADLINE, what="the burials"
        )
        buried_at = time.time()

        # Then the daemon's history has them, sampled after they happened (reading the JSON
        # is not a page: it used to start the history, and so missed what came before)
        def sampled_after() -> list[dict[str, Any]]:
            trend: list[dict[str, Any]] = httpx.get(
                f"{fleet.base}/api/overview", timeout=10
            ).json()["trend"]
            return [p for p in trend if p["at"] > buried_at and p["failure_rate"] is not None]

        wait_until_sync(lambda: bool(sampled_after()), timeout=20, what="a point after them")
        point = sampled_after()[0]
        assert (point["buried"], point["failure_rate"]) == (BURIED, 1.0)

        # When a page opens: its charts start before it, and agree with the cards
        opened = time.time()
        page = Page(browser, fleet.base, screenshots)
        page.open()
        wait_until_sync(
            lambda: charts_agree_with_cards(page), what=f"charts = cards: {charts_and_cards(page)}"
        )
        assert charts_and_cards(page)["chart-failure"] == ("100 %", "100 %")
        since = float(page.js("return document.getElementById('history-note').dataset.since"))
        assert since < buried_at < opened
        assert "since" in page.text("#history-note")
        drawn = page.js(
            "return [...document.querySelectorAll('#chart-failure polyline')]"
            ".reduce((n, l) => n + l.points.numberOfItems, 0)"
        )
        assert drawn >= 2  # the point before the page, and now
        page.shot("overview-history")
        assert page.script_errors() == []
