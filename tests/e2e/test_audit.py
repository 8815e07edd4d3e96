"""The audit trail through real processes: a change made by an admin command, one made
from the dashboard and one made on the control plane (quiet) each leave a record on the
server (`tubeworker audit` lists them: who, by token id, never the token; from where; what;
the result) and an `audit` line (the daemon's log; the command's TUBEWORKER_AUDIT_LOG);
read-only commands and dry runs leave none; a body on the command line is recorded with
TUBEWORKER_REDACT's fields masked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import REPO, DaemonProcess
from tubeworker.control.access import token_id

pytestmark = pytest.mark.slow

TOKEN = "audit-op-token"


def command(
    server: BeanstalkdProcess, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tubeworker", *args, "--server", server.address],
        cwd=REPO,
        env={**os.environ, **(env or {})},
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

    audit_log = tmp_path / "audit.log"
    card = {"task": "charge", "payload": {"card_number": "4111 1111 1111 1111", "n": 1}}
    put = command(
        beanstalkd,
        "put",
        "parked",
        json.dumps(card),
        env={"TUBEWORKER_AUDIT_LOG": str(audit_log), "TUBEWORKER_REDACT": "payload.card_number"},
    )
    assert put.returncode == 0, put.stderr
    assert put.stderr == ""
    assert command(beanstalkd, "stats").returncode == 0  # a read: no record
    assert command(beanstalkd, "flush", "parked", "--dry-run").returncode == 0  # no record
    auth = {"Authorization": f"Bearer {TOKEN}"}
    paused = httpx.post(
        f"http://127.0.0.1:{port}/api/pause",
        json={"server": beanstalkd.address, "tube": "parked", "seconds": 60},
        headers=auth,
        timeout=10,
    )
    assert paused.status_code == 200, paused.text
    quiet = httpx.post(f"http://127.0.0.1:{port}/quiet", headers=auth, timeout=10)
    assert quiet.status_code == 200, quiet.text

    listed = command(beanstalkd, "audit", "--json", "--since", "1h")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["what"] for r in records] == ["put", "pause", "quiet"]
    put_record, pause, quieted = records
    assert put_record["who"].endswith("(command line)")
    assert put_record["target"].startswith("put parked ")
    assert '"n": 1' in put_record["target"]
    assert "4111" not in put_record["target"]  # masked: the trail keeps no card number
    assert put_record["result"] == "exit 0"
    assert put_record["server"] == beanstalkd.address
    assert pause["who"] == f"operator token {token_id(TOKEN)} (dashboard)"
    assert pause["where"] == "127.0.0.1"
    assert json.loads(pause["target"])["tube"] == "parked"
    assert pause["result"] == "ok"
    assert quieted["who"] == f"operator token {token_id(TOKEN)} (control plane)"
    assert quieted["target"] == f"daemon {socket.gethostname()} pid {daemon.pid}"
    assert TOKEN not in listed.stdout
    lines = [e for e in daemon.events() if e.get("event") == "audit"]
    assert [(e["what"], e["server"], e["result"]) for e in lines] == [
        ("pause", beanstalkd.address, "ok"),
        ("quiet", beanstalkd.address, "ok"),
    ]
    (logged,) = [json.loads(line) for line in audit_log.read_text().splitlines()]
    assert logged["event"] == "audit"
    assert {k: logged[k] for k in ("who", "where", "what", "target", "result")} == {
        k: put_record[k] for k in ("who", "where", "what", "target", "result")
    }
    shown = command(beanstalkd, "audit")
    assert f"operator token {token_id(TOKEN)} (dashboard) from 127.0.0.1  pause" in shown.stdout
