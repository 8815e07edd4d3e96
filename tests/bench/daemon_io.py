"""Scenario ``io`` (docs/benchmarks.md): a 20 ms simulated I/O wait, concurrency 200 / 1000
(and 5000 with ``--with-5000``), with the share of the ideal (concurrency ÷ 0.02 s).

The whole daemon (``tubeworker run``, per-job logging on and off) against
greenstalk-threads (``time.sleep``) and aiostalk (``asyncio.sleep``), all as subprocesses on
one beanstalkd. How runs are timed and checked: tests/bench/daemon.py. Jobs per run default
to 30,000 (about 3 s at the ~10,000 jobs/s expected here). At 5000, greenstalk-threads
collapses (a few hundred jobs/s: 5000 threads fighting for the GIL); ``--max-window``
(default 30 s) bounds such runs.

    python -m tests.bench --scenario io --runs 3 [--with-5000]
"""

from __future__ import annotations

import argparse

from tests.bench import daemon

NAME = "io"
DEFAULT_JOBS = None  # per concurrency: see SCENARIO.jobs_for
SCENARIO = daemon.Scenario(
    name=NAME,
    title="handler waits 20 ms",
    handler=daemon.SLEEP20,
    concurrencies=(200, 1000),
    jobs_for=lambda concurrency: 30_000,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    daemon.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return daemon.run_scenario(args, SCENARIO)
