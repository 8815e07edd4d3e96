"""``tubeworker dev`` and ``tubeworker demo``: the daemon with a private beanstalkd.

``dev`` runs until Ctrl-C, for trying handlers by hand. ``demo`` also enqueues a mix of
jobs over several tubes (priorities, delays, slow ones, failing ones, malformed ones),
shows progress, drains when every job has reached its end, and prints a summary.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio
from tubeworker.beanstalk.client import open_client, parse_address
from tubeworker.cli.devserver import BeanstalkdMissing, BeanstalkdProcess
from tubeworker.config import Config, LoggingConfig, PoolConfig, RetrySettings, load_config
from tubeworker.envelope import encode_envelope
from tubeworker.errors import ConfigError
from tubeworker.runtime.state import WorkerState

DEMO_TUBES = ("demo-emails", "demo-reports", "demo-images")


def _say(text: str) -> None:
    print(f"[tubeworker] {text}", file=sys.stderr, flush=True)


@asynccontextmanager
async def _private_beanstalkd() -> AsyncIterator[BeanstalkdProcess | None]:
    """A beanstalkd with a binlog in a temporary directory, stopped by PID on the way out;
    None (said why) when beanstalkd is not installed."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            server = BeanstalkdProcess(binlog_dir=Path(tmp), fsync_ms=50)
        except BeanstalkdMissing as exc:
            _say(str(exc))
            yield None
            return
        await trio.to_thread.run_sync(server.start)
        try:
            yield server
        finally:
            await trio.to_thread.run_sync(server.stop)


async def run_dev(args: argparse.Namespace) -> int:
    """A private beanstalkd plus the daemon on the tubes of the flags (default: default)."""
    from tubeworker.cli import EX_CONFIG, EX_OK, EX_UNAVAILABLE, _overrides, build_registry
    from tubeworker.observe.logs import configure_logging
    from tubeworker.service.daemon import SIGNALS, run_daemon

    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with _private_beanstalkd() as server:
            if server is None:
                return EX_UNAVAILABLE
            overrides = replace(_overrides(args), servers=(server.address,))
            if not overrides.tubes and not args.config:
                overrides = replace(overrides, tubes=("default",))
            try:
                config = load_config(args.config, overrides=overrides)
                registry = build_registry(config)
            except ConfigError as exc:
                print(f"tubeworker: bad config: {exc}", file=sys.stderr)
                return EX_CONFIG
            configure_logging(config.logging.format, config.logging.level)
            _say(f"private beanstalkd at {server.address} (pid {server.pid}); Ctrl-C drains")
            _say(
                "put a job: python -c \"import greenstalk; greenstalk.Client(('127.0.0.1', "
                f'{server.port})).put(\'{{\\"task\\": \\"demo.echo\\", \\"payload\\": 1}}\')"'
            )
            await run_daemon(config, registry, signals=signals)
    return EX_OK


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
        _say(
            f"done {c.deleted} | retried {c.released} | buried {c.buried} | running "
            f"{c.in_flight} | waiting {counts['ready'] + counts['delayed']}"
        )
        if counts["ready"] + counts["delayed"] + counts["reserved"] == 0 and c.in_flight == 0:
            state.begin_drain("demo finished")


async def run_demo(args: argparse.Namespace) -> int:
    from tubeworker.cli import EX_OK, EX_UNAVAILABLE, build_registry
    from tubeworker.observe.logs import configure_logging
    from tubeworker.service.daemon import SIGNALS, run_daemon

    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with _private_beanstalkd() as server:
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
            configure_logging(config.logging.format, config.logging.level)
            registry = build_registry(config)
            jobs = demo_jobs(max(5, args.jobs), random.Random())
            await _enqueue(server.address, jobs)
            _say(
                f"private beanstalkd at {server.address}; {len(jobs)} jobs over "
                f"{', '.join(DEMO_TUBES)}; the daemon drains when they are done (Ctrl-C: now)"
            )
            state = WorkerState()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_progress, server.address, state)
                await run_daemon(config, registry, signals=signals, state=state)
                nursery.cancel_scope.cancel()
            counts = await _tube_counts(server.address)
            c = state.counters
            _say(
                f"summary: {len(jobs)} jobs: done {c.deleted}, retried {c.released} times, "
                f"buried {counts['buried']} (see the 'job buried' lines for why), "
                f"left over {counts['ready'] + counts['delayed'] + counts['reserved']}"
            )
    return EX_OK
