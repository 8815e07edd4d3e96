"""Scenario ``floor``: what a job that waits costs the event loop alone, no beanstalkd.

The ``io`` scenario's handlers wait 20 ms. What one such job costs a worker is its share of
the work with the broker (what a no-op job costs: the ``overhead`` scenario) plus what the
wait costs the event loop: a task, and the timer. This scenario measures the second part
alone, in a fresh interpreter per run: ``--floor-jobs`` jobs, at most ``--floor-concurrency``
at once, each a task that sleeps 20 ms, started as slots free up. It is the floor under any
worker built on that loop, whatever its broker code does.

Systems:

- ``trio-sleep``: ``nursery.start_soon`` of a task that awaits ``trio.sleep(0.02)``.
- ``trio-scope-sleep``: the same inside a cancel scope with a deadline of its own, as a
  tubeworker run that waits has (its TTR guard).
- ``asyncio-sleep``: ``asyncio.create_task`` of a task that awaits ``asyncio.sleep(0.02)``.

CPU is the child's ``time.process_time`` over its loop; the table gives µs per job and the
ceiling it sets for one process (1 / CPU per job).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

from tests.bench.common import format_table, positive_int, run_child, write_json

NAME = "floor"
DEFAULT_JOBS = None  # --floor-jobs
SYSTEMS = ("trio-sleep", "trio-scope-sleep", "asyncio-sleep")
_WAIT = 0.02
_REPO_ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("floor")
    group.add_argument("--floor-jobs", type=positive_int, default=100_000)
    group.add_argument("--floor-concurrency", type=positive_int, default=1000)


# ---- the child: one system, one run


async def _trio_loop(jobs: int, concurrency: int, scoped: bool) -> None:
    free = trio.Semaphore(concurrency)

    async def job() -> None:
        try:
            if scoped:
                with trio.CancelScope(deadline=trio.current_time() + 60):
                    await trio.sleep(_WAIT)
            else:
                await trio.sleep(_WAIT)
        finally:
            free.release()

    async with trio.open_nursery() as nursery:
        for _ in range(jobs):
            await free.acquire()
            nursery.start_soon(job)


async def _asyncio_loop(jobs: int, concurrency: int) -> None:
    free = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def job() -> None:
        try:
            await asyncio.sleep(_WAIT)
        finally:
            free.release()

    for _ in range(jobs):
        await free.acquire()
        task = asyncio.create_task(job())
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)


def _child(system: str, jobs: int, concurrency: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    if system == "asyncio-sleep":
        asyncio.run(_asyncio_loop(jobs, concurrency))
    else:
        trio.run(_trio_loop, jobs, concurrency, system == "trio-scope-sleep")
    return {"elapsed": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


# ---- the parent: interleaved runs, medians


def run(args: argparse.Namespace) -> int:
    jobs, concurrency = args.floor_jobs, args.floor_concurrency
    results: dict[str, list[dict[str, float]]] = {name: [] for name in SYSTEMS}
    for number in range(1, args.runs + 1):
        for system in SYSTEMS:
            argv = [sys.executable, "-m", "tests.bench.floor", system, str(jobs), str(concurrency)]
            out = run_child(argv, timeout=600, cwd=_REPO_ROOT)
            result = json.loads(out)
            results[system].append(result)
            print(
                f"run {number}/{args.runs}  {system:<17} {jobs / result['elapsed']:>9,.0f} jobs/s"
                f"  {result['cpu'] / jobs * 1e6:6.1f} µs CPU/job",
                flush=True,
            )
    rows: list[list[str]] = []
    summary: dict[str, Any] = {}
    for system, runs in results.items():
        cpu_us = statistics.median(r["cpu"] for r in runs) / jobs * 1e6
        rate = statistics.median(jobs / r["elapsed"] for r in runs)
        summary[system] = {"cpu_us_per_job": cpu_us, "jobs_per_s": rate}
        rows.append([system, f"{rate:,.0f}", f"{cpu_us:.1f}", f"{1e6 / cpu_us:,.0f}"])
    print(
        f"\nscenario floor: tasks that wait {_WAIT * 1000:g} ms, {jobs:,} jobs, at most "
        f"{concurrency:,} at once, no broker; {args.runs} interleaved runs, medians"
    )
    print(format_table(["system", "jobs/s", "CPU µs/job", "ceiling jobs/s (1 core)"], rows))
    path = write_json(
        args.json_dir,
        NAME,
        {"jobs": jobs, "concurrency": concurrency, "runs": results, "summary": summary},
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
