"""Scenario ``overhead`` (docs/benchmarks.md): no-op handler, concurrency 50 / 200 / 1000.

The whole daemon (``tubeworker run``, per-job logging on and off) against
greenstalk-threads and aiostalk, all as subprocesses on one beanstalkd. How runs are timed
and checked: tests/bench/daemon.py. Jobs per run: 60,000, about 2 s at today's ~30,000
jobs/s (20,000 made windows of under a second, mostly the ramp-up while a lane's batches
still grow, and CPU is read in 10 ms ticks).

    python -m tests.bench --scenario overhead --runs 3
"""

from __future__ import annotations

import argparse

from tests.bench import daemon

NAME = "overhead"
DEFAULT_JOBS = None  # per concurrency: see SCENARIO.jobs_for
SCENARIO = daemon.Scenario(
    name=NAME,
    title="no-op handler",
    handler=daemon.NOOP,
    concurrencies=(50, 200, 1000),
    # At least 20 turns of the pool: at 10,000 jobs in flight, 60,000 were 6 turns, a
    # window of 2 s that the first fill and the last batches weighed on (0.69-1.06x the
    # c=1000 rate in one day's invocations).
    jobs_for=lambda concurrency: max(60_000, 20 * concurrency),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    daemon.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return daemon.run_scenario(args, SCENARIO)
