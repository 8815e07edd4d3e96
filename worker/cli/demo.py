"""``tubeworker demo``: a private beanstalkd, a mix of demo jobs, and the daemon.

It enqueues jobs over several tubes (priorities, delays, slow ones, failing ones, malformed
ones), shows progress, drains when every job has reached its end, and prints a summary.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

import trio

from tubeworker.beanstalk.client import open_client, parse_address
from tubeworker.cli.devserver import open_private_beanstalkd
from tubeworker.cli.startup import EX_OK, EX_UNAVAILABLE, build_registry, serve
from tubeworker.config import Config, LoggingConfig, PoolConfig, RetrySettings
from tubeworker.envelope import encode_envelope
from tubeworker.runtime.state import WorkerState
from tubeworker.service.daemon import SIGNALS

DEMO_TUBES = ("demo-emails", "demo-reports", "demo-images")


def say(text: str) -> None:
    print(f"[tubeworker] {text}", file=sys.stderr, flush=True)


def demo_jobs(count: int, rng: random.Random) -> list[tuple[str, bytes, int, int]]:
    """(tube, body, priority, delay) for a mix that shows every outcome."""
    jobs: list[tuple[str, bytes, int, int]] = [
        ("demo-emails", b"{not json", 1024, 0),  # buried at once: malformed
        ("demo-reports", encode_envelope("no.such.task", {}), 1024, 0),  # buried: unknown task
        ("demo-images", encode_envelope("demo.fail", {"n": 1}), 1024, 0),  # retried, buried
    ]
    kinds = ["demo.echo"] * 8 + ["demo.sleep"] * 5 + ["demo.flaky"] * 4 + ["demo.checksum"]
    for i in range(max(0, count - len(jobs))):
        task = rng.choice(kinds)
        payload: dict[str, Any] = {"n": i}
        if task == "demo.sleep":
            payload["seconds"] = round(rng.uniform(0.1, 1.5), 2)
        elif task == "demo.flaky":
            payload["fail_rate"] = 0.4
        elif task == "demo.checksum":
            payload["rounds"] = 20_000
        priority = 0 if rng.random() < 0.1 else 1024  # a few urgent ones jump the queue
        delay = rng.choice([0] * 8 + [1, 2])
        jobs.append((rng.choice(DEMO_TUBES), encode_envelope(task, payload), priority, delay))
    return jobs


async def _enqueue(address: str, jobs: list[tuple[str, bytes, int, int]]) -> None:
    async with open_client(address) as client:
        for tube, body, priority, delay in jobs:
            await client.use(tube)
            await client.put(body, priority=priority, delay=delay, ttr=30)


async def _tube_counts(address: str) -> dict[str, int]:
    totals = {"ready": 0, "delayed": 0, "reserved": 0, "buried": 0}
    async with open_client(address) as client:
        for tube in DEMO_TUBES:
            stats = await client.stats_tube(tube)
            totals["ready"] += stats.current_jobs_ready
            totals["delayed"] += stats.current_jobs_delayed
            totals["reserved"] += stats.current_jobs_reserved
            totals["buried"] += stats.current_jobs_buried
    return totals


async def _watch_progress(address: str, state: WorkerState) -> None:
    """Print progress each second; drain once nothing is left to do."""
    while not state.draining:
        await trio.sleep(1.0)
        counts = await _tube_counts(address)
        c = state.counters
        say(
            f"done {c.deleted} | retried {c.released} | buried {c.buried} | running "
            f"{c.in_flight} | waiting {counts['ready'] + counts['delayed']}"
        )
        if counts["ready"] + counts["delayed"] + counts["reserved"] == 0 and c.in_flight == 0:
            state.begin_drain("demo finished")


async def run_demo(args: argparse.Namespace) -> int:
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with open_private_beanstalkd(say) as server:
            if server is None:
                return EX_UNAVAILABLE
            config = Config(
                pools=(
                    PoolConfig(
                        name="demo",
                        tubes=("demo-*",),  # a pattern: tubes are discovered by polling
                        concurrency=20,
                        retry=RetrySettings(max_attempts=3, backoff_base=1.0, backoff_cap=2.0),
                    ),
                ),
                servers=(parse_address(server.address),),
                drain_timeout=10.0,
                tube_poll_interval=0.5,
                logging=LoggingConfig(format=args.log_format),
                source="demo",
            )
            registry = build_registry(config)
            jobs = demo_jobs(max(5, args.jobs), random.Random())
            await _enqueue(server.address, jobs)
            say(
                f"private beanstalkd at {server.address}; {len(jobs)} jobs over "
                f"{', '.join(DEMO_TUBES)}; the daemon drains when they are done (Ctrl-C: now)"
            )
            state = WorkerState()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_progress, server.address, state)
                await serve(config, registry, signals, state=state, batched=False)
                nursery.cancel_scope.cancel()
            counts = await _tube_counts(server.address)
            c = state.counters
            say(
                f"summary: {len(jobs)} jobs: done {c.deleted}, retried {c.released} times, "
                f"buried {counts['buried']} (see the 'job buried' lines for why), "
                f"left over {counts['ready'] + counts['delayed'] + counts['reserved']}"
            )
    return EX_OK
