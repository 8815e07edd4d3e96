"""Silently dead connections: the link stops carrying bytes but nothing closes it (a NAT
entry or a firewall state dropped, a peer gone without FIN). Existing flows are dead; new
connections work. No error ever reaches the daemon: it must notice by itself.

The rule the daemon is held to (``[worker] reply_timeout = 3``): a connection that owes
a reply and receives no byte for ``reply_timeout`` seconds is given up, and a blocked
``reserve-with-timeout T`` is given up after ``T + reply_timeout``. Giving up closes the
connection; the proxy passes that close to beanstalkd (as keepalive eventually would),
which returns the jobs reserved on it.

a. Idle lanes (blocked in ``reserve``) on dead connections; jobs are put straight into
   beanstalkd. Every job must be done within ``reserve_timeout + reply_timeout`` and a
   margin of the blackhole. Figure: detection time (blackhole → "connection lost").
b. Busy lanes (handlers sleeping 1 to 2 s) blackholed mid-run: every lane notices within the
   handler's remaining time + ``reply_timeout`` + a margin, and every job ends done
   exactly once, or twice when it was in flight at the blackhole (explained by the fault).

Both end with the ledger's invariant (ledger.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.conftest import Scale
from tests.reliability.harness import (
    WORKER_KEYS,
    DaemonConfig,
    connection_losses,
    finish,
    settled,
    start_daemon,
    tube_counts,
    wait_for,
    waiting_reserves,
    write_config,
)
from tests.reliability.ledger import Ledger
from tests.reliability.proxy import Proxy
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess

pytestmark = pytest.mark.slow

TUBE = "rel-dead"
REPLY_TIMEOUT = WORKER_KEYS["reply_timeout"]  # what every scenario configures (3 s)
CONFIG_NOTE = f"reply_timeout = {REPLY_TIMEOUT}"
MARGIN = 5.0  # scheduling slack on a loaded 2-core machine; the bug is "never" or "10 s"


def test_idle_lanes_notice_silently_dead_connections(
    beanstalkd: BeanstalkdProcess,
    make_proxy: Callable[[str], Proxy],
    daemons: list[DaemonProcess],
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    lanes, reserve_timeout, jobs = 4, 2, 10
    address = (beanstalkd.host, beanstalkd.port)
    proxy = make_proxy(beanstalkd.address)
    config = DaemonConfig(
        server=proxy.address,
        tube=TUBE,
        concurrency=lanes,
        jobs_per_connection=1,
        reserve_timeout=reserve_timeout,
    )
    start_daemon(daemons, write_config(tmp_path / "w.toml", config), tmp_path, ledger)
    assert wait_for(lambda: waiting_reserves(address) >= lanes, timeout=20), (
        f"staging: {lanes} lanes never sat in a blocked reserve together "
        f"(waiting: {waiting_reserves(address)}, proxy links: {proxy.current})"
    )

    blackholed = proxy.blackhole()  # the open links die; new ones will work
    t0 = ledger.fault("blackhole of every open link").start
    ledger.put_many(address, TUBE, ((f"a{i}", {}) for i in range(jobs)))
    bound = reserve_timeout + REPLY_TIMEOUT + MARGIN
    all_done = wait_for(lambda: settled(address, TUBE), timeout=bound - (time.time() - t0))
    done_after = time.time() - t0
    counts = tube_counts(address, TUBE)

    losses = connection_losses(daemons, since=t0)
    detect = [round(e["_at"] - t0, 3) for e in losses]
    violations = []
    if not all_done:
        left = counts["ready"] + counts["reserved"] + counts["delayed"]
        violations.append(
            f"{left} of {jobs} jobs not done {bound:.0f} s after the blackhole (ready "
            f"{counts['ready']}, reserved by dead connections {counts['reserved']}): the idle "
            f"lanes never noticed their dead connections ({len(losses)} 'connection lost' "
            f"lines for {len(blackholed)} dead links; {CONFIG_NOTE})"
        )
    late = [d for d in detect if d > bound]
    if len(losses) < len(blackholed) or late:
        violations.append(
            f"{len(losses)} of {len(blackholed)} dead links given up, at {detect} s after "
            f"the blackhole; wanted all within reserve_timeout {reserve_timeout} + "
            f"reply_timeout {REPLY_TIMEOUT} + {MARGIN:g} s"
        )
    finish(
        "a. idle lanes on silently dead connections",
        ledger,
        daemons,
        address,
        TUBE,
        tmp_path,
        violations=violations,
        figures={
            "dead_links": len(blackholed),
            "detection_s": detect,
            "detection_first_s": min(detect, default=None),
            "detection_last_s": max(detect, default=None),
            "all_done": all_done,
            "all_done_after_s": round(done_after, 3) if all_done else None,
            "bound_s": bound,
            "config": CONFIG_NOTE,
        },
    )


def test_busy_lanes_notice_a_dead_connection_mid_run(
    beanstalkd: BeanstalkdProcess,
    make_proxy: Callable[[str], Proxy],
    daemons: list[DaemonProcess],
    ledger: Ledger,
    tmp_path: Path,
    scale: Scale,
) -> None:
    lanes, longest = 4, 2.0
    jobs = scale.pick(12, 40)
    rng = random.Random(11)
    address = (beanstalkd.host, beanstalkd.port)
    proxy = make_proxy(beanstalkd.address)
    ledger.put_many(
        address,
        TUBE,
        ((f"b{i}", {"sleep": round(rng.uniform(1.0, longest), 2)}) for i in range(jobs)),
    )
    config = DaemonConfig(
        server=proxy.address,
        tube=TUBE,
        concurrency=lanes,
        jobs_per_connection=1,
        reserve_timeout=2,
    )
    start_daemon(daemons, write_config(tmp_path / "w.toml", config), tmp_path, ledger)
    assert wait_for(lambda: len(ledger.running()) >= lanes, timeout=20), (
        f"staging: never {lanes} handlers running at once ({ledger.running()})"
    )

    running = sorted(ledger.running())
    blackholed = proxy.blackhole()
    t0 = ledger.fault("blackhole of every open link, handlers running").start
    bound = longest + REPLY_TIMEOUT + MARGIN  # the handler ends, then a reply is owed
    detected = wait_for(
        lambda: len(connection_losses(daemons, since=t0)) >= len(blackholed),
        timeout=bound - (time.time() - t0),
    )
    budget = 15 + jobs * longest  # generous: all of them, twice, on one lane
    all_done = wait_for(lambda: settled(address, TUBE), timeout=budget, interval=0.1)
    done_after = time.time() - t0

    losses = connection_losses(daemons, since=t0)
    detect = [round(e["_at"] - t0, 3) for e in losses]
    violations = []
    if not detected:
        violations.append(
            f"busy lanes did not give up all {len(blackholed)} dead links within {bound:g} s "
            f"of the blackhole (longest handler {longest:g} s + reply_timeout "
            f"{REPLY_TIMEOUT} + {MARGIN:g} s): 'connection lost' at {detect} s "
            f"({CONFIG_NOTE})"
        )
    if not all_done:
        violations.append(f"jobs still not done {done_after:.0f} s after the blackhole")
    finish(
        "b. busy lanes on a dead connection",
        ledger,
        daemons,
        address,
        TUBE,
        tmp_path,
        violations=violations,
        figures={
            "jobs": jobs,
            "in_flight_at_blackhole": running,
            "dead_links": len(blackholed),
            "detection_s": detect,
            "detection_last_s": max(detect, default=None),
            "bound_s": bound,
            "all_done_after_s": round(done_after, 3) if all_done else None,
            "config": CONFIG_NOTE,
        },
    )
