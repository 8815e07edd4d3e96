"""TLS to beanstalkd through a real stunnel (mutual TLS) in front of a real beanstalkd,
certificates made with openssl as docs/tls.md does: the daemon (`tubeworker run` with
`servers = ["tls://..."]` and `[tls]`), the blocking and the Trio producers and an admin
command all work through it; a client without a certificate is refused with one clear
line; a daemon that trusts another CA says why for that server, keeps retrying, and is not
ready."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import REPO, DaemonProcess
from tests.support.tls import Certificates, Stunnel, make_certificates
from tests.support.waiting import wait_until
from tubeworker.beanstalk.tls import install_tls
from tubeworker.producer import AsyncProducer, Producer

pytestmark = pytest.mark.slow

HANDLER = """
from tubeworker import Job, handler


@handler()
async def send_welcome(job: Job) -> None:
    job.log.info("welcome sent", user_id=job.payload["user_id"])
"""


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


@pytest.fixture
def stunnel(certs: Certificates, beanstalkd: BeanstalkdProcess) -> Iterator[Stunnel]:
    with Stunnel(certs, beanstalkd.port) as tunnel:
        yield tunnel


@pytest.fixture
def client_env(certs: Certificates, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process as an app configured for TLS by the environment."""
    env = {
        "TUBEWORKER_TLS_CA_FILE": str(certs.ca),
        "TUBEWORKER_TLS_CERT_FILE": str(certs.client_cert),
        "TUBEWORKER_TLS_KEY_FILE": str(certs.client_key),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    install_tls(None)  # read again from the environment
    yield env  # type: ignore[misc]
    install_tls(None)


def write_daemon(tmp_path: Path, tunnel: Stunnel, ca: Path, certs: Certificates) -> Path:
    (tmp_path / "myapp").mkdir(exist_ok=True)
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "jobs.py").write_text(HANDLER)
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[worker]\nservers = ["{tunnel.address}"]\n'
        '[handlers]\n"send-welcome" = "myapp.jobs:send_welcome"\n[[pool]]\ntubes = ["emails"]\n'
        f'[tls]\nca_file = "{ca}"\ncert_file = "{certs.client_cert}"\n'
        f'key_file = "{certs.client_key}"\n'
    )
    return config


def _events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


def admin(tunnel: Stunnel, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tubeworker", *args, "--server", tunnel.address],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if "_TLS_" not in k}, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_given_stunnel_then_the_daemon_and_the_producers_work_through_it(
    stunnel: Stunnel,
    certs: Certificates,
    client_env: dict[str, str],
    tmp_path: Path,
    daemons: list[DaemonProcess],
) -> None:
    daemon = DaemonProcess(write_daemon(tmp_path, stunnel, certs.ca, certs), tmp_path)
    daemons.append(daemon.start())
    daemon.wait_ready()
    with Producer([stunnel.address]) as producer:
        for n in range(20):
            producer.enqueue("emails", "send-welcome", {"user_id": n})
    async with AsyncProducer([stunnel.address]) as producer:
        for n in range(20, 40):
            await producer.enqueue("emails", "send-welcome", {"user_id": n})
    await wait_until(lambda: len(_events(daemon, "welcome sent")) == 40, timeout=30, what="40")
    assert sorted(e["user_id"] for e in _events(daemon, "welcome sent")) == list(range(40))
    stats = await trio.to_thread.run_sync(lambda: admin(stunnel, client_env, "stats"))
    assert stats.returncode == 0, stats.stderr
    assert "emails" in stats.stdout


def test_given_no_client_certificate_then_one_clear_refusal(
    stunnel: Stunnel, certs: Certificates
) -> None:
    refused = admin(stunnel, {"TUBEWORKER_TLS_CA_FILE": str(certs.ca)}, "stats")
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr  # one line, no traceback
    assert stunnel.address in lines[0]
    assert "TLS" in lines[0] or "SSL" in lines[0]


async def test_given_the_wrong_ca_then_the_daemon_says_why_and_is_not_ready(
    stunnel: Stunnel, certs: Certificates, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    other = make_certificates(tmp_path / "other", prefix="other-")
    config = write_daemon(tmp_path, stunnel, other.ca, certs)
    port = free_port()
    daemon = DaemonProcess(config, tmp_path)
    daemons.append(daemon.start("--control", f"127.0.0.1:{port}"))

    def refused() -> list[dict[str, Any]]:
        return [e for e in _events(daemon, "cannot connect") if e.get("attempt", 0) >= 2]

    await wait_until(lambda: bool(refused()), timeout=30, what="retries that say why")
    error = refused()[0]["error"]
    assert stunnel.address in error
    assert "CERTIFICATE_VERIFY_FAILED" in error
    ready = await trio.to_thread.run_sync(
        lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    )
    assert ready.status_code == 503
    assert "Traceback" not in daemon.stderr.read_text()


DEPLOY = REPO / "deploy" / "tls"


def test_the_shipped_stunnel_config_terminates_mutual_tls(
    certs: Certificates, beanstalkd: BeanstalkdProcess, client_env: dict[str, str]
) -> None:
    # deploy/tls's config as shipped, with the test's ports and certificate paths.
    text = (DEPLOY / "stunnel-beanstalkd.conf").read_text()
    port = free_port()
    for old, new in (
        ("0.0.0.0:11301", f"127.0.0.1:{port}"),
        ("127.0.0.1:11300", f"127.0.0.1:{beanstalkd.port}"),
        ("/etc/stunnel/beanstalkd/server.pem", str(certs.server_cert)),
        ("/etc/stunnel/beanstalkd/server.key", str(certs.server_key)),
        ("/etc/stunnel/beanstalkd/ca.pem", str(certs.ca)),
    ):
        assert old in text, old
        text = text.replace(old, new)
    tunnel = Stunnel(certs, beanstalkd.port, config=text)
    tunnel.port = port
    with tunnel:
        with Producer([tunnel.address]) as producer:
            assert int(producer.put("shipped", b"through the shipped config")) > 0
        refused = admin(tunnel, {"TUBEWORKER_TLS_CA_FILE": str(certs.ca)}, "stats")
        assert refused.returncode != 0  # mutual TLS: no certificate, no entry


def test_the_stunnel_unit_passes_systemd_analyze_verify() -> None:
    from tests.e2e.test_deploy import analyze

    result = analyze("verify", "--man=no", str(DEPLOY / "stunnel-beanstalkd.service"))
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "stunnel" in line]
    assert (result.returncode, lines) == (0, [])
