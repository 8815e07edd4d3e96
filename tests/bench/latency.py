"""Latency: put → handler start, at a steady offered load.

A producer thread puts jobs at a steady rate (default 1,000 a second, for 10 s) into the
tubes that ``tubeworker run`` serves, each body ``{"t": put time}``; the no-op handler
``tests.bench.handlers:note_start`` notes when it started, and the daemon writes what it
noted when it exits after its drain. Reported: p50, p99 and max of start - put, and how
many jobs there were (every one must be accounted for). Two layouts: one tube and one pool,
and 10 tubes over 3 pools (jobs spread round-robin).

    python -m tests.bench.latency [--rate 1000] [--seconds 10]

The clock is the machine's wall clock (``time.time()``) in both processes. The producer
keeps its pace from an absolute schedule, so a slow put does not lower the rate.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import greenstalk

from tests.bench.common import BenchError, positive_int
from tests.bench.daemon import BASELINE_ENV
from tests.bench.handlers import LATENCY_FILE_ENV
from tests.support.beanstalkd import BeanstalkdProcess

REPO = Path(__file__).resolve().parents[2]
LAYOUTS = {"1 tube, 1 pool": (1, 1), "10 tubes, 3 pools": (10, 3)}


def _config(address: str, tubes: int, pools: int, concurrency: int) -> str:
    names = [f"lat-{n}" for n in range(tubes)]
    lines = [
        "[worker]",
        f'servers = ["{address}"]',
        "drain_timeout = 10",
        "[logging]",
        'format = "json"',
        "[handlers]",
        '"bench.note_start" = "tests.bench.handlers:note_start"',
    ]
    for pool in range(pools):
        mine = names[pool::pools]
        lines += [
            "[[pool]]",
            f'name = "p{pool}"',
            f"tubes = {json.dumps(mine)}",
            f"concurrency = {concurrency}",
            'handler = "bench.note_start"',
        ]
    return "\n".join(lines) + "\n"


def _produce(address: str, tubes: int, rate: int, seconds: float, put: list[int]) -> None:
    host, port = address.rsplit(":", 1)
    total = int(rate * seconds)
    with greenstalk.Client((host, int(port))) as client:
        used = None
        start = time.monotonic()
        for n in range(total):
            due = start + n / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the offered load, not waiting for a condition
            tube = f"lat-{n % tubes}"
            if tube != used:
                client.use(tube)
                used = tube
            client.put(json.dumps({"t": time.time()}).encode())
            put[0] += 1


def _drained(address: str, tubes: int, jobs: int) -> bool:
    host, port = address.rsplit(":", 1)
    with greenstalk.Client((host, int(port))) as client:
        stats = client.stats()
        return stats["current-jobs-ready"] + stats["current-jobs-reserved"] == 0 and (
            stats["cmd-delete"] >= jobs
        )


def measure(tubes: int, pools: int, rate: int, seconds: float, concurrency: int) -> list[float]:
    """Start - put, in milliseconds, of every job of one run."""
    with BeanstalkdProcess() as server, tempfile.TemporaryDirectory() as workdir:
        config = Path(workdir) / "worker.toml"
        config.write_text(_config(server.address, tubes, pools, concurrency))
        notes = Path(workdir) / "starts"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUBEWORKER_")}
        # TUBEWORKER_BENCH_BASELINE=DIR: another tree's tubeworker (as tests/bench/daemon.py)
        path = [p for p in (os.environ.get(BASELINE_ENV), str(REPO)) if p]
        env.update({LATENCY_FILE_ENV: str(notes), "PYTHONPATH": os.pathsep.join(path)})
        with open(Path(workdir) / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "tubeworker", "run", "-c", str(config)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait(lambda: _waiting(server.address) >= pools, 30, "the daemon's lanes")
            put = [0]
            producer = threading.Thread(
                target=_produce, args=(server.address, tubes, rate, seconds, put)
            )
            producer.start()
            producer.join()
            _wait(lambda: _drained(server.address, tubes, put[0]), 60, "every job done")
            daemon.send_signal(signal.SIGTERM)
            if daemon.wait(timeout=60) != 0:
                raise BenchError(f"the daemon exited {daemon.returncode}")
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        pairs = [
            line.split()
            for path in Path(workdir).glob("starts.*")
            for line in path.read_text().splitlines()
        ]
        if len(pairs) != put[0]:
            raise BenchError(f"{put[0]} jobs put, {len(pairs)} handler starts noted")
        return [(float(start) - float(put_at)) * 1000 for put_at, start in pairs]


def _waiting(address: str) -> int:
    host, port = address.rsplit(":", 1)
    with greenstalk.Client((host, int(port))) as client:
        return int(client.stats()["current-waiting"])


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)  # polling beanstalkd from outside: nothing to wait on


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=positive_int, default=1000, help="jobs put per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=positive_int, default=200, help="per pool")
    args = parser.parse_args(argv)
    print(f"put → handler start at {args.rate:,} jobs/s for {args.seconds:g} s (milliseconds)")
    print(f"{'layout':<20} {'jobs':>7} {'p50':>7} {'p99':>7} {'max':>7}")
    try:
        for name, (tubes, pools) in LAYOUTS.items():
            waits = sorted(measure(tubes, pools, args.rate, args.seconds, args.concurrency))
            p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
            print(
                f"{name:<20} {len(waits):>7,} {statistics.median(waits):>7.2f} "
                f"{p99:>7.2f} {waits[-1]:>7.2f}"
            )
    except BenchError as exc:
        print(f"benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
