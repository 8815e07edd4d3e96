"""``tubeworker dashboard`` as users run it: a subprocess serving the dashboard for a real
beanstalkd with no daemon, stopped by PID with SIGTERM (exit 0); bad flags are one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import REPO
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow


def dashboard(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """``tubeworker dashboard ARGS``; its output goes to files in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUBEWORKER_")}
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tubeworker", "dashboard", *args],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )


def test_given_a_server_then_the_dashboard_serves_it_and_stops_on_sigterm(
    beanstalkd: BeanstalkdProcess, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("cli-token\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    listen = f"127.0.0.1:{port}"
    process = dashboard(
        tmp_path, "--server", beanstalkd.address, "--listen", listen, "--token-file", str(token)
    )
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError((tmp_path / "err").read_text())
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until_sync(up, timeout=20, what="the dashboard's /healthz")
        overview = httpx.get(f"{base}/api/overview", timeout=10).json()
        assert overview["servers"] == [beanstalkd.address]
        assert overview["token_configured"] is True
        assert overview["actions_enabled"] is True
        assert httpx.post(f"{base}/api/kick", json={"tube": "x"}, timeout=5).status_code == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    assert f"tubeworker dashboard: {base}/" in (tmp_path / "err").read_text()


def test_given_no_token_file_then_the_dashboard_is_read_only_and_says_so(
    beanstalkd: BeanstalkdProcess, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = dashboard(tmp_path, "--server", beanstalkd.address, "--listen", f"127.0.0.1:{port}")
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError((tmp_path / "err").read_text())
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until_sync(up, timeout=20, what="the dashboard's /healthz")
        overview = httpx.get(f"{base}/api/overview", timeout=10).json()
        refused = httpx.post(f"{base}/api/kick", json={"tube": "x"}, timeout=5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    assert overview["actions_enabled"] is False
    assert refused.status_code == 403
    assert "no --token-file: the dashboard is read-only" in (tmp_path / "err").read_text()


def test_given_a_missing_token_file_then_it_says_so_in_one_line(tmp_path: Path) -> None:
    process = dashboard(tmp_path, "--token-file", str(tmp_path / "nope"))
    try:
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    err = (tmp_path / "err").read_text()
    assert code == 64
    assert err.count("\n") == 1
    assert "--token-file" in err
