"""The control plane's roles, through `tubeworker run`: with `[control] read_token_file`,
reads need a token (a viewer's or the operator's), probes stay open, viewers cannot act,
job bodies are withheld from viewers, `redact` masks payload fields in every body shown
(the dashboard's and `tubeworker peek` with TUBEWORKER_REDACT), and a peer that keeps
failing is answered 429. `tubeworker dashboard --read-token-file` guards its reads the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import greenstalk
import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import REPO, DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

OPERATOR, VIEWER = "op-token-1", "view-token-1"
CARD = "4111 1111 1111 1111"


def first_event(base: str, token: str | None) -> str:
    """The /events WebSocket's first message's type, or "refused (STATUS)" when the
    handshake is answered with no upgrade (the token as ?token=: a browser cannot give a
    WebSocket headers)."""
    query = f"?token={token}" if token else ""
    handshake = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    if token is None:  # asked by hand: a refused handshake, and the socket closed after
        answer = httpx.get(f"{base}/events{query}", headers=handshake, timeout=10)
        return f"refused ({answer.status_code})"

    url = base.replace("http://", "ws://") + "/events" + query

    async def connect() -> str:
        with trio.fail_after(20):
            async with open_websocket_url(url) as ws:
                return str(json.loads(await ws.get_message())["type"])

    return trio.run(connect)


def test_given_roles_then_reads_need_a_token_and_bodies_go_to_operators(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    (tmp_path / "operator").write_text(OPERATOR + "\n")
    (tmp_path / "viewer").write_text(VIEWER + "\n")
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[worker]\nservers = ["{beanstalkd.address}"]\n[[pool]]\ntubes = ["work"]\n'
        f'[control]\ntoken_file = "{tmp_path / "operator"}"\n'
        f'read_token_file = "{tmp_path / "viewer"}"\n'
        'redact = ["payload.card_number"]\n'
    )
    port = free_port()
    daemon = DaemonProcess(config, tmp_path)
    daemons.append(daemon.start("--control", f"127.0.0.1:{port}"))
    daemon.wait_ready()
    base = f"http://127.0.0.1:{port}"
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="parked") as client:
        payload = {"card_number": CARD, "name": "Ada"}
        job_id = client.put(json.dumps({"task": "charge", "payload": payload}))

    def get(path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{base}{path}", headers=headers, timeout=10)

    assert get("/healthz").status_code == 200
    assert get("/readyz").status_code == 200
    assert get("/metrics").status_code == 200  # no metrics_token_file: Prometheus reads
    assert get("/status").status_code == 401
    assert get("/status", VIEWER).status_code == 200
    assert get("/status", OPERATOR).status_code == 200
    assert get("/api/overview").status_code == 401
    assert first_event(base, None) == "refused (403)"
    assert first_event(base, VIEWER) == "hello"

    job = f"/api/job?server={beanstalkd.address}&id={job_id}"
    as_viewer = get(job, VIEWER).json()
    assert as_viewer["body"]["kind"] == "withheld"
    assert CARD not in json.dumps(as_viewer)
    assert get(f"/api/job/body?server={beanstalkd.address}&id={job_id}", VIEWER).status_code == 403
    as_operator = get(job, OPERATOR).json()["body"]["text"]
    assert "Ada" in as_operator
    assert "***" in as_operator
    assert CARD not in as_operator

    peeked = get(f"/api/peek?server={beanstalkd.address}&tube=parked&state=ready", VIEWER)
    assert peeked.json()["body"]["kind"] == "withheld"
    assert peeked.json()["body"]["size"] > len(CARD)
    download = get(f"/api/job/body?server={beanstalkd.address}&id={job_id}", OPERATOR)
    assert download.status_code == 200
    assert json.loads(download.content)["payload"] == {"card_number": "***", "name": "Ada"}
    assert get("/api/overview", VIEWER).json()["role"] == "viewer"
    assert get("/api/overview", OPERATOR).json()["role"] == "operator"

    as_viewer_header = {"Authorization": f"Bearer {VIEWER}"}
    quiet = httpx.post(f"{base}/quiet", headers=as_viewer_header, timeout=10)
    assert quiet.status_code == 403
    assert quiet.json() == {"error": "a viewer's token reads; actions need the operator's"}
    kick = httpx.post(
        f"{base}/api/kick",
        json={"server": beanstalkd.address, "tube": "parked"},
        headers=as_viewer_header,
        timeout=10,
    )
    assert kick.status_code == 403
    assert "viewer" in kick.json()["error"]
    resumed = httpx.post(
        f"{base}/resume", headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10
    )
    assert resumed.status_code == 200

    # 10 failures a minute from one peer (the three tokenless reads above, the WebSocket's
    # among them, were three): then 429.
    statuses = [get("/status", "wrong").status_code for _ in range(10)]
    assert statuses == [401] * 7 + [429] * 3
    assert get("/status", OPERATOR).status_code == 429  # not even checked meanwhile
    refused = [e for e in daemon.events() if e.get("event") == "control plane read refused"]
    assert len(refused) == 10  # one line each, none for the 429s
    assert refused[0]["peer"] == "127.0.0.1"
    assert all("Traceback" not in str(e) for e in refused)
    assert VIEWER not in daemon.stdout.read_text()  # tokens are never logged
    assert OPERATOR not in daemon.stdout.read_text()

    def masked(*args: str) -> str:
        """A command's output with TUBEWORKER_REDACT set, as the docs tell."""
        done = subprocess.run(
            [sys.executable, "-m", "tubeworker", *args, "--server", beanstalkd.address],
            cwd=REPO,
            env={**os.environ, "TUBEWORKER_REDACT": "payload.card_number"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert CARD not in done.stdout
        return done.stdout

    assert "Ada" in masked("peek", str(job_id))
    raw = json.loads(masked("peek", str(job_id), "--raw"))
    assert raw["payload"] == {"card_number": "***", "name": "Ada"}
    listed = masked("jobs", "parked")
    assert str(job_id) in listed
    assert "***" in listed  # the preview shows the field, masked
    (listed_job,) = json.loads(masked("jobs", "parked", "--json"))["jobs"]
    assert json.loads(listed_job["body"])["payload"]["card_number"] == "***"


def test_given_the_dashboard_alone_with_a_viewer_token_then_it_guards_reads_the_same(
    beanstalkd: BeanstalkdProcess, tmp_path: Path
) -> None:
    (tmp_path / "operator").write_text(OPERATOR + "\n")
    (tmp_path / "viewer").write_text(VIEWER + "\n")
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="parked") as client:
        job_id = client.put(json.dumps({"task": "charge", "payload": {"card_number": CARD}}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "tubeworker", "dashboard", "--server", beanstalkd.address),
        *("--listen", f"127.0.0.1:{port}", "--interval", "0.3"),
        *("--token-file", str(tmp_path / "operator")),
        *("--read-token-file", str(tmp_path / "viewer")),
    ]
    with open(tmp_path / "err", "wb") as err:
        process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
    try:

        def up() -> bool:
            assert process.poll() is None, (tmp_path / "err").read_text()
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until_sync(up, timeout=30, what="the dashboard's /healthz")
        viewer = {"Authorization": f"Bearer {VIEWER}"}
        assert httpx.get(f"{base}/api/overview", timeout=10).status_code == 401
        overview = httpx.get(f"{base}/api/overview", headers=viewer, timeout=10)
        assert overview.json()["role"] == "viewer"
        job = httpx.get(
            f"{base}/api/job?server={beanstalkd.address}&id={job_id}", headers=viewer, timeout=10
        )
        assert job.json()["body"]["kind"] == "withheld"
        kick = httpx.post(f"{base}/api/kick", json={"tube": "parked"}, headers=viewer, timeout=10)
        assert kick.status_code == 403
        assert httpx.get(f"{base}/", timeout=10).status_code == 200  # the page, to log in
        assert first_event(base, None) == "refused (403)"
        assert first_event(base, VIEWER) == "hello"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
