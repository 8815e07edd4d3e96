"""e. A stale job: ``stats-job`` answers NOT_FOUND for a job the lane just reserved.

That happens when the ``RESERVED`` reply reaches the worker after the job's TTR ran out on
the server and another client took the job meanwhile (a slow or stalled link, a paused
process). The job is not ours: the lane must skip it, say so in its log, and go on — its
other jobs keep running on the same connection, and the connection is not given up.

Staged from outside, deterministically:

1. one lane (concurrency 4, jobs_per_connection 4) through the proxy runs three slow jobs
   (Y), so it holds a connection with a free slot and polls for more;
2. the proxy delays server→client bytes on that connection by ``DELAY`` s (less than
   ``reply_timeout``: the link is slow, not dead);
3. job X is put with ``ttr = 1``; the lane's next reserve takes it, but ``RESERVED`` sits in
   the proxy; an independent client (greenstalk, direct) waits for X's TTR to run out on the
   server. beanstalkd 1.12 sometimes never fires a TTR on an idle holder connection
   (B1, docs/beanstalkd.md#ttr-expiry-can-be-lost): if X is still reserved 0.25 s after its
   deadline, the proxy injects ``use default`` on the lane's connection (reply swallowed),
   which makes beanstalkd look at the connection's timers at once;
4. the independent client deletes X (it is ready, so anyone may), then the proxy is
   healed: ``RESERVED X`` reaches the daemon, whose ``stats-job X`` gets NOT_FOUND.

Then: the Y jobs finish exactly once, three more jobs (W) put afterwards are done (the
lane still works), X never runs, a log line names X's job id (any event but "connection
lost"), and no "connection lost" at all. If beanstalkd cannot be brought to expire X in
time, the test is skipped with the reason (the other engineer's scripted fake server
covers the same case).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import greenstalk
import pytest

from tests.reliability.harness import (
    DaemonConfig,
    connection_losses,
    finish,
    settled,
    start_daemon,
    wait_for,
    write_config,
)
from tests.reliability.ledger import Ledger
from tests.reliability.proxy import Proxy
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess

pytestmark = pytest.mark.slow

TUBE = "rel-stale"
DELAY = 2.0  # > X's TTR (1 s) + the staging; < reply_timeout (3 s)
Y_SLEEP = 6.0  # the other jobs on the lane outlive the staging


def job_state(client: greenstalk.Client[str], job_id: int) -> str:
    try:
        return str(client.stats_job(job_id)["state"])
    except greenstalk.NotFoundError:
        return "deleted"


def test_stale_job_does_not_take_the_lane_down(
    beanstalkd: BeanstalkdProcess,
    make_proxy: Callable[[str], Proxy],
    daemons: list[DaemonProcess],
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    address = (beanstalkd.host, beanstalkd.port)
    proxy = make_proxy(beanstalkd.address)
    config = DaemonConfig(
        server=proxy.address,
        tube=TUBE,
        concurrency=4,
        jobs_per_connection=4,
        reserve_timeout=1,
    )
    start_daemon(daemons, write_config(tmp_path / "w.toml", config), tmp_path, ledger)
    ledger.put_many(address, TUBE, ((f"y{i}", {"sleep": Y_SLEEP}) for i in range(3)))
    assert wait_for(lambda: len(ledger.running()) == 3, timeout=15), "staging: Y never ran"

    y_running = sorted(ledger.running())
    delayed = proxy.delay(DELAY, "server_to_client", new_connections=False)
    staged_at = time.time()
    with greenstalk.Client(address, use=TUBE) as other:
        x_id = ledger.put(other, "x", {}, ttr=1)
        ledger.taken_elsewhere("x", "its TTR ran out and another client deleted it")
        if not wait_for(lambda: job_state(other, x_id) == "reserved", timeout=DELAY + 1.5):
            pytest.skip(f"staging: the lane never reserved X ({job_state(other, x_id)})")
        reserved_at = time.monotonic()
        expired = wait_for(lambda: job_state(other, x_id) != "reserved", timeout=1.25)
        nudged = not expired
        if nudged:
            # B1 (docs/beanstalkd.md#ttr-expiry-can-be-lost): any command on the holder's
            # connection makes beanstalkd look at its timers.
            for link in delayed:
                proxy.inject(link, b"use default\r\n", b"USING default\r\n")
            expired = wait_for(lambda: job_state(other, x_id) != "reserved", timeout=0.5)
        if not expired:
            pytest.skip("staging: beanstalkd did not expire X's TTR (1 s) within 1.75 s")
        other.delete(x_id)  # ready now: anyone may delete it
        deleted_after = time.monotonic() - reserved_at
    if deleted_after >= DELAY - 0.1:
        pytest.skip(f"staging too slow: X deleted {deleted_after:.2f} s after its reserve")
    proxy.heal()  # RESERVED X reaches the daemon now; its stats-job X gets NOT_FOUND

    y_done = wait_for(lambda: settled(address, TUBE), timeout=Y_SLEEP + 15, interval=0.1)
    ledger.put_many(address, TUBE, ((f"w{i}", {}) for i in range(3)))
    w_done = wait_for(lambda: settled(address, TUBE), timeout=15, interval=0.1)

    losses = connection_losses(daemons, since=staged_at)
    about_x = [
        e
        for d in daemons
        for e in d.events()
        if e.get("job_id") == x_id and e.get("event") != "connection lost"
    ]
    violations = []
    if losses:
        violations.append(
            f"the stale job took the lane down: {len(losses)} 'connection lost' "
            f"({[e.get('error') for e in losses[:3]]}); the lane's other jobs {y_running} "
            "were cut off and ran again"
        )
    if not about_x:
        violations.append(f"no log line names the stale job {x_id} (only 'connection lost')")
    if not y_done:
        violations.append(f"the Y jobs on the stale job's lane not done {Y_SLEEP + 15:g} s later")
    if not w_done:
        violations.append("jobs put after the stale job not done within 15 s")
    finish(
        "e. stale job",
        ledger,
        daemons,
        address,
        TUBE,
        tmp_path,
        violations=violations,
        figures={
            "stale_job_id": x_id,
            "x_deleted_after_its_reserve_s": round(deleted_after, 3),
            "ttr_expiry_needed_a_nudge": nudged,
            "log_lines_about_x": [e.get("event") for e in about_x],
            "connection_losses": len(losses),
        },
    )
