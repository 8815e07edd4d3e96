"""The browser tests' fixtures: Debian's headless Chromium driven by Selenium, a real
beanstalkd, and a real daemon (``tubeworker run`` with its control plane and a token file).

Selenium Manager never downloads anything: the driver is Debian's ``/usr/bin/chromedriver``
(passed explicitly) and ``SE_OFFLINE=true``. Where Chromium is not installed the tests skip
with the reason (``make test`` installs it; on CI a missing browser is a failure).
Everything started here is stopped by PID at teardown: the daemon, chromedriver, and every
Chromium process of the test's own profile directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.beanstalkd import (
    BeanstalkdMissing,
    BeanstalkdProcess,
    find_beanstalkd,
    free_port,
)
from tests.support.process import DaemonProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "browser-test-token"
#: The tubes the daemon works on (the others in the tests are only looked at).
WORKED_TUBES = ("browser-bury", "browser-pause", "browser-sentinel", "browser-fail")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must have it: the browser tests cannot be skipped there)")
    pytest.skip(reason)


def require_chromium() -> None:
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if absent:
        _missing(
            f"Chromium is not installed ({', '.join(absent)} missing): "
            "apt-get install chromium chromium-driver (make test does it)"
        )


def _pids_with(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (our profile directory)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the views' screenshots go ($TUBEWORKER_SCREENSHOTS, else a tmp dir)."""
    wanted = os.environ.get("TUBEWORKER_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        return Path(wanted)
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
        service = Service(
            executable_path=str(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log")
        )
        driver = webdriver.Chrome(service=service, options=options)
    driver.set_window_size(1400, 1000)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            process = service.process
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=5)
            for pid in _pids_with(str(profile)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@dataclass
class Fleet:
    """A beanstalkd and a daemon with its control plane, for a module of browser tests."""

    server: BeanstalkdProcess
    daemon: DaemonProcess
    base: str  # the control plane's URL

    def runs(self, event: str) -> set[int]:
        return set(self.daemon.runs(event))

    def log_events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.daemon.events() if e.get("event") == name]


def write_daemon_config(
    path: Path,
    server: BeanstalkdProcess,
    token_file: Path | None,
    *,
    interval: float = 0.3,
    control: Sequence[str] = (),
) -> Path:
    """The daemon's config: the worked tubes, and a control plane whose token is in
    ``token_file`` (none: the dashboard is read-only), with ``control``'s lines added to
    its ``[control]``."""
    lines = [
        "[worker]",
        f'servers = ["{server.address}"]',
        "drain_timeout = 5",
        "[logging]",
        'format = "json"',
        "[handlers]",
        '"bury_once" = "tests.browser.handlers:bury_once"',
        '"bury_always" = "tests.browser.handlers:bury_always"',
        '"work" = "tests.browser.handlers:work"',
        '"typed_welcome" = "tests.browser.handlers:typed_welcome"',
        '"fail_hard" = "tests.browser.handlers:fail_hard"',
        "[[pool]]",
        f"tubes = {json.dumps(list(WORKED_TUBES))}",
        "concurrency = 4",
        "[control]",
        *([f'token_file = "{token_file}"'] if token_file is not None else []),
        f"metrics_interval = {interval}",
        *control,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def running_fleet(
    workdir: Path, *, token: str | None, control: Sequence[str] = ()
) -> Iterator[Fleet]:
    """A private beanstalkd and ``tubeworker run --control`` on it, both stopped at the end
    (``control``: more lines for its ``[control]``)."""
    token_file = None
    if token is not None:
        token_file = workdir / "token"
        token_file.write_text(token + "\n")
    with BeanstalkdProcess() as server:
        config_path = write_daemon_config(
            workdir / "worker.toml", server, token_file, control=control
        )
        port = free_port()
        daemon = DaemonProcess(config_path, workdir)
        try:
            daemon.start("--control", f"127.0.0.1:{port}")
            daemon.wait_ready()
            yield Fleet(server, daemon, f"http://127.0.0.1:{port}")
        finally:
            daemon.stop()


def require_beanstalkd() -> None:
    try:
        find_beanstalkd()
    except BeanstalkdMissing as exc:
        _missing(str(exc))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The module's daemon, with a token file (actions enabled)."""
    require_beanstalkd()
    with running_fleet(tmp_path_factory.mktemp("dashboard"), token=TOKEN) as running:
        yield running
