"""A declaration alone is enough: the README's first handler, `@handler(apis=["mailer"])`
calling its API through `job.http`, with no `[api]` table in the config. While the API is
down its breaker opens and the jobs wait (no attempt burned, a handful of calls), and every
job is done once it is back. Before, the calls counted under an API named after the host,
which no handler declared: 1,167 calls reached the dead API in the same scenario."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import greenstalk
import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.httpserver import Reply, open_http_api
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

JOBS = 200

# The README's first example, as a newcomer writes it beside worker.toml (the URL comes
# from the payload: the test's API is on loopback).
HANDLER = """
from tubeworker import Bury, Job, Retry, handler


@handler(apis=["mailer"], timeout=30, max_attempts=5)
async def send_welcome(job: Job) -> None:
    data = job.payload
    user = data["user_id"]
    response = await job.http.post(data["url"], json={"user": user})
    if response.status_code == 404:
        raise Bury(f"user {user} does not exist")
    if response.status_code == 429:
        raise Retry(delay=60, reason="rate limited")
    response.raise_for_status()  # any other exception: retried with backoff
"""


def newcomer_setup(tmp_path: Path, server: BeanstalkdProcess) -> Path:
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "jobs.py").write_text(HANDLER)
    config = tmp_path / "worker.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [worker]
            servers = ["{server.address}"]

            [handlers]
            "send-welcome" = "myapp.jobs:send_welcome"

            [[pool]]
            name = "emails"
            tubes = ["emails"]
            concurrency = 10
            """
        )
    )
    return config


async def test_given_only_apis_mailer_when_the_mailer_is_down_then_its_jobs_wait_together(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    async with open_http_api() as api:
        api.reply = Reply(503, headers=(("Retry-After", "5"),))
        daemon = DaemonProcess(newcomer_setup(tmp_path, beanstalkd), tmp_path)
        daemons.append(daemon.start())
        await wait_until(lambda: any(e.get("event") == "ready" for e in daemon.events()))
        with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="emails") as client:
            for n in range(JOBS):
                envelope = {"task": "send-welcome", "payload": {"user_id": n, "url": api.url}}
                client.put(json.dumps(envelope))

        def opened() -> list[dict[str, object]]:
            return [
                e
                for e in daemon.events()
                if e.get("event") == "api breaker open: its jobs wait" and e.get("api") == "mailer"
            ]

        await wait_until(lambda: bool(opened()), timeout=30, what="the mailer's breaker to open")
        await trio.sleep(8)  # the point of the test: the API stays down a while
        calls_while_down = len(api.requests)
        api.reply = Reply(200, body=b"sent")
        await wait_until(
            lambda: len(_events(daemon, "job done")) == JOBS and _empty(beanstalkd),
            timeout=90,
            what="every job done after the mailer is back",
        )

    # The calls in flight when it tripped (at most the concurrency) and the probes; not
    # one per job and attempt.
    assert calls_while_down <= 10 + 5, calls_while_down
    events = daemon.events()
    assert _events(daemon, "job buried") == []
    assert _events(daemon, "job released") == []  # no attempt burned
    done = _events(daemon, "job done")
    assert len(done) == JOBS
    assert {e.get("handler") for e in done} == {"send-welcome"}
    # Nothing was counted under an API named after the host.
    assert not [e for e in events if e.get("api") == "127.0.0.1"]


def _events(daemon: DaemonProcess, name: str) -> list[dict[str, object]]:
    return [e for e in daemon.events() if e.get("event") == name]


def _empty(server: BeanstalkdProcess) -> bool:
    """No job left in the tube (a waiting job may have been deferred: a delayed copy)."""
    with greenstalk.Client((server.host, server.port)) as client:
        stats = client.stats_tube("emails")
    return all(
        stats[f"current-jobs-{state}"] == 0 for state in ("ready", "reserved", "delayed", "buried")
    )


def test_check_shows_where_each_handlers_calls_go(tmp_path: Path) -> None:
    # The README's handler beside worker.toml, and one that declares two APIs.
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "jobs.py").write_text(
        HANDLER
        + textwrap.dedent(
            """

            @handler(apis=["mailer", "sms"])
            async def notify(job: Job) -> None:
                await job.http.post(job.payload["url"])
            """
        )
    )
    config = tmp_path / "worker.toml"
    config.write_text(
        textwrap.dedent(
            """\
            [worker]
            servers = ["127.0.0.1:11300", "127.0.0.1:11301"]

            [handlers]
            "send-welcome" = "myapp.jobs:send_welcome"
            "notify" = "myapp.jobs:notify"

            [api.stripe]
            hosts = ["api.stripe.com"]
            rate = 20
            fleet = true

            [[pool]]
            tubes = ["emails"]
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "tubeworker", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "  mailer:\n    calls: the job.http requests of send-welcome to hosts no [api.NAME] "
        'hosts names, and job.api("mailer")\n    jobs held while it is open: notify, send-welcome'
    ) in out
    assert "breaker: opens after 5 failures in a row" in out
    assert "calls: job.http requests to api.stripe.com, whoever makes them" in out
    assert (
        "limit: 20/s (burst 20), fleet-wide, tokens per server "
        "(rate: 127.0.0.1:11300 10, 127.0.0.1:11301 10)"
    ) in out
    assert "warning: handler 'notify' declares mailer, sms with no hosts" in out
