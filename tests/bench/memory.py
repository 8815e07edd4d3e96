"""Scenario ``memory``: RSS per job in flight, with every job held by a long handler.

    python -m tests.bench --scenario memory [--memory-jobs 10000] [--memory-seconds 10]
    python -m tests.bench --scenario memory --memory-jobs-list 1000,2500,5000,10000

For each N (``--memory-jobs N``: 1,000 and N; ``--memory-jobs-list``: those), one after
the other: a private beanstalkd; `tubeworker run` with one pool of concurrency N (and
``max_in_flight`` N) on a tube, its control plane on; its idle RSS is read from /proc once
it is ready; then N jobs of the built-in ``demo.sleep`` handler (``--memory-seconds``
each) are put, and RSS is read until /status says all N run. The figure is
(peak - idle) / N: what one more job in flight costs. Goal (issue 16): at most 8 KiB at
N = 10,000. The daemon and beanstalkd are stopped by PID (SIGTERM, drain) after each N.

The table is printed and the result written to ``--json-dir`` as ``STAMP-memory.json``
(its ``summary``: one row per N with ``idle_rss_kib``, ``peak_rss_kib`` and
``kib_per_job``), which ``python -m tests.bench.charts`` draws as
``docs/charts/rss-per-job.svg``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import greenstalk
import httpx

from tests.bench.common import (
    BenchError,
    environment_info,
    format_table,
    positive_int,
    write_json,
)
from tests.bench.daemon import code_fingerprint
from tests.support.beanstalkd import BeanstalkdProcess, find_beanstalkd, free_port

NAME = "memory"
DEFAULT_JOBS = None
REPO = Path(__file__).resolve().parents[2]
GOAL_KIB_PER_JOB = 8.0  # issue 16, at N = 10,000
_SMALL = 1_000  # --memory-jobs N runs this N too


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory scenario")
    group.add_argument(
        "--memory-jobs",
        type=positive_int,
        default=None,
        help=f"jobs in flight: runs {_SMALL:,} and this (default 10000)",
    )
    group.add_argument(
        "--memory-jobs-list",
        metavar="N,N,…",
        help="jobs in flight to run, one daemon each (instead of --memory-jobs)",
    )
    group.add_argument(
        "--memory-seconds", type=float, default=10.0, help="each job's sleep (default 10)"
    )


def jobs_to_run(args: argparse.Namespace) -> list[int]:
    """The in-flight counts to measure, smallest first: ``--memory-jobs-list``'s, or
    1,000 and ``--memory-jobs`` (default 10,000)."""
    if args.memory_jobs_list is not None:
        if args.memory_jobs is not None:
            raise SystemExit("give --memory-jobs or --memory-jobs-list, not both")
        try:
            values = [int(v) for v in args.memory_jobs_list.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or any(v < 1 for v in values):
            raise SystemExit(
                f"--memory-jobs-list needs positive integers, got {args.memory_jobs_list!r}"
            )
        return sorted(set(values))
    return sorted({_SMALL, args.memory_jobs or 10_000})


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for {pid}")


def _one(jobs: int, seconds: float, folder: Path) -> tuple[int, int, int]:
    with BeanstalkdProcess() as server:
        port = free_port()
        config = folder / "w.toml"
        config.write_text(
            f'[worker]\nservers = ["{server.address}"]\nmax_in_flight = {jobs}\n'
            f'[[pool]]\ntubes = ["mem"]\nconcurrency = {jobs}\n[control]\nmetrics_interval = 1\n'
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tubeworker", "run", "-c", str(config),
             "--control", f"127.0.0.1:{port}"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "TUBEWORKER_LOG_FORMAT": "json"},
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError("the daemon did not get ready")
                time.sleep(0.1)
            idle = _rss_kib(daemon.pid)
            body = json.dumps({"task": "demo.sleep", "payload": {"seconds": seconds}})
            with greenstalk.Client((server.host, server.port), use="mem") as client:
                for _ in range(jobs):
                    client.put(body, ttr=max(60, int(seconds * 3)))
            peak, running = idle, 0
            deadline = time.monotonic() + seconds + 60
            while running < jobs:
                if time.monotonic() > deadline:
                    raise BenchError(f"only {running} of {jobs} jobs ran at once")
                running = httpx.get(f"{base}/status", timeout=5).json()["jobs_running"]
                peak = max(peak, _rss_kib(daemon.pid))
                time.sleep(0.2)
            peak = max(peak, _rss_kib(daemon.pid))
            return idle, peak, running
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)


def run(args: argparse.Namespace) -> int:
    counts = jobs_to_run(args)
    fingerprint = code_fingerprint()
    env = environment_info(find_beanstalkd())  # before the runs: the load at the start
    summary: list[dict[str, Any]] = []
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for jobs in counts:
            idle, peak, running = _one(jobs, args.memory_seconds, Path(folder))
            per_job = (peak - idle) / running
            summary.append(
                {
                    "jobs": jobs,
                    "running": running,
                    "idle_rss_kib": idle,
                    "peak_rss_kib": peak,
                    "kib_per_job": per_job,
                }
            )
            rows.append([f"{jobs:,}", f"{idle / 1024:.1f} MiB", f"{peak / 1024:.1f} MiB",
                         f"{per_job:.2f} KiB"])  # fmt: skip
            print(
                f"{jobs:>6,} in flight: idle {idle / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
                f"{per_job:.2f} KiB a job",
                file=sys.stderr,
                flush=True,
            )
            if code_fingerprint() != fingerprint:
                raise BenchError(
                    "the daemon's source changed during the benchmark (worker/ is installed "
                    "editable): the rows would mix two versions; run again"
                )
    headers = ["in flight", "idle RSS", "peak RSS", "per job"]
    title = f"memory: jobs held by {args.memory_seconds:g} s handlers"
    table = title + "\n" + format_table(headers, rows)
    print(table)
    path = write_json(
        args.json_dir,
        NAME,
        {
            "scenario": NAME,
            "environment": {**env, "code_fingerprint": fingerprint},
            "parameters": {
                "jobs_in_flight": counts,
                "handler": {"name": "demo.sleep", "seconds": args.memory_seconds},
                "goal_kib_per_job": GOAL_KIB_PER_JOB,
                "measure": "VmRSS of the daemon from /proc: idle once /readyz answers 200, "
                "peak the largest read (every 0.2 s) until /status says all N run; "
                "kib_per_job = (peak - idle) / running",
            },
            "summary": summary,
            "table": table,
        },
    )
    print(f"\nwrote {path}")
    return 0
