"""Crashes and restarts: the worker or the server dies at a bad moment.

f. ``kill -9`` of the daemon under load, several times (short: 3, long: 10), restarted as a
   supervisor would. beanstalkd returns what a dead connection held; a job may run again
   only if it was in flight at a kill (the ledger checks each duplicate against the kill
   times). A job in flight at more kills than ``redelivery_limit`` ends buried, with a
   reason.
g. beanstalkd ``kill -9`` with a binlog (``-b DIR -f 0``) and a restart on the same port
   while the daemon runs (short: once, long: 3 times). Every acknowledged job must end
   deleted after a completed run (or buried with a reason); reruns only for jobs in flight
   at the crash.
h. beanstalkd restarted *without* a binlog while handlers run: its jobs are gone and job
   ids start at 1 again. The old jobs (A) are lost by design; new jobs (B), put delayed so
   that anyone could delete them for a while, reuse the A ids. Half of the A handlers
   ignore cancellation and finish after the restart. No outcome of an A job may reach a B
   job: every B job must be run by the handler as B and deleted after that run, and no
   A delivery may end with a confirmed delete/release/bury after the restart.

All end with the ledger's invariant (ledger.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import Scale
from tests.reliability.harness import (
    DaemonConfig,
    finish,
    kill9,
    settled,
    start_daemon,
    wait_for,
    write_config,
)
from tests.reliability.ledger import Ledger
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess

pytestmark = pytest.mark.slow

TUBE = "rel-crash"


def _ended(ledger: Ledger) -> int:
    return sum(ledger.ends().values())


def _more_ended(ledger: Ledger, more: int) -> Callable[[], bool]:
    """A condition: ``more`` runs have ended since now."""
    target = _ended(ledger) + more
    return lambda: _ended(ledger) >= target


def test_daemon_kill_9_under_load_then_restart(
    beanstalkd: BeanstalkdProcess,
    daemons: list[DaemonProcess],
    ledger: Ledger,
    tmp_path: Path,
    scale: Scale,
) -> None:
    kills, jobs = scale.pick(3, 10), scale.pick(150, 600)
    rng = random.Random(5)
    address = (beanstalkd.host, beanstalkd.port)
    ledger.put_many(
        address, TUBE, ((f"f{i}", {"sleep": round(rng.uniform(0.01, 0.3), 3)}) for i in range(jobs))
    )
    config = write_config(
        tmp_path / "w.toml",
        DaemonConfig(
            server=beanstalkd.address,
            tube=TUBE,
            concurrency=20,
            jobs_per_connection=10,
        ),
    )
    in_flight_at_kills = []
    for k in range(kills):
        daemon = start_daemon(daemons, config, tmp_path, ledger)
        assert wait_for(_more_ended(ledger, 25), timeout=30), (
            f"staging: kill {k + 1}: the daemon finished no 25 jobs in 30 s"
        )
        in_flight_at_kills.append(len(ledger.running(daemon.pid)))
        ledger.fault(f"kill -9 #{k + 1} of pid {daemon.pid}", kill9(daemon))
    start_daemon(daemons, config, tmp_path, ledger)
    all_done = wait_for(lambda: settled(address, TUBE), timeout=30 + jobs * 0.05, interval=0.1)
    violations = [] if all_done else [f"jobs not done {30 + jobs * 0.05:g} s after the last kill"]
    finish(
        "f. kill -9 of the daemon under load",
        ledger,
        daemons,
        address,
        TUBE,
        tmp_path,
        violations=violations,
        figures={
            "jobs": jobs,
            "kills": kills,
            "handlers_running_at_each_kill": in_flight_at_kills,
            "extra_runs": sum(k - 1 for k in ledger.starts().values()),
        },
    )


def test_beanstalkd_kill_9_with_binlog_while_the_daemon_runs(
    beanstalkd_binlog: BeanstalkdProcess,
    daemons: list[DaemonProcess],
    ledger: Ledger,
    tmp_path: Path,
    scale: Scale,
) -> None:
    server = beanstalkd_binlog
    restarts, jobs = scale.pick(1, 3), scale.pick(100, 400)
    rng = random.Random(7)
    address = (server.host, server.port)
    ledger.put_many(
        address, TUBE, ((f"g{i}", {"sleep": round(rng.uniform(0.05, 0.5), 3)}) for i in range(jobs))
    )
    config = DaemonConfig(
        server=server.address,
        tube=TUBE,
        concurrency=10,
        jobs_per_connection=5,
    )
    start_daemon(daemons, write_config(tmp_path / "w.toml", config), tmp_path, ledger)
    running_at_crash = []
    for r in range(restarts):
        assert wait_for(_more_ended(ledger, 15), timeout=30), (
            f"staging: crash {r + 1}: no 15 jobs done in 30 s"
        )
        running_at_crash.append(len(ledger.running()))
        crashed = time.time()
        server.restart(hard=True)  # kill -9, then the same port and binlog
        ledger.fault(f"beanstalkd kill -9 #{r + 1} and restart", crashed, time.time())
    # Jobs acknowledged by the restarted server must be worked too.
    ledger.put_many(address, TUBE, ((f"g-after{i}", {}) for i in range(20)))
    budget = 40 + jobs * 0.05
    all_done = wait_for(lambda: settled(address, TUBE), timeout=budget, interval=0.1)
    violations = [] if all_done else [f"jobs not done {budget:g} s after the last restart"]
    finish(
        "g. beanstalkd kill -9 with a binlog",
        ledger,
        daemons,
        address,
        TUBE,
        tmp_path,
        violations=violations,
        figures={
            "jobs": jobs + 20,
            "restarts": restarts,
            "handlers_running_at_each_crash": running_at_crash,
            "extra_runs": sum(k - 1 for k in ledger.starts().values()),
        },
    )


def test_restart_without_binlog_keeps_old_outcomes_off_new_jobs(
    beanstalkd: BeanstalkdProcess,
    daemons: list[DaemonProcess],
    ledger: Ledger,
    tmp_path: Path,
    scale: Scale,
) -> None:
    k = scale.pick(6, 20)
    address = (beanstalkd.host, beanstalkd.port)
    old = [f"A{i}" for i in range(k)]
    a_ids = ledger.put_many(
        address, TUBE, ((n, {"sleep": 2.5, "shield": i % 2 == 0}) for i, n in enumerate(old))
    )
    config = DaemonConfig(
        server=beanstalkd.address,
        tube=TUBE,
        concurrency=2 * k,
        jobs_per_connection=2,
        reserve_timeout=1,
    )
    start_daemon(daemons, write_config(tmp_path / "w.toml", config), tmp_path, ledger)
    assert wait_for(lambda: set(old) <= set(ledger.starts()), timeout=20), (
        f"staging: not every A job started ({sorted(ledger.starts())})"
    )

    crashed = time.time()
    beanstalkd.restart(hard=True)  # in memory: every job is gone, ids start at 1 again
    ledger.fault("beanstalkd restart without a binlog", crashed, time.time())
    ledger.forget(old, "beanstalkd restarted without a binlog")
    # Delayed: for 3 s anyone may delete them, so a stale `delete <old id>` would land.
    new = [f"B{i}" for i in range(k)]
    b_ids = ledger.put_many(address, TUBE, ((n, {"sleep": 0.2}) for n in new), delay=3)
    reused = sorted(set(a_ids) & set(b_ids))
    assert reused, f"staging: the new server did not reuse ids ({a_ids} vs {b_ids})"

    shielded = {n for i, n in enumerate(old) if i % 2 == 0}
    a_finished = wait_for(lambda: shielded <= set(ledger.ends()), timeout=20)
    all_done = wait_for(lambda: settled(address, TUBE), timeout=30, interval=0.1)

    violations = []
    if not all_done:
        violations.append("B jobs not done 30 s after they were put")
    if not a_finished:
        violations.append("the A handlers that ignore cancellation never finished")
    stale = [
        f"{d.n} (job {d.job_id}) ended '{d.outcome.kind}' at +{d.outcome.at - crashed:.2f} s"
        for d in ledger.deliveries(daemons)
        if d.n in old
        and d.outcome is not None
        and d.outcome.kind in ("done", "released", "buried")
        and d.outcome.at >= crashed
    ]
    if stale:
        violations.append(
            "an old job's outcome was confirmed by the restarted server, so it hit the new "
            f"job with the same id: {stale}"
        )
    finish(
        "h. beanstalkd restart without a binlog",
        ledger,
        daemons,
        address,
        TUBE,
        tmp_path,
        violations=violations,
        figures={
            "old_jobs": k,
            "reused_ids": reused,
            "old_handlers_ignoring_cancellation": sorted(shielded),
        },
    )
