"""What the browser tests share: the dashboard as a user sees it (``Page``, through the
Selenium driver), and a few beanstalkd helpers. Every wait is on a condition with a
deadline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import greenstalk

from tests.browser.conftest import Fleet
from tests.support.waiting import wait_until_sync

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


def client(fleet: Fleet, tube: str = "default") -> greenstalk.Client:
    return greenstalk.Client((fleet.server.host, fleet.server.port), use=tube, watch=tube)


def tube_stats(fleet: Fleet, tube: str) -> dict[str, Any]:
    with client(fleet) as c:
        return dict(c.stats_tube(tube))


def tube_view(fleet: Fleet, tube: str) -> str:
    return f"#/tube/{quote(fleet.server.address, safe='')}/{quote(tube, safe='')}"


def envelope(task: str, n: int) -> str:
    return json.dumps({"task": task, "payload": {"n": n}})


def visible_controls(page: Page) -> list[str]:
    """What a user can click or type into now: each visible button's text, and each
    visible field's id."""
    found: list[str] = page.js(
        """
        const shown = (e) => e.getClientRects().length > 0;
        const buttons = [...document.querySelectorAll("button")].filter(shown);
        const fields = [...document.querySelectorAll("input, select, textarea")].filter(shown);
        return [...buttons.map((b) => b.textContent.trim()), ...fields.map((e) => "#" + e.id)];
        """
    )
    return found


#: The overview's charts and the cards they must agree with.
CHART_CARDS = {
    "chart-ready": "ready",
    "chart-done": "done-min",
    "chart-failure": "failure-rate",
    "chart-buried": "buried",
}


def charts_and_cards(page: Page) -> dict[str, tuple[str | None, str | None]]:
    """Each overview chart's value now and its card's, read at one instant."""
    found: dict[str, list[str | None]] = page.js(
        """
        const text = (css) => document.querySelector(css)?.textContent ?? null;
        const out = {};
        for (const [chart, card] of Object.entries(arguments[0])) {
          const cardValue = text(`#totals [data-card="${card}"] .card-value`);
          out[chart] = [text(`#${chart} .chart-value`), cardValue];
        }
        return out;
        """,
        CHART_CARDS,
    )
    return {chart: (pair[0], pair[1]) for chart, pair in found.items()}


def charts_agree_with_cards(page: Page) -> bool:
    pairs = charts_and_cards(page)
    return all(chart == card and card is not None for chart, card in pairs.values())
