"""The dashboard's Schedules view in a real browser: a daemon with an every-second
schedule and a heartbeat. The view lists the schedule with its next fire and the
heartbeat with a small age; Pause stops the fires (counted in beanstalkd), Resume brings
them back, Trigger puts one job with the schedule's id; read-only, the POST is 403."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import greenstalk
import httpx
import pytest

from tests.browser.conftest import require_beanstalkd
from tests.browser.page import DEADLINE, Page
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import DaemonProcess
from tests.support.tubes import put_count
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

TOKEN = "schedules-token"
HEARTBEAT_OK = (
    "const c = document.querySelector(\"#heartbeats tr[data-heartbeat='hb'] [data-col='health']\");"
    "return c && c.textContent === 'ok';"
)
PAUSE_TUBE = "tubeworker.schedule-pause.sync"


@contextlib.contextmanager
def clock_daemon(workdir: Path, *, token: str | None) -> Iterator[tuple[str, BeanstalkdProcess]]:
    with BeanstalkdProcess() as server:
        token_line = ""
        if token is not None:
            (workdir / "token").write_text(token + "\n")
            token_line = f'token_file = "{workdir / "token"}"\n'
        config = workdir / "worker.toml"
        config.write_text(
            f'[worker]\nservers = ["{server.address}"]\n'
            '[[pool]]\ntubes = ["hb"]\n'
            '[[schedule]]\nname = "sync"\nevery = "1s"\ntube = "fires"\ntask = "sync"\n'
            '[[heartbeat]]\ntube = "hb"\nevery = "1s"\n'
            f"[control]\n{token_line}metrics_interval = 0.3\n"
        )
        port = free_port()
        daemon = DaemonProcess(config, workdir)
        try:
            daemon.start("--control", f"127.0.0.1:{port}")
            daemon.wait_ready()
            yield f"http://127.0.0.1:{port}", server
        finally:
            daemon.stop()


def cell(page: Page, schedule: str, col: str) -> str:
    return str(
        page.js(
            "const row = document.querySelector(`#schedules tr[data-schedule='${arguments[0]}']`);"
            "const c = row && row.querySelector(`[data-col='${arguments[1]}']`);"
            "return c ? c.textContent : '';",
            schedule,
            col,
        )
    )


def test_the_schedules_view_shows_ticks_and_heartbeats_and_pauses_resumes_triggers(
    browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    require_beanstalkd()
    with clock_daemon(tmp_path, token=TOKEN) as (base, server):
        page = Page(browser, base, screenshots)
        page.open("#/schedules")
        wait_until_sync(lambda: "UTC" in cell(page, "sync", "next"), timeout=DEADLINE,
                        what="the schedule's next fire")  # fmt: skip
        page.set_token(TOKEN)

        def heartbeat_ok() -> bool:
            page.go("#/overview")
            page.go("#/schedules")
            return bool(page.js(HEARTBEAT_OK))

        wait_until_sync(heartbeat_ok, timeout=DEADLINE, what="the heartbeat ok")

        # Pause for 1h: the tick says so, and no fire is put meanwhile.
        page.click("#schedules tr[data-schedule='sync'] button[data-action='pause']")
        page.confirm()
        wait_until_sync(lambda: "paused until" in cell(page, "sync", "state"),
                        timeout=DEADLINE, what="paused")  # fmt: skip
        paused_at = put_count(server, "fires")
        with greenstalk.Client((server.host, server.port)) as client:
            delayed = client.stats_tube(PAUSE_TUBE)["current-jobs-delayed"]
            assert int(delayed) == 1  # the pause record
        page.shot("schedules-paused")

        # Resume: fires again.
        page.click("#schedules tr[data-schedule='sync'] button[data-action='resume']")
        page.confirm()
        wait_until_sync(lambda: put_count(server, "fires") >= paused_at + 3, timeout=DEADLINE,
                        what="fires after resume")  # fmt: skip
        assert put_count(server, "fires") <= paused_at + 1 + 3 + 2  # (none while paused)

        # Trigger: one job with the schedule's id, now.
        before = put_count(server, "fires")
        page.js("delete document.body.dataset.lastAction")  # the resume's "ok" is not the trigger's
        page.click("#schedules tr[data-schedule='sync'] button[data-action='trigger']")
        page.confirm()
        wait_until_sync(lambda: page.js("return document.body.dataset.lastAction") == "ok",
                        what="the trigger answered")  # fmt: skip
        assert put_count(server, "fires") >= before + 1
        assert page.script_errors() == []


def test_a_read_only_dashboard_shows_schedules_and_refuses_their_actions(
    browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    require_beanstalkd()
    with clock_daemon(tmp_path, token=None) as (base, _server):
        page = Page(browser, base, screenshots)
        page.open("#/schedules")
        wait_until_sync(lambda: "UTC" in cell(page, "sync", "next"), timeout=DEADLINE,
                        what="the schedule's next fire")  # fmt: skip
        visible = page.js(
            "return [...document.querySelectorAll('#schedules button')]"
            ".filter((b) => b.getClientRects().length).length"
        )
        assert visible == 0
        refused = httpx.post(f"{base}/api/schedule", timeout=5,
                             content=json.dumps({"name": "sync", "action": "trigger"}))  # fmt: skip
        assert refused.status_code == 403
