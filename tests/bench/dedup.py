"""Scenario ``dedup``: enqueue-time de-duplication (``unique_for``) on beanstalkd alone.

    python -m tests.bench --scenario dedup --runs 3 [--jobs 1000]

Against one local beanstalkd per run (in memory):

- race: two producers (processes, a connection each) put the same id, the second
  ``offset`` after the first (a barrier, then a busy wait), ``--jobs`` ids per offset:
  the share of ids put twice at each offset draws the race window (beanstalkd has no
  "put if absent": a check, then a put, then a marker);
- cost: one producer's enqueue with ``unique_for`` against a plain enqueue, µs each.

Medians over ``--runs``. Figures go to docs/unique.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any

import greenstalk

from tests.bench.common import BenchError, format_table
from tests.support.beanstalkd import BeanstalkdProcess
from tubeworker.producer import Producer

NAME = "dedup"
DEFAULT_JOBS = 1_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


OFFSETS_MS = (0.0, 0.5, 1.0, 2.0, 5.0)


def _produce(address: str, tube: str, ids: int, wait: float, barrier: Any) -> None:
    with Producer([address]) as producer:
        producer.enqueue(tube, "t", {}, id=f"warm-{tube}-{wait}", unique_for="10m")  # connected
        for n in range(ids):
            barrier.wait()
            until = time.perf_counter() + wait
            while time.perf_counter() < until:
                pass
            producer.enqueue(tube, "t", {"n": n}, id=f"{tube}-{n}", unique_for="10m")


def _race(server: BeanstalkdProcess, ids: int, offset: float) -> int:
    """Two producer processes (no shared GIL: each waits its offset on its own core)."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    tube = f"race-{offset * 1e6:.0f}us"
    producers = [
        context.Process(target=_produce, args=(server.address, tube, ids, wait, barrier))
        for wait in (0.0, offset)
    ]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join(timeout=600)
        if producer.exitcode != 0:
            raise BenchError(f"a producer process failed (exit {producer.exitcode})")
    with greenstalk.Client((server.host, server.port)) as client:
        put = int(client.stats_tube(tube)["current-jobs-ready"])
    return put - ids - 2  # ids put twice (the two warm-up jobs aside)


def _cost(server: BeanstalkdProcess, jobs: int) -> tuple[float, float]:
    with Producer([server.address]) as producer:
        started = time.perf_counter()
        for n in range(jobs):
            producer.enqueue("plain", "t", {"n": n}, id=f"p-{n}")
        plain = (time.perf_counter() - started) / jobs
        started = time.perf_counter()
        for n in range(jobs):
            producer.enqueue("unique", "t", {"n": n}, id=f"u-{n}", unique_for="10m")
        unique = (time.perf_counter() - started) / jobs
    return plain * 1e6, unique * 1e6


def _share(counts: list[int], ids: int) -> str:
    median = statistics.median(counts)
    return f"{median:g} of {ids} ({100 * median / ids:.1f} %)"


def run(args: argparse.Namespace) -> int:
    races: dict[float, list[int]] = {offset: [] for offset in OFFSETS_MS}
    plains: list[float] = []
    uniques: list[float] = []
    for _ in range(args.runs):
        with BeanstalkdProcess() as server:
            for offset in OFFSETS_MS:
                races[offset].append(_race(server, args.jobs, offset / 1000))
            plain, unique = _cost(server, args.jobs)
            plains.append(plain)
            uniques.append(unique)
    rows = [
        (f"put twice, 2nd producer {offset:g} ms later", _share(counts, args.jobs))
        for offset, counts in races.items()
    ]
    rows += [
        ("enqueue, plain (µs)", f"{statistics.median(plains):.0f}"),
        ("enqueue, unique_for (µs)", f"{statistics.median(uniques):.0f}"),
    ]
    print(format_table(("what", "figure"), rows))
    return 0
