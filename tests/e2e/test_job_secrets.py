"""Encrypted secrets through `tubeworker run` with `[security] encryption_keys_file`: the
handler gets the producer's secret as job.secret; the card number never appears in the
daemon's output, in its burial reasons, or in `tubeworker peek` of the buried job (shown
as "encrypted, N bytes, key K"); a secret sealed with a key the daemon lacks is buried,
cause bad_secret."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import REPO, DaemonProcess
from tests.support.waiting import wait_until
from tubeworker.producer import Producer

pytestmark = pytest.mark.slow

CARD = "4111 1111 1111 1111"
HANDLER = """
import os

from tubeworker import Bury, Job, handler


@handler()
async def charge(job: Job) -> None:
    if job.payload.get("decline"):
        raise Bury("card declined")
    with open(os.environ["CHARGED"], "a") as charged:
        charged.write(job.secret["card"] + "\\n")
    job.log.info("charged", order=job.payload["order"])
"""


def _events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


async def test_given_a_secret_then_only_the_handler_sees_it(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    keys = tmp_path / "encryption-keys"
    keys.write_text(f"e1: {base64.b64encode(b'k' * 32).decode()}\n")
    stranger = tmp_path / "stranger-keys"
    stranger.write_text(f"e9: {base64.b64encode(b'z' * 32).decode()}\n")
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "jobs.py").write_text(HANDLER)
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[worker]\nservers = ["{beanstalkd.address}"]\n'
        '[handlers]\n"charge" = "myapp.jobs:charge"\n[[pool]]\ntubes = ["payments"]\n'
        f'[security]\nencryption_keys_file = "{keys}"\n'
    )
    charged = tmp_path / "charged"
    daemon = DaemonProcess(config, tmp_path, env={"CHARGED": str(charged)})
    daemons.append(daemon.start())
    daemon.wait_ready()

    with Producer([beanstalkd.address], encryption_keys=keys) as producer:
        producer.enqueue("payments", "charge", {"order": 1}, secret={"card": CARD})
        declined = producer.enqueue(
            "payments", "charge", {"order": 2, "decline": True}, secret={"card": CARD}
        )
    with Producer([beanstalkd.address], encryption_keys=stranger) as producer:
        producer.enqueue("payments", "charge", {"order": 3}, secret={"card": CARD})

    await wait_until(
        lambda: len(_events(daemon, "charged")) == 1 and len(_events(daemon, "job buried")) == 2,
        timeout=30,
        what="one charged, two buried",
    )
    assert charged.read_text().split("\n")[0] == CARD  # the handler got it
    causes = sorted(e["cause"] for e in _events(daemon, "job buried"))
    assert causes == ["bad_secret", "handler_bury"]
    (bad,) = [e for e in _events(daemon, "job buried") if e["cause"] == "bad_secret"]
    assert "unknown encryption key 'e9'" in bad["reason"]

    peek = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [
                sys.executable,
                "-m",
                "tubeworker",
                "peek",
                str(int(declined)),
                "--server",
                beanstalkd.address,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert peek.returncode == 0, peek.stderr
    assert "encrypted, " in peek.stdout
    assert "bytes, key e1" in peek.stdout
    for text in (peek.stdout, daemon.stdout.read_text(), daemon.stderr.read_text()):
        assert CARD not in text
