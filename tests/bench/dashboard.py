"""``python -m tests.bench.dashboard``: the dashboard at 1,000 tubes, in headless Chromium.

A private beanstalkd gets ``--tubes`` tubes (1,000 by default) with a few jobs each; a real
daemon (``tubeworker run`` with its control plane, ``metrics_interval`` = ``--interval``)
serves the dashboard; Debian's Chromium (Selenium, no driver download) loads it and waits
for a change to show.

Measured:

- page load: from the navigation to the first page of tubes on screen (the browser's own
  clock: ``performance.now()`` when the rows are rendered), cold (the first view, which
  waits for the poller's first round of every tube) and warm (later views);
- WebSocket update latency: from a job put into a visible tube to its new count in the
  page, with no reload (includes waiting for the poller's next round, so it is bounded by
  ``--interval``), and the push part alone: from the ``tubes`` event's publication on the
  server to the page having applied it;
- one round of ``stats-tube`` over every tube (pipelined), as the poller does it;
- the size of a ``tubes`` event.

Not part of the tests (``make test`` never runs tests/bench). Every process it starts is
stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import greenstalk
import trio

from tests.browser.conftest import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, _pids_with
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import DaemonProcess
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import open_client
from tubeworker.control.poller import _stats_tubes


def fill(address: str, tubes: int) -> list[str]:
    """``tubes`` tubes, with 1 to 5 ready jobs each, every 10th with a delayed job, every
    25th with a buried one, one paused."""
    names = [f"bench-{n:04}" for n in range(tubes)]

    async def put_all() -> None:
        async with open_client(address) as client:
            commands: list[p.Command] = []
            for n, name in enumerate(names):
                commands.append(p.Use(name))
                commands += [p.Put(b'{"task":"x","payload":{}}', 1024, 0, 60)] * (n % 5 + 1)
                if n % 10 == 0:
                    commands.append(p.Put(b"later", 1024, 3600, 60))
                if len(commands) > 2000:
                    await client.pipeline(commands)
                    commands = []
            await client.pipeline(commands)
            previous = "default"
            for name in names[3::25]:  # one buried job in every 25th tube
                await client.watch(name)
                await client.ignore(previous)
                job = await client.reserve(timeout=0)
                await client.bury(job.id)
                previous = name
            await client.pause_tube(names[6], 3600)

    trio.run(put_all)
    return names


def round_time(address: str, names: list[str], repeat: int = 5) -> list[float]:
    """Seconds for one pipelined ``stats-tube`` of every tube (what the poller sends)."""

    async def measure() -> list[float]:
        times = []
        async with open_client(address) as client:
            for _ in range(repeat):
                started = time.perf_counter()
                listed = await client.list_tubes()
                await _stats_tubes(client, sorted(listed))
                times.append(time.perf_counter() - started)
        return times

    return trio.run(measure)


def start_daemon(
    server: BeanstalkdProcess, workdir: Path, interval: float
) -> tuple[DaemonProcess, str]:
    token = workdir / "token"
    token.write_text("bench-token\n")
    config = workdir / "worker.toml"
    config.write_text(
        "\n".join(
            [
                "[worker]",
                f'servers = ["{server.address}"]',
                "[logging]",
                'format = "json"',
                "[handlers]",
                '"work" = "tests.browser.handlers:work"',
                "[[pool]]",
                'tubes = ["bench-worked"]',
                "concurrency = 10",
                "[control]",
                f'token_file = "{token}"',
                f"metrics_interval = {interval}",
            ]
        )
        + "\n"
    )
    port = free_port()
    daemon = DaemonProcess(config, workdir).start("--control", f"127.0.0.1:{port}")
    return daemon, f"http://127.0.0.1:{port}"


def open_browser(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1400, 1000)
    return driver


def wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def page_load(driver: Any, base: str, runs: int, per_page: int) -> list[float]:
    """Milliseconds from navigation start to the first page of rows rendered."""
    loads = []
    for run in range(runs):
        driver.get(f"{base}/?load={run}#/overview")
        wait(
            lambda: (
                driver.execute_script(
                    "return document.querySelectorAll('#tubes tr[data-key]').length"
                )
                == per_page
            ),
            30,
            "the first page of tubes",
        )
        loads.append(driver.execute_script("return window.__tubeworker.firstRender"))
    return loads


CELL = """
const cell = document.querySelector(
  `#tubes tr[data-key="${CSS.escape(arguments[0])}"] td[data-col="ready"]`);
"""


def update_latency(
    driver: Any, server: BeanstalkdProcess, samples: int, interval: float
) -> list[float]:
    """Milliseconds from a put into a visible tube to its new ready count on the page (each
    put at a random point of the poll cycle)."""
    rng = random.Random(1)
    latencies = []
    with greenstalk.Client((server.host, server.port)) as client:
        for k in range(samples):
            tube = f"bench-{(k * 7) % 50:04}"  # on the first page
            key = f"{server.address}|{tube}"
            before = driver.execute_script(CELL + "return cell.textContent;", key)
            # Watch the whole table: a page may redraw its rows rather than patch the cell.
            driver.execute_script(
                """
                const [key, want] = arguments;
                window.__changed = null;
                const observer = new MutationObserver(() => {
                  const cell = document.querySelector(
                    `#tubes tr[data-key="${CSS.escape(key)}"] td[data-col="ready"]`);
                  if (cell && cell.textContent === want) {
                    window.__changed = Date.now();
                    observer.disconnect();
                  }
                });
                observer.observe(document.getElementById("tubes"),
                  {childList: true, characterData: true, subtree: true});
                """,
                key,
                str(int(before) + 1),
            )
            client.use(tube)
            time.sleep(rng.uniform(0, interval))  # not in step with the poller's rounds
            put_at = time.time() * 1000
            client.put('{"task":"x","payload":{}}')
            wait(lambda: driver.execute_script("return window.__changed") is not None, 30, tube)
            changed = driver.execute_script("return window.__changed")
            after = driver.execute_script(CELL + "return cell.textContent;", key)
            assert int(after) == int(before) + 1, (tube, before, after)
            latencies.append(changed - put_at)
    return latencies


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 1),
        "p90": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 1),
        "max": round(ordered[-1], 1),
        "n": len(ordered),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.dashboard", description=__doc__)
    parser.add_argument("--tubes", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0, help="metrics_interval (s)")
    parser.add_argument("--loads", type=int, default=6, help="page loads (the first is cold)")
    parser.add_argument("--samples", type=int, default=15, help="update latency samples")
    parser.add_argument("--screenshot", type=Path, help="save the overview here")
    args = parser.parse_args(argv)
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        print(
            "Chromium is not installed: apt-get install chromium chromium-driver", file=sys.stderr
        )
        return 69
    workdir = Path(tempfile.mkdtemp(prefix="tubeworker-dashboard-bench-"))
    profile = workdir / "chromium"
    results: dict[str, Any] = {"tubes": args.tubes, "interval": args.interval}
    with BeanstalkdProcess() as server:
        names = fill(server.address, args.tubes)
        results["stats_tube_round_ms"] = summary(
            [t * 1000 for t in round_time(server.address, names)]
        )
        daemon, base = start_daemon(server, workdir, args.interval)
        driver = None
        try:
            daemon.wait_ready()
            driver = open_browser(profile)
            loads = page_load(driver, base, args.loads, per_page=50)
            results["page_load_cold_ms"] = round(loads[0], 1)
            results["page_load_warm_ms"] = summary(loads[1:])
            latencies = update_latency(driver, server, args.samples, args.interval)
            results["update_latency_ms"] = summary(latencies)
            applied = driver.execute_script("return window.__tubeworker.applied")
            push = [a["applied"] - a["at"] * 1000 for a in applied if a.get("at")]
            results["push_latency_ms"] = summary(push)
            results["tubes_event_bytes"] = driver.execute_script(
                "return window.__tubeworker.tubesBytes"
            )
            if args.screenshot:
                driver.save_screenshot(str(args.screenshot))
        finally:
            if driver is not None:
                service = driver.service
                driver.quit()
                if service.process is not None and service.process.poll() is None:
                    service.process.kill()
            for pid in _pids_with(str(profile)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            daemon.stop()
    print(json.dumps(results, indent=2))
    warm, update = results["page_load_warm_ms"], results["update_latency_ms"]
    push, round_ms = results["push_latency_ms"], results["stats_tube_round_ms"]
    print(
        f"\n{args.tubes} tubes, poll interval {args.interval:g} s:\n"
        "  page load (navigation -> first page of tubes on screen): "
        f"cold {results['page_load_cold_ms']:.0f} ms, "
        f"warm median {warm['median']:.0f} ms (max {warm['max']:.0f})\n"
        "  update latency (put -> new count on screen, no reload): "
        f"median {update['median']:.0f} ms, p90 {update['p90']:.0f} ms, max {update['max']:.0f}\n"
        "  of which the push (event published -> applied in the page): "
        f"median {push['median']:.0f} ms, p90 {push['p90']:.0f} ms\n"
        f"  one stats-tube round of every tube: median {round_ms['median']:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
