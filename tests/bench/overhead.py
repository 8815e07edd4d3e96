"""Scenario ``overhead`` (docs/benchmarks.md): no-op handler, concurrency 50 / 200 / 1000.

The whole daemon (``tubeworker run``, per-job logging on and off) against
greenstalk-threads and aiostalk, all as subprocesses on one beanstalkd. How runs are timed
and checked: tests/bench/daemon.py.

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
    jobs_for=lambda concurrency: 20_000,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    daemon.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return daemon.run_scenario(args, SCENARIO)
