"""Scenario ``memory``: RSS per job in flight, with every job held by a long handler.

    python -m tests.bench --scenario memory [--memory-jobs 10000] [--memory-seconds 10]

A private beanstalkd; `tubeworker run` with one pool of concurrency N (and
``max_in_flight`` N) on a tube, its control plane on; its idle RSS is read from /proc once
it is ready; then N jobs of the built-in ``demo.sleep`` handler (``--memory-seconds``
each) are put, and RSS is read until /status says all N run. The figure is
(peak - idle) / N: what one more job in flight costs. Goal (issue 16): at most 8 KiB at
N = 10,000. The daemon is stopped by PID (SIGTERM, drain) at the end.
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

import greenstalk
import httpx

from tests.bench.common import BenchError, format_table, positive_int
from tests.support.beanstalkd import BeanstalkdProcess, free_port

NAME = "memory"
DEFAULT_JOBS = None
REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-jobs", type=positive_int, default=10_000)
    parser.add_argument("--memory-seconds", type=float, default=10.0)


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
            daemon.wait(timeout=seconds + 60)


def run(args: argparse.Namespace) -> int:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for jobs in sorted({1_000, args.memory_jobs}):
            idle, peak, running = _one(jobs, args.memory_seconds, Path(folder))
            per_job = (peak - idle) / running
            rows.append([str(jobs), f"{idle / 1024:.1f} MiB", f"{peak / 1024:.1f} MiB",
                         f"{per_job:.2f} KiB"])  # fmt: skip
    print(f"memory: jobs held by {args.memory_seconds:g} s handlers")
    print(format_table(["in flight", "idle RSS", "peak RSS", "per job"], rows))
    return 0
