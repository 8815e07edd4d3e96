"""Scenario ``schedules``: many schedules on a fleet that keeps being killed.

    python -m tests.bench --scenario schedules [--schedules 100] [--schedules-seconds 120]

One private beanstalkd; three `tubeworker run` daemons sharing ``--schedules`` schedules of
``every = "1s"`` (misfire ``catch_up``) that put into one tube no pool works on; for
``--schedules-seconds``, every 5 to 10 s the daemon that fired last (the likely holder of
the next ticks) is killed -9 and started again, and once, half-way, one daemon is stopped
(SIGSTOP) for 15 s and continued. Then every daemon drains and the tube is read:

- fires expected (each schedule, every second from its first fire to its last) against
  put (must be equal), duplicates (an id twice: must be 0), missing;
- lateness p50 / p99 / max: each daemon logs ``lateness_ms`` for each fire it puts (from
  the fire time to its put being answered);
- take-over: the most lateness of the fires of the 3 s after each kill -9 (goal ≤ 1 s),
  and of the 20 s after the SIGSTOP (goal ≤ the tick's TTR, 10 s, + reserve_timeout);
- CPU per fire: two calm runs (no kills) of 30 s, the fleet with the schedules and with
  none: the difference in the daemons' CPU time (/proc) per fire.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import tempfile
import time
from datetime import datetime
from pathlib import Path

import greenstalk

from tests.bench.common import BenchError, format_table, positive_int, process_cpu_seconds
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess

NAME = "schedules"
DEFAULT_JOBS = None
_DAEMONS = 3
_STOP_FOR = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schedules", type=positive_int, default=100)
    parser.add_argument("--schedules-seconds", type=positive_int, default=120)


def _config(path: Path, server: BeanstalkdProcess, schedules: int) -> Path:
    lines = [f'[worker]\nservers = ["{server.address}"]\n[[pool]]\ntubes = ["unused"]\n']
    for n in range(schedules):
        lines.append(
            f'[[schedule]]\nname = "s{n}"\nevery = "1s"\ntube = "fires"\ntask = "noop"\n'
            'misfire = "catch_up"\n'
        )
    path.write_text("".join(lines))
    return path


def _fired(daemon: DaemonProcess) -> list[dict]:
    return [e for e in daemon.events() if e.get("event") == "schedule fired"]


def _last_fired(daemon: DaemonProcess) -> str:
    return max((e["timestamp"] for e in _fired(daemon)), default="")


def _cpu(daemon: DaemonProcess) -> float:
    try:
        return process_cpu_seconds(daemon.pid)
    except (OSError, ValueError):
        return 0.0


def _fleet_run(
    folder: Path, schedules: int, seconds: float, *, chaos: bool
) -> tuple[list[DaemonProcess], float, list[float], float | None, BeanstalkdProcess]:
    """Run the fleet; (every daemon started, their CPU seconds, kill times, stop time)."""
    server = BeanstalkdProcess().start()
    everyone: list[DaemonProcess] = []  # every daemon started: each stopped on an error
    cpu, kills, stopped_at = 0.0, [], None
    rng = random.Random(7)
    try:
        config = _config(folder / f"w{schedules}.toml", server, schedules)
        fleet = []
        for _ in range(_DAEMONS):
            daemon = DaemonProcess(config, folder)
            everyone.append(daemon)
            fleet.append(daemon.start())
        for daemon in fleet:
            daemon.wait_ready(timeout=60)
        end = time.monotonic() + seconds
        next_kill = time.monotonic() + rng.uniform(5, 10)
        stop_at = time.monotonic() + seconds / 2
        stopped: DaemonProcess | None = None
        while time.monotonic() < end:
            time.sleep(0.2)
            if not chaos:
                continue
            now = time.monotonic()
            if stopped is None and stopped_at is None and now >= stop_at:
                stopped = max(fleet, key=_last_fired)  # the likely holder
                stopped.signal(signal.SIGSTOP)
                stopped_at = time.time()
            if (
                stopped is not None
                and stopped_at is not None
                and time.time() > stopped_at + _STOP_FOR
            ):
                stopped.signal(signal.SIGCONT)
                stopped = None
            if now >= next_kill:
                candidates = [d for d in fleet if d is not stopped]
                latest = max(
                    candidates, key=lambda d: max((e["timestamp"] for e in _fired(d)), default="")
                )
                cpu += _cpu(latest)
                latest.signal(signal.SIGKILL)
                latest.wait(timeout=10)
                kills.append(time.time())
                fresh = DaemonProcess(config, folder)
                everyone.append(fresh)
                fresh.start()
                fleet[fleet.index(latest)] = fresh
                next_kill = now + rng.uniform(5, 10)
        if stopped is not None:
            stopped.signal(signal.SIGCONT)
        for daemon in fleet:
            cpu += _cpu(daemon)
            daemon.signal(signal.SIGTERM)
        for daemon in fleet:
            if daemon.wait(timeout=60) != 0:
                raise BenchError("a daemon did not drain cleanly")
        return everyone, cpu, kills, stopped_at, server
    except BaseException:
        for daemon in everyone:
            daemon.stop()
        server.stop()
        raise


def _ids(server: BeanstalkdProcess) -> list[str]:
    ids = []
    with greenstalk.Client((server.host, server.port), watch="fires") as client:
        while True:
            try:
                job = client.reserve(timeout=0)
            except greenstalk.TimedOutError:
                return ids
            ids.append(json.loads(job.body)["id"])
            client.delete(job)


def _expected(ids: list[str], schedules: int) -> tuple[int, int]:
    """(fires expected, missing) over the window every schedule was firing in: from the
    latest of their first fires to the earliest of their last, every second, for each of
    the ``schedules`` (one that never fired misses them all)."""
    times: dict[str, set[float]] = {f"s{n}": set() for n in range(schedules)}
    for key in ids:
        _, name, when = key.split(":", 2)
        times.setdefault(name, set()).add(datetime.fromisoformat(when[:-1]).timestamp())
    fired = [t for t in times.values() if t]
    if not fired:
        return 0, 0
    start, end = max(min(t) for t in fired), min(max(t) for t in fired)
    per_schedule = int(end - start) + 1
    expected = per_schedule * len(times)
    present = sum(1 for t in times.values() for f in t if start <= f <= end)
    return expected, expected - present


def _stamp(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def _spread(values: list[float]) -> str:
    p50, p99 = _percentile(values, 0.5) * 1000, _percentile(values, 0.99) * 1000
    return f"{p50:.1f} ms / {p99:.0f} ms / {max(values, default=0) * 1000:.0f} ms"


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as folder:
        everyone, _, kills, stopped_at, server = _fleet_run(
            Path(folder), args.schedules, args.schedules_seconds, chaos=True
        )
        try:
            ids = _ids(server)
        finally:
            server.stop()
        fires = [e for d in everyone for e in _fired(d)]
        calm = min(30, args.schedules_seconds)
        busy, busy_cpu, _, _, busy_server = _fleet_run(
            Path(folder), args.schedules, calm, chaos=False
        )
        busy_server.stop()
        calm_fires = sum(len(_fired(d)) for d in busy)
        _, idle_cpu, _, _, idle_server = _fleet_run(Path(folder), 0, calm, chaos=False)
        idle_server.stop()
    expected, missing = _expected(ids, args.schedules)
    duplicates = len(ids) - len(set(ids))
    lateness = [e["lateness_ms"] / 1000 for e in fires]
    calm_lateness = [  # outside the SIGSTOP's 20 s (its fires wait for the tick's TTR)
        e["lateness_ms"] / 1000
        for e in fires
        if stopped_at is None or not stopped_at <= _stamp(e) <= stopped_at + 20
    ]

    after_kill = [
        max((e["lateness_ms"] / 1000 for e in fires if k <= _stamp(e) <= k + 3), default=0.0)
        for k in kills
    ]
    after_stop = (
        max(
            (e["lateness_ms"] / 1000 for e in fires if stopped_at <= _stamp(e) <= stopped_at + 20),
            default=0.0,
        )
        if stopped_at is not None
        else float("nan")
    )
    per_fire = max(0.0, busy_cpu - idle_cpu) / max(1, calm_fires)
    rows = [
        ["fires expected / put, in the window all fired", f"{expected} / {expected - missing}"],
        ["duplicates (an id twice)", str(duplicates)],
        ["missing", str(missing)],
        ["lateness p50 / p99 / max", _spread(lateness)],
        ["  the same, outside the SIGSTOP", _spread(calm_lateness)],
        [f"take-over after kill -9 (max of {len(kills)})", f"{max(after_kill, default=0):.2f} s"],
        [f"take-over after SIGSTOP ({_STOP_FOR:g} s)", f"{after_stop:.1f} s"],
        ["CPU per fire (calm fleet, over one with none)", f"{per_fire * 1e6:.0f} µs"],
    ]  # fmt: skip
    print(
        f"schedules: {args.schedules} x every 1s, {_DAEMONS} daemons, "
        f"{args.schedules_seconds} s, {len(kills)} kills -9, one SIGSTOP"
    )
    print(format_table(["what", "figure"], rows))
    return 0 if duplicates == 0 and missing == 0 else 1
