"""Slow but live links: bytes keep coming, just slowly or in tiny pieces. A worker must not
mistake slowness for death (no timeout on a whole batch that a slow link cannot meet), and
must keep doing useful work at a fair share of what the link can carry.

c. Slow link: server→client throttled to 1.5 Mbit/s (187,500 B/s), 40 KB bodies,
   concurrency 50 on one connection (jobs_per_connection 50), ``batch_bytes = 262144``.
   Every job must be deleted, none run more than twice. Figures: throughput in jobs/s and
   as a fraction of the link's capacity (bytes/s ÷ body size).
   A run that makes no progress for ``STALL`` seconds is stopped early and reported.
d. Fragmented replies: server→client one byte per millisecond; small jobs on two
   connections of ten; all done.

Both end with the ledger's invariant (ledger.py); the throttle and the fragmenting count
as a fault window, so a redelivery they cause is reported but explained.
"""

from __future__ import annotations

import json
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
    start_daemon,
    tube_counts,
    write_config,
)
from tests.reliability.ledger import Ledger
from tests.reliability.proxy import Proxy
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess

pytestmark = pytest.mark.slow

TUBE = "rel-slow"
LINK_BPS = 187_500  # 1.5 Mbit/s
BODY = 40_000
STALL = 20.0  # seconds without one more job done: the run is stuck


def padded(n: str, size: int) -> dict[str, object]:
    """A payload whose envelope is exactly ``size`` bytes."""
    empty = json.dumps({"task": "rel.record", "payload": {"n": n, "pad": ""}})
    return {"pad": "x" * (size - len(empty))}


def wait_progress(
    address: tuple[str, int], tube: str, total: int, deadline: float
) -> tuple[bool, float, int, str]:
    """Until every job of the tube is done, ``deadline`` passes, or nothing more got done for
    ``STALL`` s. Returns (all done, when it stopped waiting, how many are done, why it
    stopped)."""
    best, last_change = -1, time.monotonic()
    while True:
        counts = tube_counts(address, tube)
        done = total - counts["ready"] - counts["reserved"] - counts["delayed"]
        now = time.monotonic()
        if done > best:
            best, last_change = done, now
        if done >= total:
            return True, time.time(), done, "all done"
        if now - last_change > STALL:
            return False, time.time(), done, f"no job done for {STALL:g} s"
        if now > deadline:
            return False, time.time(), done, "deadline passed"
        time.sleep(0.1)


def test_slow_link_does_useful_work(
    beanstalkd: BeanstalkdProcess,
    make_proxy: Callable[[str], Proxy],
    daemons: list[DaemonProcess],
    ledger: Ledger,
    tmp_path: Path,
    scale: Scale,
) -> None:
    jobs = scale.pick(60, 300)
    address = (beanstalkd.host, beanstalkd.port)
    ledger.put_many(address, TUBE, ((f"c{i}", padded(f"c{i}", BODY)) for i in range(jobs)))
    proxy = make_proxy(beanstalkd.address)
    proxy.throttle(LINK_BPS, "server_to_client")
    capacity = LINK_BPS / BODY  # jobs/s the link can carry at best
    config = DaemonConfig(server=proxy.address, tube=TUBE, concurrency=50)
    start_daemon(daemons, write_config(tmp_path / "w.toml", config), tmp_path, ledger)
    started = time.time()
    fault = ledger.fault("link throttled to 187,500 B/s", started)
    # Fair share: at least 40 % of the link's capacity, plus the start-up.
    deadline = time.monotonic() + jobs / (0.4 * capacity) + 10
    all_done, finished, done, why = wait_progress(address, TUBE, jobs, deadline)
    fault.end = finished
    elapsed = finished - started
    throughput = done / elapsed if elapsed > 0 else 0.0
    runs = ledger.starts()
    twice_plus = {n: k for n, k in runs.items() if k > 2}
    losses = connection_losses(daemons, since=started)

    violations = []
    if not all_done:
        violations.append(
            f"{jobs - done} of {jobs} jobs not done after {elapsed:.0f} s on a live 1.5 Mbit/s "
            f"link ({throughput:.2f} jobs/s = {throughput / capacity:.0%} of its "
            f"{capacity:.2f} jobs/s); {len(losses)} 'connection lost' lines, e.g. "
            f"{[e.get('error') for e in losses[:2]]} ({why})"
        )
    if twice_plus:
        violations.append(
            f"{len(twice_plus)} jobs ran more than twice: {dict(list(twice_plus.items())[:5])}"
        )
    finish(
        "c. slow link",
        ledger,
        daemons,
        address,
        TUBE,
        tmp_path,
        violations=violations,
        figures={
            "jobs": jobs,
            "body_bytes": BODY,
            "link_bytes_per_s": LINK_BPS,
            "capacity_jobs_per_s": round(capacity, 3),
            "throughput_jobs_per_s": round(throughput, 3),
            "fraction_of_capacity": round(throughput / capacity, 3),
            "elapsed_s": round(elapsed, 2),
            "connection_losses": len(losses),
            "config": dict(WORKER_KEYS),
        },
    )


def test_fragmented_replies(
    beanstalkd: BeanstalkdProcess,
    make_proxy: Callable[[str], Proxy],
    daemons: list[DaemonProcess],
    ledger: Ledger,
    tmp_path: Path,
    scale: Scale,
) -> None:
    jobs = scale.pick(20, 100)
    address = (beanstalkd.host, beanstalkd.port)
    ledger.put_many(address, TUBE, ((f"d{i}", {}) for i in range(jobs)))
    proxy = make_proxy(beanstalkd.address)
    proxy.fragment(per_byte_delay=0.001, direction="server_to_client")
    config = DaemonConfig(
        server=proxy.address,
        tube=TUBE,
        concurrency=20,
        jobs_per_connection=10,
        connect_timeout=10,  # the first reply (stats, ~1 KB) takes about a second
    )
    start_daemon(daemons, write_config(tmp_path / "w.toml", config), tmp_path, ledger)
    started = time.time()
    fault = ledger.fault("replies fragmented to 1 byte per ms", started)
    # About 0.5 KB of replies per job at ~1 KB/s per connection, two connections.
    deadline = time.monotonic() + 20 + jobs * 0.6
    all_done, finished, done, why = wait_progress(address, TUBE, jobs, deadline)
    fault.end = finished
    losses = connection_losses(daemons, since=started)
    violations = []
    if not all_done:
        violations.append(
            f"{jobs - done} of {jobs} jobs not done {finished - started:.0f} s into 1-byte "
            f"replies ({why}); 'connection lost': {[e.get('error') for e in losses[:3]]}"
        )
    finish(
        "d. fragmented replies",
        ledger,
        daemons,
        address,
        TUBE,
        tmp_path,
        violations=violations,
        figures={
            "jobs": jobs,
            "elapsed_s": round(finished - started, 2),
            "connection_losses": len(losses),
            "bytes_to_client": sum(link.forwarded["server_to_client"] for link in proxy.links()),
        },
    )
