"""The audit trail through real processes: a change made by an admin command and one made
from the dashboard each leave a record on the server (`tubeworker audit` lists them, who,
from where, what, the result) and, for the dashboard's, an `audit` line in the daemon's
log; read-only commands and dry runs leave none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import REPO, DaemonProcess

pytestmark = pytest.mark.slow

TOKEN = "audit-op-token"


def command(server: BeanstalkdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tubeworker", *args, "--server", server.address],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_given_changes_then_each_is_on_the_audit_trail(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[worker]\nservers = ["{beanstalkd.address}"]\n[[pool]]\ntubes = ["work"]\n'
        f'[control]\ntoken_file = "{tmp_path / "token"}"\n'
    )
    port = free_port()
    daemon = DaemonProcess(config, tmp_path)
    daemons.append(daemon.start("--control", f"127.0.0.1:{port}"))
    daemon.wait_ready()

    assert command(beanstalkd, "put", "parked", "hello").returncode == 0
    assert command(beanstalkd, "stats").returncode == 0  # a read: no record
    assert command(beanstalkd, "flush", "parked", "--dry-run").returncode == 0  # no record
    paused = httpx.post(
        f"http://127.0.0.1:{port}/api/pause",
        json={"server": beanstalkd.address, "tube": "parked", "seconds": 60},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert paused.status_code == 200, paused.text

    listed = command(beanstalkd, "audit", "--json", "--since", "1h")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["what"] for r in records] == ["put", "pause"]
    put, pause = records
    assert put["who"].endswith("(command line)")
    assert "put parked hello" in put["target"]
    assert put["result"] == "exit 0"
    assert pause["who"] == "operator token (dashboard)"
    assert pause["where"] == "127.0.0.1"
    assert json.loads(pause["target"])["tube"] == "parked"
    assert pause["result"] == "ok"
    lines = [e for e in daemon.events() if e.get("event") == "audit"]
    assert [e["what"] for e in lines] == ["pause"]
    shown = command(beanstalkd, "audit")
    assert "operator token (dashboard) from 127.0.0.1  pause" in shown.stdout
