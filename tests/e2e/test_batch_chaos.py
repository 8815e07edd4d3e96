"""Batches under kills, through `tubeworker run` on a real beanstalkd: 500 batches of 1-50
jobs, 10 % failing their first attempt, 2 % buried for good, some adding children as they
run, three daemons with one killed -9 and restarted every 1.5 s. A ledger (one file every
daemon appends to, O_APPEND) proves it: each batch fires on_complete exactly once (one
callback job), on_success exactly once if none of its jobs was buried and never
otherwise, on_death exactly once if one was; no callback ran before every job of its
batch (children included) had ended."""

from __future__ import annotations

import os
import random
import signal
from collections import defaultdict
from pathlib import Path

import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until
from tubeworker.producer import Producer, Step

pytestmark = pytest.mark.slow

BATCHES = 500

HANDLERS = """\
import os
import random

import trio

from tubeworker import Bury, Job, handler


def _line(text: str) -> None:
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (text + "\\n").encode())
    finally:
        os.close(fd)


@handler()
async def work(job: Job) -> None:
    key = job.payload["key"]
    if job.payload.get("doomed"):
        _line(f"end {job.batch_id} {key} buried")
        raise Bury("doomed")
    if job.payload.get("flaky") and job.attempt == 1:
        raise RuntimeError("fails its first attempt")
    for n in range(job.payload.get("children", 0)):
        await job.put_in_batch("work", {"key": f"{key}.{n}"}, id=f"{key}.{n}")
    await trio.sleep(random.random() * 0.02)
    _line(f"end {job.batch_id} {key} ok")


@handler()
async def callback(job: Job) -> None:
    _line(f"callback {job.id_key} {job.id}")
"""

CONFIG = """\
[worker]
servers = ["{address}"]

[retry]
backoff_base = 0.5
backoff_cap = 2

[handlers]
work = "chaos.jobs:work"
callback = "chaos.jobs:callback"

[[pool]]
name = "work"
tubes = ["work", "callbacks"]
concurrency = 50
"""


def plan_batches(rng: random.Random) -> list[list[dict[str, object]]]:
    """Each batch's jobs (payloads): 1-50, 10 % flaky, 2 % doomed, 10 % with children."""
    planned = []
    for b in range(BATCHES):
        jobs: list[dict[str, object]] = []
        for n in range(rng.randint(1, 50)):
            payload: dict[str, object] = {"key": f"{b}-{n}"}
            roll = rng.random()
            if roll < 0.02:
                payload["doomed"] = True
            elif roll < 0.12:
                payload["flaky"] = True
            elif roll < 0.22:
                payload["children"] = rng.randint(1, 3)
            jobs.append(payload)
        planned.append(jobs)
    return planned


def expected_keys(jobs: list[dict[str, object]]) -> set[str]:
    keys = set()
    for payload in jobs:
        keys.add(str(payload["key"]))
        keys.update(f"{payload['key']}.{n}" for n in range(int(str(payload.get("children", 0)))))
    return keys


async def test_given_kills_then_each_batch_fires_each_callback_once_after_its_last_job(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    (tmp_path / "chaos").mkdir()
    (tmp_path / "chaos" / "__init__.py").write_text("")
    (tmp_path / "chaos" / "jobs.py").write_text(HANDLERS)
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG.format(address=beanstalkd.address))
    ledger = tmp_path / "ledger"

    def start() -> DaemonProcess:
        daemon = DaemonProcess(config, tmp_path, env={"LEDGER": str(ledger)})
        daemons.append(daemon.start())
        daemon.wait_ready()
        return daemon

    fleet = [start(), start(), start()]
    planned = plan_batches(random.Random(21))
    ids: list[str] = []

    def callbacks_seen() -> dict[str, dict[str, set[str]]]:
        """batch → callback kind → the callback job ids that ran."""
        seen: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        if ledger.exists():
            for line in ledger.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] == "callback":
                    _, batch_id, kind = parts[1].split(":")
                    seen[batch_id][kind].add(parts[2])
        return seen

    def enqueue_all() -> None:
        def on(kind: str) -> Step:
            return Step("callbacks", "callback", {"kind": kind})

        with Producer([beanstalkd.address]) as producer:
            for jobs in planned:
                with producer.batch(
                    on_success=on("success"), on_complete=on("complete"), on_death=on("death")
                ) as batch:
                    for payload in jobs:
                        batch.enqueue("work", "work", payload, id=str(payload["key"]))
                ids.append(batch.id)

    def all_complete() -> bool:
        seen = callbacks_seen()
        return len(ids) == BATCHES and all("complete" in seen.get(b, {}) for b in ids)

    kills = 0

    async def kill_while_running() -> None:
        nonlocal kills
        # Kills while the batches are filled and run: every 1.5 s, up to 12.
        while not all_complete() and kills < 12:
            await trio.sleep(1.5)
            victim = fleet[kills % 3]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(10)
            fleet[kills % 3] = start()
            kills += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_while_running)
        await trio.to_thread.run_sync(enqueue_all)
    assert kills >= 3, "the batches ended before the kills"
    await wait_until(all_complete, timeout=180, what="every batch's on_complete")
    # A kill may leave a success recorded and its job to run again: let repeats settle.
    await wait_until(lambda: len(callbacks_seen()) == BATCHES, timeout=30, what="callbacks")

    lines = ledger.read_text().splitlines()
    first_end: dict[tuple[str, str], int] = {}
    first_callback: dict[tuple[str, str], int] = {}
    for index, line in enumerate(lines):
        parts = line.split()
        if len(parts) == 4 and parts[0] == "end":
            first_end.setdefault((parts[1], parts[2]), index)
        elif len(parts) == 3 and parts[0] == "callback":
            _, batch_id, kind = parts[1].split(":")
            first_callback.setdefault((batch_id, kind), index)
    seen = callbacks_seen()
    for batch_id, jobs in zip(ids, planned, strict=True):
        doomed = any(payload.get("doomed") for payload in jobs)
        fired = {kind: len(found) for kind, found in seen[batch_id].items()}
        expected = {"complete": 1, ("death" if doomed else "success"): 1}
        assert fired == expected, (batch_id, fired, expected)
        keys = expected_keys(jobs)
        ended = [first_end.get((batch_id, key)) for key in keys]
        assert None not in ended, (
            batch_id,
            sorted(k for k in keys if (batch_id, k) not in first_end),
        )
        last = max(i for i in ended if i is not None)
        for kind in ("complete", "success"):
            if (batch_id, kind) in first_callback:
                assert first_callback[batch_id, kind] > last, (batch_id, kind)
