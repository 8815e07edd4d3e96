"""Signed jobs through `tubeworker run` with `require_signature = true` (docs/security.md's
config): a Python producer's and a PHP app's signed jobs run (the PHP script as the docs
write it); an unsigned, a forged and an unknown key's job are each buried once, cause
bad_signature, the reason naming the failed check; a producer still on the old key runs
(rotation); the daemon's own job.put is signed and runs."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import greenstalk
import pytest

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.docs import block
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until
from tubeworker.producer import Producer
from tubeworker.security.keys import parse_keys
from tubeworker.security.signing import sign

pytestmark = pytest.mark.slow

HANDLER = """
from tubeworker import Job, handler


@handler()
async def send_welcome(job: Job) -> None:
    job.log.info("welcome sent", user_id=job.payload["user_id"])
    await job.put(task="audit", payload={"user_id": job.payload["user_id"]})


@handler()
async def audit(job: Job) -> None:
    job.log.info("audited", user_id=job.payload["user_id"])
"""

SECURITY = block("docs/security.md", "[security]").code


def key_line(key_id: str, fill: bytes) -> str:
    return f"{key_id}: {base64.b64encode(fill * 32).decode()}\n"


def _events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


async def test_given_required_signatures_then_only_signed_jobs_run(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    php = shutil.which("php")
    if php is None:
        pytest.fail("php is not installed (make test installs php-cli)")
    keys = tmp_path / "signing-keys"
    keys.write_text(key_line("k-new", b"n") + key_line("k-old", b"o"))
    old_keys = tmp_path / "old-keys"
    old_keys.write_text(key_line("k-old", b"o"))
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "jobs.py").write_text(HANDLER)
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[worker]\nservers = ["{beanstalkd.address}"]\n'
        '[handlers]\n"send-welcome" = "myapp.jobs:send_welcome"\n"audit" = "myapp.jobs:audit"\n'
        '[[pool]]\ntubes = ["emails", "audit"]\n\n'
        + SECURITY.replace("/etc/tubeworker/signing-keys", str(keys))
    )
    daemon = DaemonProcess(config, tmp_path)
    daemons.append(daemon.start())
    daemon.wait_ready()

    with Producer([beanstalkd.address], signing_keys=keys) as producer:
        producer.enqueue("emails", "send-welcome", {"user_id": 1})
    with Producer([beanstalkd.address], signing_keys=old_keys) as producer:
        producer.enqueue("emails", "send-welcome", {"user_id": 2})  # rotation: still on k-old
    script = tmp_path / "sign-and-put.php"
    script.write_text(block("docs/security.md", "<?php").code)
    put = subprocess.run(  # noqa: ASYNC221
        [php, str(script), beanstalkd.host, str(beanstalkd.port), str(keys)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert put.returncode == 0, put.stderr
    assert int(put.stdout.strip()) > 0

    stranger = parse_keys(key_line("k-stranger", b"s"))
    signed = sign(
        {"task": "send-welcome", "payload": {"user_id": 9}}, parse_keys(key_line("k-new", b"n"))
    )
    bad = {
        "not signed": json.dumps({"task": "send-welcome", "payload": {"user_id": 7}}).encode(),
        "signature mismatch (key 'k-new')": signed.replace(b'"user_id":9', b'"user_id":8'),
        "unknown key 'k-stranger'": sign(
            {"task": "send-welcome", "payload": {"user_id": 6}}, stranger
        ),
    }
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="emails", encoding=None) as c:
        buried_ids = {c.put(body): words for words, body in bad.items()}

    await wait_until(
        lambda: len(_events(daemon, "audited")) == 3 and len(_events(daemon, "job buried")) == 3,
        timeout=30,
        what="three jobs run (and their audits, put by the daemon) and three buried",
    )
    assert sorted(e["user_id"] for e in _events(daemon, "welcome sent")) == [1, 2, 42]
    for event in _events(daemon, "job buried"):
        assert event["cause"] == "bad_signature"
        assert buried_ids[event["job_id"]] in event["reason"], event["reason"]
