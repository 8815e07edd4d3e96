"""Scenario ``broker``: the job browser and the producer's spool, timed.

    python -m tests.bench --scenario broker --runs 3 [--jobs 10000]

Against one local beanstalkd per run (in memory), with ``--jobs`` ready jobs in one tube
and as many in another tube interleaved (so the scan reads ids that are not the tube's):

- list: `tubeworker.browse_ops.list_jobs` of the tube, time to its first page (50 jobs)
  and to every job (one page of all); goal: all in < 2 s on loopback;
- move: `move_jobs` of every job to another tube, jobs per second;
- spool: `Producer.put` of 2,000 jobs with the server up (a plain put), then with nothing
  listening (each goes to the spool: SQLite, synced at each commit), per-job cost of
  each; then the flush rate once the server is back (jobs per second).

Medians over ``--runs``. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import trio

from tests.bench.common import SyncBeanstalk, format_table
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, connect
from tubeworker.browse_ops import list_jobs, move_jobs
from tubeworker.producer import Producer

NAME = "broker"
DEFAULT_JOBS = 10_000
_SPOOL_JOBS = 2_000
_BODY = b'{"task":"t","payload":{"n":0}}'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # --jobs and --runs are enough


def _fill(server: BeanstalkdProcess, jobs: int) -> None:
    with SyncBeanstalk(server.host, server.port) as admin:
        for start in range(0, jobs, 500):
            commands: list[p.Command] = []
            for _ in range(min(500, jobs - start)):
                commands += [p.Use("listed"), p.Put(_BODY, 1024, 0, 60)]
                commands += [p.Use("other"), p.Put(_BODY, 1024, 0, 60)]
            admin.pipeline(commands)


async def _browse(server: BeanstalkdProcess, jobs: int) -> dict[str, float]:
    client = await connect(Address(server.host, server.port))
    try:
        started = time.perf_counter()
        first = await list_jobs(client, "listed", ("ready",), limit=50)
        first_page = time.perf_counter() - started
        started = time.perf_counter()
        every = await list_jobs(client, "listed", ("ready",), limit=jobs + 1)
        listed_all = time.perf_counter() - started
        assert len(first.jobs) == 50
        assert len(every.jobs) == jobs, len(every.jobs)
        started = time.perf_counter()
        moved = await move_jobs(client, "listed", "moved")
        move_s = time.perf_counter() - started
        assert len(moved.moved) == jobs
    finally:
        await client.aclose()
    return {"first_page_s": first_page, "all_s": listed_all, "move_jobs_per_s": jobs / move_s}


def _spool(folder: Path) -> dict[str, float]:
    with BeanstalkdProcess() as server, Producer(server.address) as producer:
        started = time.perf_counter()
        for _ in range(_SPOOL_JOBS):
            producer.put("plain", _BODY)
        plain = (time.perf_counter() - started) / _SPOOL_JOBS
    port = free_port()
    spool = folder / "spool.db"
    with Producer(f"127.0.0.1:{port}", spool=spool, flush_every=3600) as producer:
        started = time.perf_counter()
        for _ in range(_SPOOL_JOBS):
            producer.put("spooled", _BODY)
        spooled = (time.perf_counter() - started) / _SPOOL_JOBS
        with BeanstalkdProcess(port=port):
            started = time.perf_counter()
            result = producer.flush_spool()
            flush_s = time.perf_counter() - started
    assert result.delivered == _SPOOL_JOBS, result
    return {
        "put_us": plain * 1e6,
        "spooled_us": spooled * 1e6,
        "flush_jobs_per_s": _SPOOL_JOBS / flush_s,
    }


def run(args: argparse.Namespace) -> int:
    runs: list[dict[str, float]] = []
    for _ in range(args.runs):
        with BeanstalkdProcess() as server:
            _fill(server, args.jobs)
            figures = trio.run(_browse, server, args.jobs)
        with tempfile.TemporaryDirectory() as folder:
            figures |= _spool(Path(folder))
        runs.append(figures)
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    rows = [
        ["list: first page (50)", f"{median['first_page_s'] * 1000:.0f} ms"],
        [f"list: all {args.jobs} (of {2 * args.jobs} ids)", f"{median['all_s']:.2f} s"],
        [f"move {args.jobs} jobs", f"{median['move_jobs_per_s']:.0f} jobs/s"],
        ["put, server up", f"{median['put_us']:.0f} µs/job"],
        ["put, server down (to the spool)", f"{median['spooled_us']:.0f} µs/job"],
        ["spool flush, server back", f"{median['flush_jobs_per_s']:.0f} jobs/s"],
    ]
    print(f"broker, medians of {args.runs} runs")
    print(format_table(["what", "figure"], rows))
    return 0
