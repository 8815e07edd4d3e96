"""Sentry error tracking as users enable it: `tubeworker run` with `[middleware] enabled =
["sentry"]` and a DSN pointing at a local HTTP sink (loopback only), a handler that fails,
and the envelopes sentry-sdk sends, read on the sink."""

from __future__ import annotations

import json
from pathlib import Path

import greenstalk
import pytest

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.httpserver import Reply, open_http_api
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


async def test_given_sentry_enabled_then_a_failed_attempt_reaches_sentry(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    async with open_http_api() as sink:
        sink.reply = Reply(200, body=b"{}")
        config = tmp_path / "w.toml"
        config.write_text(
            "\n".join(
                [
                    "[worker]",
                    f'servers = ["{beanstalkd.address}"]',
                    "[logging]",
                    'format = "json"',
                    "[handlers]",
                    '"fail_loudly" = "tests.e2e.handlers:fail_loudly"',
                    "[middleware]",
                    'enabled = ["sentry"]',
                    "[middleware.sentry]",
                    f'dsn = "http://publickey@127.0.0.1:{sink.port}/1"',
                    'environment = "e2e"',
                    "[[pool]]",
                    'tubes = ["e2e"]',
                    "concurrency = 2",
                    "[pool.retry]",
                    "max_attempts = 5",
                    "backoff_base = 100",
                ]
            )
            + "\n"
        )
        daemon = DaemonProcess(config, tmp_path)
        daemons.append(daemon.start())
        with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="e2e") as client:
            client.put(json.dumps({"task": "fail_loudly", "payload": {"n": 1}}))

        def released() -> bool:
            return any(e.get("event") == "job released" for e in daemon.events())

        await wait_until(released, timeout=20, what="the failed attempt")
        await wait_until(
            lambda: any("/api/1/envelope/" in target for target in sink.requests),
            timeout=20,
            what="sentry-sdk's envelope on the sink",
        )
    assert "Traceback" not in daemon.stderr.read_text()
