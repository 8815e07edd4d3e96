"""j. beanstalkd's binlog on a full disk, with 15 % of jobs failing their first attempt.

The binlog lives on a 2 MB tmpfs, filled up: beanstalkd still deletes, touches and
releases with delay 0, but refuses a release with a delay (``OUT_OF_MEMORY``) or a bury
(``INTERNAL_ERROR``) *after* unlinking the job, which is then stranded, reserved by
nobody, until beanstalkd restarts (docs/beanstalkd.md#b3). Before, every failure was
stranded this way for as long as the disk stayed full. Now the first refusal tells the
daemon that the server is full: later failures are held in the worker for their backoff
and released with delay 0. So at most the outcomes already on the wire are stranded (one
lane's write); everything else is done while the disk is full. Then the disk is freed
(the daemon's probe notices), beanstalkd is restarted on its binlog (the stranded jobs
come back), and the ledger's invariant holds: nothing lost.

Needs a tmpfs mount (root, as `make test` runs in CI); skipped where mounting is refused.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import greenstalk
import pytest

from tests.reliability.conftest import Scale
from tests.reliability.harness import (
    DaemonConfig,
    events_named,
    finish,
    settled,
    start_daemon,
    wait_for,
    write_config,
)
from tests.reliability.ledger import Ledger, log_time
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess

pytestmark = pytest.mark.slow

TUBE = "rel-binlog"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, address: tuple[str, int]) -> int:
    """Fill the disk, then the binlog's preallocated file with junk puts, until beanstalkd
    answers OUT_OF_MEMORY; returns how many junk jobs it took."""
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k"],
        capture_output=True,
        check=False,
    )
    with greenstalk.Client(address, use="junk") as client:
        for n in range(100_000):
            try:
                client.put(b"x" * 200)
            except greenstalk.OutOfMemoryError:
                return n
    raise AssertionError("staging: the binlog never filled up")


def stranded(address: tuple[str, int], ids: list[int]) -> list[int]:
    """Jobs beanstalkd shows reserved although nobody holds them (a full binlog's orphans)."""
    found = []
    with greenstalk.Client(address) as client:
        reserved_now = int(client.stats_tube(TUBE)["current-jobs-reserved"])
        for job_id in ids:
            try:
                state = client.stats_job(job_id)["state"]
            except greenstalk.NotFoundError:
                continue
            if state == "reserved":
                found.append(job_id)
    assert reserved_now == 0, "staging: a job is really reserved (not stranded)"
    return found


def test_full_binlog_strands_at_most_one_write_of_outcomes(
    small_disk: Path,
    daemons: list[DaemonProcess],
    ledger: Ledger,
    tmp_path: Path,
    scale: Scale,
) -> None:
    jobs = scale.pick(200, 600)
    rng = random.Random(11)
    with BeanstalkdProcess(binlog_dir=small_disk, extra_args=["-s", "131072"]) as server:
        address = (server.host, server.port)
        failing = {f"j{i}" for i in range(jobs) if rng.random() < 0.15}
        ids = ledger.put_many(
            address,
            TUBE,
            ((f"j{i}", {"fail_first": f"j{i}" in failing}) for i in range(jobs)),
        )
        full_from = time.time()
        junk = fill(small_disk, address)
        config = DaemonConfig(
            server=server.address,
            tube=TUBE,
            concurrency=10,
            jobs_per_connection=5,
            retry={"backoff_base": 1, "backoff_cap": 2},
        )
        start_daemon(daemons, write_config(tmp_path / "w.toml", config), tmp_path, ledger)
        # Every job but the stranded ones is done with the disk still full.
        assert wait_for(lambda: settled(address, TUBE), timeout=60, interval=0.1), (
            "jobs left undone while the disk was full"
        )
        orphans = stranded(address, ids)
        held_then_released = [
            e
            for e in events_named(daemons, "job released")
            if "binlog full: released with delay 0" in str(e.get("reason"))
        ]
        told = events_named(
            daemons, "binlog full: failing jobs are held in the worker until the server has room"
        )
        first_refusal = min(
            log_time(e) or 0.0 for e in events_named(daemons, "outcome refused by beanstalkd")
        )
        released_before = [  # the binlog file still had room for these
            e for e in events_named(daemons, "job released") if (log_time(e) or 0.0) < first_refusal
        ]

        (small_disk / "filler").unlink()  # room again: the probe notices within 5 s
        assert wait_for(lambda: bool(events_named(daemons, "binlog has room again")), timeout=20), (
            "the daemon never noticed the room"
        )
        # The stranded jobs come back only with a restart (on the same binlog).
        server.restart(hard=True)
        ledger.fault("binlog full, then beanstalkd restarted", full_from, time.time())
        all_done = wait_for(lambda: settled(address, TUBE), timeout=60, interval=0.1)
        violations = [] if all_done else ["stranded jobs not done after the restart"]
        finish(
            "j. a full binlog",
            ledger,
            daemons,
            address,
            TUBE,
            tmp_path,
            violations=violations,
            figures={
                "jobs": jobs,
                "failing_first": len(failing),
                "junk_jobs_to_fill_the_binlog": junk,
                "released_before_the_first_refusal": len(released_before),
                "stranded_while_full": len(orphans),
                "held_then_released_with_delay_0": len(held_then_released),
            },
        )
    # One refusal (or the outcomes on the wire with it) per episode, not one per failure.
    assert len(told) == 1
    assert 1 <= len(orphans) <= config.jobs_per_connection, orphans  # type: ignore[operator]
    # Every other first failure was held in the worker and released with delay 0.
    assert len(released_before) + len(orphans) + len(held_then_released) == len(failing)
