"""What the scenarios share: the daemon's config, starting and stopping it, reading its log,
waiting on conditions, asking beanstalkd, reporting figures.

The daemon runs as users run it (``python -m tubeworker run -c FILE``, through
``tests.support.process.DaemonProcess``) with cwd = the repository and ``PYTHONPATH`` = the
repository, so ``[handlers] "rel.record" = "tests.reliability.handlers:record"`` loads.
``TUBEWORKER_RELIABILITY_DAEMON_PATH`` (optional) is put in front of that ``PYTHONPATH``:
point it at a directory holding another ``tubeworker`` package (e.g. an export of an older
commit) to run the same scenarios against that daemon.

Every config sets ``[worker] reply_timeout = 3`` and ``batch_bytes = 262144``
(``WORKER_KEYS``; a scenario may override them through ``DaemonConfig.extra_worker``). A
daemon that does not know these keys refuses the config (exit 78), so the scenario fails at
its start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import greenstalk

from tests.reliability.ledger import Ledger, log_time
from tests.support.process import REPO, DaemonProcess

__all__ = [
    "WORKER_KEYS",
    "DaemonConfig",
    "connection_losses",
    "events_named",
    "report_figures",
    "start_daemon",
    "stop_daemon",
    "tube_counts",
    "wait_for",
    "write_config",
]

# [worker] keys every scenario's config sets (extra_worker overrides them).
WORKER_KEYS: Final[Mapping[str, int]] = {"reply_timeout": 3, "batch_bytes": 262_144}
HANDLERS: Final = {"rel.record": "tests.reliability.handlers:record"}
DAEMON_PATH_ENV: Final = "TUBEWORKER_RELIABILITY_DAEMON_PATH"


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(extra or {})
    override = os.environ.get(DAEMON_PATH_ENV)
    if override:
        env["PYTHONPATH"] = f"{override}{os.pathsep}{REPO}"
    return env


@dataclass
class DaemonConfig:
    """The parts of a tubeworker config the scenarios vary."""

    server: str
    tube: str
    concurrency: int
    jobs_per_connection: int | None = None
    reserve_timeout: int | None = None
    drain_timeout: float = 5
    connect_timeout: float | None = None
    retry: dict[str, object] = field(default_factory=dict)
    extra_worker: dict[str, object] = field(default_factory=dict)  # overrides WORKER_KEYS
    tls: dict[str, str] = field(default_factory=dict)  # the [tls] table, for tls:// servers


def write_config(path: Path, config: DaemonConfig) -> Path:
    worker: dict[str, object] = {
        "servers": [config.server],
        "drain_timeout": config.drain_timeout,
        **({"reserve_timeout": config.reserve_timeout} if config.reserve_timeout else {}),
        **({"connect_timeout": config.connect_timeout} if config.connect_timeout else {}),
        **WORKER_KEYS,
        **config.extra_worker,
    }
    pool: dict[str, object] = {
        "name": "rel",
        "tubes": [config.tube],
        "concurrency": config.concurrency,
    }
    if config.jobs_per_connection is not None:
        pool["jobs_per_connection"] = config.jobs_per_connection
    lines = [
        "[worker]",
        *(f"{key} = {json.dumps(value)}" for key, value in worker.items()),
        "[logging]",
        'format = "json"',
        "[handlers]",
        *(f"{json.dumps(name)} = {json.dumps(target)}" for name, target in HANDLERS.items()),
        "[[pool]]",
        *(f"{key} = {json.dumps(value)}" for key, value in pool.items()),
        "[pool.retry]",
        *(f"{key} = {json.dumps(value)}" for key, value in config.retry.items()),
        *(["[tls]"] if config.tls else []),
        *(f"{key} = {json.dumps(value)}" for key, value in config.tls.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_daemon(
    daemons: list[DaemonProcess], config: Path, workdir: Path, ledger: Ledger
) -> DaemonProcess:
    """Start ``tubeworker run -c config`` (stopped by the ``daemons`` fixture at teardown)
    and wait for its ready line."""
    daemon = DaemonProcess(config, workdir, env=daemon_env(ledger.env))
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready(timeout=30)
    return daemon


def stop_daemon(daemon: DaemonProcess, timeout: float = 20) -> str | None:
    """SIGTERM and wait for the exit. None if it drained and exited 0, else what went wrong
    (exit code and the end of stderr), for the scenario's violations."""
    assert daemon.proc is not None
    if daemon.proc.poll() is None:
        daemon.signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait(timeout=5)
            return f"the daemon did not exit within {timeout} s of SIGTERM (killed)"
    code = daemon.proc.returncode
    if code == 0:
        return None
    tail = daemon.stderr.read_text(errors="replace")[-1500:] if daemon.stderr.exists() else ""
    return f"the daemon exited {code}: {tail}"


def kill9(daemon: DaemonProcess) -> float:
    """SIGKILL the daemon; returns when (time.time()) it was sent."""
    at = time.time()
    daemon.signal(signal.SIGKILL)
    daemon.wait(timeout=10)
    return at


def events_named(daemons: Sequence[DaemonProcess], *names: str) -> list[dict[str, Any]]:
    """The daemons' log lines with one of these ``event`` names, each with ``_at``
    (its timestamp as time.time()) and ``_pid``, in time order."""
    found = []
    for daemon in daemons:
        for event in daemon.events():
            if event.get("event") in names:
                found.append({**event, "_at": log_time(event) or 0.0, "_pid": daemon.pid})
    return sorted(found, key=lambda e: e["_at"])


def connection_losses(daemons: Sequence[DaemonProcess], since: float) -> list[dict[str, Any]]:
    return [e for e in events_named(daemons, "connection lost") if e["_at"] >= since]


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` until true (True) or ``timeout`` seconds passed (False): for
    scenarios that report what went wrong instead of failing at the first wait."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def tube_counts(address: tuple[str, int], tube: str) -> dict[str, int]:
    """ready/reserved/delayed/buried of a tube (all 0 once beanstalkd dropped it)."""
    with greenstalk.Client(address) as client:
        try:
            stats = client.stats_tube(tube)
        except greenstalk.NotFoundError:
            return {"ready": 0, "reserved": 0, "delayed": 0, "buried": 0}
    return {
        "ready": int(stats["current-jobs-ready"]),
        "reserved": int(stats["current-jobs-reserved"]),
        "delayed": int(stats["current-jobs-delayed"]),
        "buried": int(stats["current-jobs-buried"]),
    }


def deleted_count(address: tuple[str, int], ids: Sequence[int]) -> int:
    gone = 0
    with greenstalk.Client(address) as client:
        for job_id in ids:
            try:
                client.stats_job(job_id)
            except greenstalk.NotFoundError:
                gone += 1
    return gone


def report_figures(workdir: Path, name: str, figures: Mapping[str, object]) -> None:
    """Print the scenario's figures (shown with ``pytest -s``) and keep them as JSON in
    the test's tmp_path."""
    text = json.dumps({"scenario": name, **figures}, indent=2, sort_keys=True, default=str)
    print(f"\n[reliability] {name}: {text}")
    (workdir / "results.json").write_text(text + "\n")


def settled(address: tuple[str, int], tube: str) -> bool:
    """No job of the tube is ready, reserved or delayed (buried ones are settled)."""
    counts = tube_counts(address, tube)
    return counts["ready"] + counts["reserved"] + counts["delayed"] == 0


def waiting_reserves(address: tuple[str, int]) -> int:
    """Connections blocked in a reserve right now (beanstalkd's ``current-waiting``)."""
    with greenstalk.Client(address) as client:
        return int(client.stats()["current-waiting"])


def finish(
    name: str,
    ledger: Ledger,
    daemons: Sequence[DaemonProcess],
    address: tuple[str, int],
    tube: str,
    workdir: Path,
    *,
    violations: list[str],
    figures: Mapping[str, object],
    queued_by_design: Sequence[str] = (),
) -> None:
    """End of every scenario: stop the daemons still running (SIGTERM: each must drain and
    exit 0), check the ledger's invariant, report the figures, and fail with every
    violation found (the scenario's own and the invariant's) in one message."""
    for daemon in daemons:
        assert daemon.proc is not None
        if daemon.proc.poll() is None:
            problem = stop_daemon(daemon)
            if problem:
                violations.append(problem)
    report = ledger.check(address, tube, daemons, queued_by_design=queued_by_design)
    if not report.ok:
        violations.append("the ledger's invariant does not hold (see below)")
    report_figures(workdir, name, {**figures, "ledger": report.figures()})
    assert not violations, (
        f"{name}:\n- " + "\n- ".join(violations) + "\n--- ledger ---\n" + report.summary()
    )
