"""Plumbing shared by the flow-control scenarios (``outage``, ``limits``): job bodies that
name the local API, daemons started with a generated config and gated like the daemon
scenarios, their JSON logs read back, and the code they ran recorded.

How a run starts (as in tests/bench/daemon.py): the jobs are put into a fresh tube which is
then paused (``pause-tube TUBE 3600``); the daemon(s) start and connect; when every one of
their connections is blocked in a reserve on the tube and each has logged ``ready``, the
harness lifts the pause: that is t0, read by us, with start-up excluded.

The daemon is ``tubeworker run -c CONFIG`` as users run it: JSON logs to a file, one line
per job (``job_lines = true``), stats-job per job, everything at its default unless the
scenario says otherwise. Its sources (``worker/``) are installed editable and may be
edited while a benchmark runs: the fingerprint is taken before and after every run, and a
change is reported (in the table's notes and the JSON), not fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.common import BenchError, SyncBeanstalk
from tests.bench.daemon import _Child, _tubeworker_binary, code_fingerprint
from tubeworker.beanstalk import protocol as p

__all__ = [
    "GATE_CLOSED",
    "HANDLER_NAME",
    "HANDLER_TARGET",
    "TTR",
    "DaemonLog",
    "FlowDaemon",
    "call_body",
    "check_config",
    "fingerprint",
    "open_gate",
    "prefill_calls",
    "server_counters",
    "wait_started",
    "workdir",
]

GATE_CLOSED = 3600  # pause-tube seconds while the daemons start (lifted explicitly)
TTR = 60  # every job's time to run: far longer than one call, so no TTR ever expires
HANDLER_NAME = "bench.call_api"
HANDLER_TARGET = "tests.bench.flow_handlers:call_api"
_BODY_SIZE = 100
_JOBS_PER_CONNECTION = 50  # the daemon's default [pool] jobs_per_connection
_START_TIMEOUT = 60.0
_REPO_ROOT = Path(__file__).resolve().parents[2]


def fingerprint() -> str:
    """The daemon's sources (see daemon.code_fingerprint) plus this scenario's handler."""
    digest = hashlib.sha256(code_fingerprint().encode())
    digest.update((Path(__file__).parent / "flow_handlers.py").read_bytes())
    return digest.hexdigest()[:16]


def call_body(api_url: str, n: int) -> bytes:
    """A ~100-byte JSON body naming the call this job makes (``/call/N``)."""
    head = json.dumps({"n": n, "url": f"{api_url}/call/{n}"}, separators=(",", ":"))
    pad = max(0, _BODY_SIZE - len(head) - len(',"pad":""'))
    return (head[:-1] + f',"pad":"{"x" * pad}"}}').encode()


def prefill_calls(admin: SyncBeanstalk, tube: str, api_url: str, jobs: int) -> None:
    """Put ``jobs`` call bodies into ``tube`` and pause it (the gate). ``admin`` keeps using
    the tube, so beanstalkd does not drop it while it is empty."""
    if admin.request(p.Use(tube)) != p.Using(tube):
        raise BenchError(f"use {tube} failed")
    for start in range(0, jobs, 1000):
        puts = [
            p.Put(call_body(api_url, n), ttr=TTR) for n in range(start, min(start + 1000, jobs))
        ]
        for reply in admin.pipeline(puts):
            if not isinstance(reply, p.Inserted):
                raise BenchError(f"put into {tube}: {reply!r}")
    if admin.request(p.PauseTube(tube, GATE_CLOSED)) != p.Paused():
        raise BenchError(f"pause-tube {tube} failed")
    stats = admin.tube_stats(tube)
    if stats.current_jobs_ready != jobs:
        raise BenchError(f"prefill of {tube}: wanted {jobs} ready jobs, stats say {stats}")


def open_gate(admin: SyncBeanstalk, tube: str) -> float:
    """Lift the gate's pause; returns t0 (``time.monotonic()``, the local API's clock)."""
    t0 = time.monotonic()
    if admin.request(p.PauseTube(tube, 0)) != p.Paused():
        raise BenchError(f"pause-tube {tube} 0 failed")
    return t0


def server_counters(admin: SyncBeanstalk) -> dict[str, int]:
    """beanstalkd's global counters that say what became of jobs (one system at a time)."""
    reply = admin.request(p.Stats())
    if not isinstance(reply, p.ServerStats):
        raise BenchError(f"stats: {reply!r}")
    return {
        "cmd_put": reply.cmd_put,
        "cmd_delete": reply.cmd_delete,
        "cmd_release": reply.cmd_release,
        "cmd_bury": reply.cmd_bury,
        "cmd_touch": reply.cmd_touch,
        "cmd_pause_tube": reply.cmd_pause_tube,
        "job_timeouts": reply.job_timeouts,
    }


@contextlib.contextmanager
def workdir(args: argparse.Namespace, scenario: str) -> Iterator[Path]:
    """Configs and logs: kept under the JSON directory with ``--keep-logs``, else temporary."""
    if getattr(args, "keep_logs", False):
        path = args.json_dir / f"{scenario}-logs-{time.strftime('%Y%m%dT%H%M%S')}"
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix=f"tubeworker-bench-{scenario}-") as tmp:
            yield Path(tmp)


def _child_environment() -> dict[str, str]:
    """What daemon._Child gives its process: our environment, the repo on the path."""
    env = {**os.environ, "PYTHONPATH": str(_REPO_ROOT)}
    env.pop("TUBEWORKER_CONFIG", None)
    return env


def check_config(config: Path) -> tuple[bool, str]:
    """``tubeworker check -c CONFIG``: (accepted, what it printed)."""
    done = subprocess.run(
        [str(_tubeworker_binary()), "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=_REPO_ROOT,
        env=_child_environment(),
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()


# --------------------------------------------------------------------------- daemons


class FlowDaemon:
    """``tubeworker run -c CONFIG`` as a subprocess (tests/bench/daemon.py's ``_Child``:
    its own session, stdout and stderr to files, killed by PID on the way out)."""

    def __init__(self, config_text: str, workdir: Path, stem: str, concurrency: int) -> None:
        self.config = workdir / f"{stem}.toml"
        self.config.write_text(config_text)
        self.connections = math.ceil(concurrency / _JOBS_PER_CONNECTION)
        self.child = _Child(
            [str(_tubeworker_binary()), "run", "-c", str(self.config)], workdir, stem
        )
        self.log = DaemonLog(self.child.stdout_path)

    @property
    def pid(self) -> int:
        return self.child.pid

    def close(self) -> None:
        self.child.kill()


def wait_started(
    admin: SyncBeanstalk,
    tube: str,
    daemons: Sequence[FlowDaemon],
    jobs: int,
    *,
    grace: float | None = None,
) -> bool:
    """Until every daemon logged ``ready`` and all their connections wait on the gated tube.

    ``grace``: once all are ready, go on after this many seconds even if fewer connections
    wait (a daemon might hold a lane back, e.g. until a limit lets it reserve). Returns
    whether every connection was seen waiting."""
    deadline = time.monotonic() + _START_TIMEOUT
    connections = sum(d.connections for d in daemons)
    all_ready_at = 0.0
    while True:
        stats = admin.tube_stats(tube)
        if stats.current_jobs_ready != jobs:
            raise BenchError(f"jobs left the paused tube {tube} early: {stats}")
        ready = all(d.log.has_event("ready") for d in daemons)
        if ready and stats.current_waiting >= connections:
            return True
        now = time.monotonic()
        if ready and not all_ready_at:
            all_ready_at = now
        if ready and grace is not None and now - all_ready_at >= grace:
            return False
        for d in daemons:
            d.child.check_alive("starting")
        if now > deadline:
            tails = "\n".join(d.child.stderr_tail() for d in daemons)
            raise BenchError(
                f"after {_START_TIMEOUT:.0f} s: {stats.current_waiting} of {connections} "
                f"connections waiting on {tube}, ready logged: {ready}\n{tails}"
            )
        time.sleep(0.02)


@dataclass
class DaemonLog:
    """A daemon's JSON log (one object per line), read back after or during a run."""

    path: Path

    def events(self) -> list[dict[str, Any]]:
        found = []
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written as we read
        return found

    def has_event(self, name: str) -> bool:
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return False
        return f'"event": "{name}"' in text or f'"event":"{name}"' in text

    def summary(self) -> dict[str, Any]:
        """Counts of the lines that matter here, and the ``stopped`` line's totals."""
        events = self.events()
        names = Counter(str(e.get("event", "")) for e in events)
        stopped = next((e for e in reversed(events) if e.get("event") == "stopped"), None)
        if stopped is None:
            raise BenchError(f"no 'stopped' line in {self.path}")
        totals = {k: v for k, v in stopped.items() if isinstance(v, int) and k != "pid"}
        breaker = {k: v for k, v in names.items() if k.startswith("api breaker")}
        return {
            "job_done": names["job done"],
            "job_released": names["job released"],
            "job_buried": names["job buried"],
            "job_deferred": names["job deferred"],
            "breaker_open": sum(v for k, v in breaker.items() if k.startswith("api breaker open")),
            "breaker_lines": breaker,
            "error_lines": sum(1 for e in events if e.get("level") in ("error", "critical")),
            "stopped": totals,
        }
