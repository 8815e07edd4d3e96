"""Scenario ``batches``: what batches cost a job, and how soon a callback follows.

    python -m tests.bench --scenario batches --runs 3 [--jobs 10000]

Against one local beanstalkd (in memory), one ``tubeworker run`` daemon (a no-op handler,
concurrency 200, default JSON logging), interleaved per run:

- ``plain``: ``--jobs`` jobs put with ``Producer.enqueue``;
- ``batched``: the same jobs in batches of 100 (``producer.batch(on_complete=...)``), each
  batch's callback a job too (counted in the batched run's CPU, not in its jobs).

The jobs are put while their tube is paused, then the tube is resumed and the daemon's
CPU (from /proc) and the wall time are taken until every job (and every callback) is
done. Producer side: µs per enqueue of each. Callback latency: a separate run of 200
batches of 20 jobs whose handlers note when they end; latency is from the last job's end
to its callback's handler starting (so it includes the callback's own reserve).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.bench.common import BenchError, SyncBeanstalk, format_table, process_cpu_seconds
from tests.support.beanstalkd import BeanstalkdProcess
from tubeworker.beanstalk import protocol as p
from tubeworker.producer import Producer, Step

NAME = "batches"
DEFAULT_JOBS = 10_000
BATCH = 100

HANDLERS = """\
import os
import time

from tubeworker import Job, handler

_NOTES = os.environ.get("NOTES")


def _note(text: str) -> None:
    fd = os.open(_NOTES, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (text + "\\n").encode())
    finally:
        os.close(fd)


@handler()
async def work(job: Job) -> None:
    if _NOTES and job.batch_id:
        _note(f"end {job.batch_id} {time.time()}")


@handler()
async def callback(job: Job) -> None:
    if _NOTES:
        _note(f"callback {job.id_key.split(':')[1]} {time.time()}")
    else:
        _note_done()


def _note_done() -> None:
    fd = os.open(os.environ["DONE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"x")
    os.close(fd)
"""

CONFIG = """\
[worker]
servers = ["{address}"]

[handlers]
work = "benchbatch:work"
callback = "benchbatch:callback"

[[pool]]
name = "work"
tubes = ["work", "callbacks"]
concurrency = 200
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


class _Daemon:
    def __init__(self, workdir: Path, address: str, env: dict[str, str]) -> None:
        (workdir / "benchbatch.py").write_text(HANDLERS)
        config = workdir / "worker.toml"
        config.write_text(CONFIG.format(address=address))
        self.log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tubeworker", "run", "-c", str(config)],
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": str(workdir), **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.workdir = workdir
        deadline = time.monotonic() + 30
        while b'"event": "ready"' not in (workdir / "daemon.log").read_bytes():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BenchError("the daemon did not start")
            time.sleep(0.05)

    def cpu(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()


def _pause(address: str, tube: str, seconds: int) -> None:
    host, port = address.rsplit(":", 1)
    with SyncBeanstalk(host, int(port)) as admin:
        reply = admin.request(p.PauseTube(tube, seconds))
        if not isinstance(reply, p.Paused):
            raise BenchError(f"pause-tube {tube}: {reply!r}")


def _empty(address: str, tube: str) -> bool:
    host, port = address.rsplit(":", 1)
    with SyncBeanstalk(host, int(port)) as admin:
        stats = admin.tube_stats(tube)
    return not (stats.current_jobs_ready + stats.current_jobs_reserved + stats.current_jobs_delayed)


def _consume(daemon: _Daemon, address: str, done: Callable[[], bool]) -> tuple[float, float]:
    """Resume the tube; (wall seconds, daemon CPU seconds) until ``done()``."""
    cpu, wall = daemon.cpu(), time.perf_counter()
    _pause(address, "work", 0)
    deadline = time.monotonic() + 600
    while not done():
        if time.monotonic() > deadline:
            raise BenchError("jobs left after 600 s")
        time.sleep(0.005)
    return time.perf_counter() - wall, daemon.cpu() - cpu


def _one_run(jobs: int, mode: str) -> dict[str, float]:
    with BeanstalkdProcess() as server, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        done_file = workdir / "done"
        daemon = _Daemon(workdir, server.address, {"DONE": str(done_file)})
        try:
            with Producer([server.address]) as producer:
                _pause(server.address, "work", 3600)
                started = time.perf_counter()
                if mode == "plain":
                    for n in range(jobs):
                        producer.enqueue("work", "work", {"n": n})
                    batches = 0
                else:
                    batches = jobs // BATCH
                    callback = Step("callbacks", "callback", {})
                    for b in range(batches):
                        with producer.batch(on_complete=callback) as batch:
                            for n in range(BATCH):
                                batch.enqueue("work", "work", {"n": b * BATCH + n})
                put_us = (time.perf_counter() - started) / jobs * 1e6

            def done() -> bool:
                if not _empty(server.address, "work"):
                    return False
                return not batches or (
                    done_file.exists() and len(done_file.read_bytes()) >= batches
                )

            elapsed, cpu = _consume(daemon, server.address, done)
        finally:
            daemon.stop()
    return {"put_us": put_us, "jobs_per_s": jobs / elapsed, "cpu_us": cpu / jobs * 1e6}


def _latency(batches: int, size: int) -> list[float]:
    with BeanstalkdProcess() as server, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        notes = workdir / "notes"
        daemon = _Daemon(workdir, server.address, {"NOTES": str(notes)})
        try:
            with Producer([server.address]) as producer:
                callback = Step("callbacks", "callback", {})
                for _ in range(batches):
                    with producer.batch(on_complete=callback) as batch:
                        for n in range(size):
                            batch.enqueue("work", "work", {"n": n})
            deadline = time.monotonic() + 120
            while True:
                lines = notes.read_text().splitlines() if notes.exists() else []
                if sum(1 for line in lines if line.startswith("callback")) >= batches:
                    break
                if time.monotonic() > deadline:
                    raise BenchError("callbacks missing after 120 s")
                time.sleep(0.05)
        finally:
            daemon.stop()
    last: dict[str, float] = {}
    fired: dict[str, float] = {}
    for line in lines:
        kind, batch_id, moment = line.split()
        if kind == "end":
            last[batch_id] = max(last.get(batch_id, 0.0), float(moment))
        else:
            fired.setdefault(batch_id, float(moment))
    return sorted((fired[b] - last[b]) * 1000 for b in fired)


def run(args: argparse.Namespace) -> int:
    jobs = args.jobs - args.jobs % BATCH
    results: dict[str, list[dict[str, float]]] = {"plain": [], "batched": []}
    for _ in range(args.runs):
        for mode in results:
            results[mode].append(_one_run(jobs, mode))
    rows = []
    for mode, samples in results.items():
        rows.append(
            (
                f"{mode} ({jobs} jobs{', batches of 100' if mode == 'batched' else ''})",
                f"{statistics.median(s['jobs_per_s'] for s in samples):,.0f}",
                f"{statistics.median(s['cpu_us'] for s in samples):.1f}",
                f"{statistics.median(s['put_us'] for s in samples):.0f}",
            )
        )
    print(format_table(("run", "jobs/s", "worker CPU µs/job", "enqueue µs/job"), rows))
    latencies = _latency(200, 20)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"callback latency (last job's end → callback's start), 200 batches of 20: "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms")  # fmt: skip
    return 0
