"""The dashboard's Batches view in a real browser: a real beanstalkd and ``tubeworker run``
working the batch's tube and its callbacks' tube. A producer opens a batch of three jobs
with on_success and on_complete while the page shows the view; without any navigation the
view shows the batch running, then succeeded with both callbacks fired (a ``batch`` event
per callback reached the page); a click shows the batch alone; the view offers no action;
each callback ran once. With the poller reading tubes only once a minute, the ``batch``
events alone bring the succeeded state to the page, at once."""

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
from tubeworker.producer import Producer, Step

pytestmark = pytest.mark.slow

WORK, CALLBACKS = "batch-work", "batch-callbacks"
ON_SUCCESS, ON_COMPLETE = 9001, 9002  # the callbacks' "n": their line in the run log
JOB_SECONDS = 1.0  # each job's run: the batch is seen running before it succeeds

ROW = "#batches tr[data-batch='{id}']"
ROW_STATE = """
const tr = document.querySelector(`#batches tr[data-batch='${arguments[0]}']`);
if (!tr) return null;
const fired = {};
for (const cb of tr.querySelectorAll(".callback")) {
  fired[cb.dataset.kind] = cb.dataset.fired === "1";
}
return {state: tr.dataset.state, counts: tr.querySelector("[data-col='counts']").textContent,
        description: tr.querySelector("[data-col='description']").textContent, fired};
"""


@contextlib.contextmanager
def batch_daemon(
    workdir: Path, *, interval: float = 0.3
) -> Iterator[tuple[str, BeanstalkdProcess, DaemonProcess]]:
    """beanstalkd and ``tubeworker run --control`` working the batch's jobs and its
    callbacks with the browser tests' ``work`` handler, its poller reading tubes every
    ``interval`` s; both stopped by PID at the end."""
    with BeanstalkdProcess() as server:
        config = workdir / "worker.toml"
        config.write_text(
            f'[worker]\nservers = ["{server.address}"]\ndrain_timeout = 5\n'
            '[logging]\nformat = "json"\n'
            '[handlers]\n"work" = "tests.browser.handlers:work"\n'
            f'[[pool]]\ntubes = ["{WORK}", "{CALLBACKS}"]\nconcurrency = 4\n'
            f"[control]\nmetrics_interval = {interval}\n"
        )
        port = free_port()
        daemon = DaemonProcess(config, workdir)
        try:
            daemon.start("--control", f"127.0.0.1:{port}")
            daemon.wait_ready()
            yield f"http://127.0.0.1:{port}", server, daemon
        finally:
            daemon.stop()


def row_state(page: Page, batch_id: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = page.js(ROW_STATE, batch_id)
    return found


def fresh_page(browser: Any, base: str, screenshots: Path) -> Page:
    """A page on this test's daemon, the browser's log emptied of what earlier pages said
    (a page left open on a daemon that stopped keeps trying to reconnect)."""
    browser.get("about:blank")
    browser.get_log("browser")
    return Page(browser, base, screenshots)


def open_batch(server: BeanstalkdProcess, jobs: int, seconds: float) -> str:
    """A closed batch of ``jobs`` jobs of ``seconds`` each, with on_success and
    on_complete; its id."""
    with Producer([server.address]) as producer:
        batch = producer.batch(
            on_success=Step(CALLBACKS, "work", {"n": ON_SUCCESS}),
            on_complete=Step(CALLBACKS, "work", {"n": ON_COMPLETE}),
            description="nightly import",
        )
        with batch:
            for n in range(jobs):
                batch.enqueue(WORK, "work", {"n": n, "sleep": seconds})
    return batch.id


def test_the_batches_view_follows_a_batch_to_succeeded_with_its_callbacks_fired(
    browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    require_beanstalkd()
    with batch_daemon(tmp_path) as (base, server, daemon):
        page = fresh_page(browser, base, screenshots)
        page.open("#/batches")
        wait_until_sync(
            lambda: "No batches" in page.text("#batches tbody"),
            timeout=DEADLINE,
            what="the empty Batches view",
        )

        # Given a batch of three one-second jobs with on_success and on_complete...
        batch_id = open_batch(server, 3, JOB_SECONDS)

        # ...the page, left alone on the view, shows it running, then succeeded.
        wait_until_sync(
            lambda: (row_state(page, batch_id) or {}).get("state") == "running",
            timeout=DEADLINE,
            what="the batch shown running",
        )
        seen = row_state(page, batch_id)
        assert seen is not None
        assert seen["fired"] == {"success": False, "complete": False}
        assert seen["description"] == "nightly import"
        wait_until_sync(
            lambda: (
                row_state(page, batch_id)
                == {
                    "state": "succeeded",
                    "counts": "0 / 3 / 0",
                    "description": "nightly import",
                    "fired": {"success": True, "complete": True},
                }
            ),
            timeout=DEADLINE,
            what="the batch shown succeeded with both callbacks fired",
        )
        # The daemon fired both callbacks (one "batch" event each), and the page heard them.
        assert page.js("return window.__tubeworker.batchEvents") >= 2
        log = page.text("#event-log")
        assert f"batch {batch_id}: on_success fired" in log
        assert f"batch {batch_id}: on_complete fired" in log
        callbacks = page.text(f"{ROW.format(id=batch_id)} [data-col='callbacks']")
        assert CALLBACKS in callbacks
        assert "work" in callbacks

        # A click shows the batch alone, with each callback's job, tube and task.
        page.click(ROW.format(id=batch_id))
        wait_until_sync(
            lambda: page.js("return document.getElementById('batch').dataset.state") == "succeeded",
            what="the batch's detail",
        )
        assert page.text("#batch-title") == f"Batch {batch_id}"
        assert page.text("#batch-stats [data-col='succeeded']") == "3"
        detail = page.js(
            "return [...document.querySelectorAll('#batch-callbacks tr[data-kind]')]"
            ".map((tr) => [tr.dataset.kind, tr.dataset.fired, tr.cells[3].textContent,"
            " tr.cells[4].textContent]);"
        )
        assert detail == [["success", "1", CALLBACKS, "work"], ["complete", "1", CALLBACKS, "work"]]
        page.shot("batches")

        # No action in this view: its only button closes the detail.
        buttons = page.js(
            "return [...document.querySelectorAll('#view-batches button')]"
            ".filter((b) => b.getClientRects().length).map((b) => b.textContent.trim());"
        )
        assert buttons == ["Close"]

        # Each callback ran, once (the daemon works their tube too).
        wait_until_sync(
            lambda: daemon.runs("end")[ON_SUCCESS] == 1 and daemon.runs("end")[ON_COMPLETE] == 1,
            timeout=DEADLINE,
            what="each callback run",
        )
        fired = [e["callback"] for e in daemon.events() if e.get("event") == "batch callback fired"]
        assert sorted(fired) == ["complete", "success"]
        assert page.script_errors() == []


def test_a_batch_event_alone_updates_the_view_at_once(
    browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    require_beanstalkd()
    # The poller reads tubes once a minute: within the test, no ``tubes`` event can tell
    # the page that the batch's tube changed; only the daemon's ``batch`` events can.
    with batch_daemon(tmp_path, interval=60) as (base, server, _daemon):
        batch_id = open_batch(server, 2, 2 * JOB_SECONDS)
        page = fresh_page(browser, base, screenshots)
        page.open("#/batches")
        wait_until_sync(
            lambda: (row_state(page, batch_id) or {}).get("state") == "running",
            timeout=DEADLINE,
            what="the batch shown running when the view opens",
        )
        rounds = page.js("return window.__tubeworker.applied.length")
        wait_until_sync(
            lambda: (row_state(page, batch_id) or {}).get("state") == "succeeded",
            timeout=DEADLINE,
            what="the batch shown succeeded, without a navigation",
        )
        assert (row_state(page, batch_id) or {}).get("fired") == {
            "success": True,
            "complete": True,
        }
        assert page.js("return window.__tubeworker.batchEvents") >= 1
        assert page.js("return window.__tubeworker.applied.length") == rounds  # no tubes event
        assert page.script_errors() == []
