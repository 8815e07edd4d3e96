"""Payload contracts through `tubeworker run`, as the README tells a newcomer: a handler
that declares its payload type with a pydantic model, beside worker.toml.

- 1,000 jobs, 10 % malformed (put raw, as another language's app would): each malformed
  one is buried once, cause ``schema``, its field named, never released; the rest done.
  The Python producer and `tubeworker put` refuse a malformed payload with the field
  named, and the tube is unchanged.
- A rolling deploy: old workers (v1 only) and a new one (v1 and v2, with an upcaster) on
  one tube; the producer switches to v2 mid-run; the old workers are stopped: no job
  failed or buried, every job done once, each v2 job by the worker that understands it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import greenstalk
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.docs import block
from tests.support.process import REPO, DaemonProcess
from tests.support.waiting import wait_until
from tubeworker.producer import PayloadInvalid, Producer

pytestmark = pytest.mark.slow

# The README's typed handler, and docs/contracts.md's version 2 of it: as written.
HANDLER = block("README.md", "# myapp/welcome.py").code
NEW_HANDLER = block("docs/contracts.md", "# myapp/welcome.py, version 2").code

CONFIG = """\
[worker]
servers = ["{address}"]

[handlers]
"send-welcome" = "myapp.welcome:send_welcome"

[[pool]]
name = "emails"
tubes = ["emails"]
concurrency = 10
"""

MALFORMED: list[tuple[Any, str]] = [
    ({"user_id": "abc", "email": "a@example.org"}, "payload.user_id: input should be a valid"),
    ({"user_id": 1}, "payload.email: field required"),
    ({"user_id": None, "email": 5}, "payload.user_id: input should be a valid integer"),
    ([1, 2], "payload: input should be a valid dictionary"),
]


def write_app(folder: Path, handler: str, config: str, address: str) -> Path:
    (folder / "myapp").mkdir(parents=True)
    (folder / "myapp" / "__init__.py").write_text("")
    (folder / "myapp" / "welcome.py").write_text(handler)
    path = folder / "worker.toml"
    path.write_text(config.format(address=address))
    return path


def _events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


def _tube(server: BeanstalkdProcess, tube: str = "emails") -> dict[str, Any]:
    with greenstalk.Client((server.host, server.port)) as client:
        try:
            return dict(client.stats_tube(tube))
        except greenstalk.NotFoundError:
            return {"total-jobs": 0}


class SendWelcome(BaseModel):  # what an app imports from its own code to register
    user_id: int
    email: str


async def test_given_malformed_payloads_then_each_is_buried_once_with_its_field_named(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    config = write_app(tmp_path, HANDLER, CONFIG, beanstalkd.address)
    daemon = DaemonProcess(config, tmp_path)
    port = free_port()
    daemons.append(daemon.start("--control", f"127.0.0.1:{port}"))
    daemon.wait_ready()

    malformed: dict[int, str] = {}
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="emails") as client:
        for n in range(1000):
            if n % 10 == 3:
                payload, expected = MALFORMED[(n // 10) % len(MALFORMED)]
            else:
                payload, expected = {"user_id": n, "email": f"u{n}@example.org"}, ""
            job_id = client.put(json.dumps({"task": "send-welcome", "payload": payload}))
            if expected:
                malformed[job_id] = expected

    await wait_until(
        lambda: len(_events(daemon, "job done")) + len(_events(daemon, "job buried")) == 1000,
        timeout=60,
        what="every job done or buried",
    )
    buried = _events(daemon, "job buried")
    assert len(buried) == 100 == len(malformed)
    for event in buried:
        assert event["cause"] == "schema"
        assert malformed[event["job_id"]] in event["reason"], event["reason"]
    assert _events(daemon, "job released") == []
    assert len(_events(daemon, "job done")) == 900
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        for job_id in malformed:
            stats = client.stats_job(job_id)
            assert (stats["state"], stats["reserves"], stats["releases"]) == ("buried", 1, 0)
    # Counted, and the schema served for the dashboard and other languages' producers.
    base = f"http://127.0.0.1:{port}"
    metrics = (await trio.to_thread.run_sync(lambda: httpx.get(f"{base}/metrics"))).text
    buried_for_schema = [
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "tubeworker_jobs_total" and sample.labels.get("cause") == "schema"
    ]
    assert buried_for_schema == [100.0]
    schemas = (await trio.to_thread.run_sync(lambda: httpx.get(f"{base}/schemas"))).json()
    assert schemas["send-welcome"]["schema"]["properties"]["user_id"]["type"] == "integer"


def test_given_a_malformed_payload_then_producers_refuse_it_with_the_field_named(
    beanstalkd: BeanstalkdProcess, tmp_path: Path
) -> None:
    config = write_app(tmp_path, HANDLER, CONFIG, beanstalkd.address)
    # The producer refuses before sending: the field named, the tube unchanged.
    before = _tube(beanstalkd)["total-jobs"]
    with Producer([beanstalkd.address]) as producer:
        producer.register("send-welcome", SendWelcome)
        with pytest.raises(PayloadInvalid, match=r"payload\.user_id: input should be a valid"):
            producer.enqueue("emails", "send-welcome", {"user_id": "x", "email": "e"})
        producer.enqueue("emails", "send-welcome", SendWelcome(user_id=1, email="e"))
    # And so does `tubeworker put`, from the handlers the config names.
    put = subprocess.run(
        [
            sys.executable,
            "-m",
            "tubeworker",
            "put",
            "emails",
            "--task",
            "send-welcome",
            "--payload",
            '{"user_id": 7}',
            "-c",
            str(config),
            "--server",
            beanstalkd.address,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert put.returncode == 65, put.stderr
    assert "payload.email: field required" in put.stderr
    assert _tube(beanstalkd)["total-jobs"] == before + 1  # only the valid one

    # Other languages' producers get the schema.
    schemas = subprocess.run(
        [sys.executable, "-m", "tubeworker", "schemas", "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert schemas.returncode == 0, schemas.stderr
    document = json.loads(schemas.stdout)
    assert document["send-welcome"]["version"] == 1
    assert document["send-welcome"]["schema"]["required"] == ["user_id", "email"]


# A short wait for a too-new job, so the test does not sit out the default 30 s.
ROLLING_CONFIG = CONFIG + '\n[retry]\nnewer_version_delay = "1s"\n'


class SendWelcomeV2(BaseModel):
    user_id: int
    email: str
    locale: str


async def test_given_a_rolling_deploy_then_no_job_fails_and_each_runs_once_where_understood(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    old_config = write_app(tmp_path / "old", HANDLER, ROLLING_CONFIG, beanstalkd.address)
    new_config = write_app(tmp_path / "new", NEW_HANDLER, ROLLING_CONFIG, beanstalkd.address)
    old = [DaemonProcess(old_config, tmp_path / "old") for _ in range(2)]
    new = DaemonProcess(new_config, tmp_path / "new")
    for daemon in (*old, new):
        daemons.append(daemon.start())
    for daemon in (*old, new):
        daemon.wait_ready()

    with Producer([beanstalkd.address]) as producer:
        for n in range(300):  # the old producers: v1
            producer.enqueue("emails", "send-welcome", {"user_id": n, "email": f"{n}@e.org"})
        producer.register("send-welcome", SendWelcomeV2, version=2)  # the deploy
        for n in range(300, 600):
            welcome = SendWelcomeV2(user_id=n, email=f"{n}@e.org", locale="de")
            producer.enqueue("emails", "send-welcome", welcome)

    def left_for_newer() -> list[dict[str, Any]]:
        return [e for d in old for e in _events(d, "job deferred")]

    await wait_until(lambda: bool(left_for_newer()), timeout=30, what="an old worker to defer")
    for daemon in old:  # the rest of the deploy: the old workers go
        daemon.stop()
    everything = (*old, new)

    def done() -> list[tuple[str, dict[str, Any]]]:
        return [
            ("new" if d is new else "old", e)
            for d in everything
            for e in _events(d, "welcome sent")
        ]

    await wait_until(lambda: len(done()) >= 600, timeout=60, what="all 600 jobs done")
    assert _tube(beanstalkd).get("current-jobs-ready", 0) == 0
    runs = Counter(e["user_id"] for _, e in done())
    assert sorted(runs) == list(range(600))
    assert set(runs.values()) == {1}  # each once
    for worker, event in done():
        if event["user_id"] >= 300:
            assert worker == "new", event  # v2 only where it is understood
            assert event["locale"] == "de"
        elif worker == "new":
            assert event["locale"] == "en"  # v1, upcast
    for daemon in everything:
        assert _events(daemon, "job buried") == []
        assert _events(daemon, "job released") == []
    deferred = left_for_newer()
    assert {e["cause"] for e in deferred} == {"newer_version"}
    assert all("left for a newer worker" in e["reason"] for e in deferred)
    for daemon in old:  # logged once per task and version, however many jobs
        warnings = _events(daemon, "newer payload version: left for a newer worker")
        assert len(warnings) <= 1
