"""No enqueue lost: an app (a real Python process using ``Producer(spool=...)``) puts jobs
while beanstalkd is stopped, then while it is draining, then while its binlog's disk is
full; every job is spooled and the app keeps working. beanstalkd comes back, the app
flushes and is killed -9 mid-flush, and ``tubeworker spool flush`` delivers the rest:
every job is in its tube, in order, once, but for at most one duplicate at the kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.reliability.test_full_binlog import fill, small_disk  # noqa: F401 (a fixture)
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import REPO
from tests.support.tubes import payload_ns, put_count
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

TUBE = "spooled"
APP = textwrap.dedent(
    """\
    import json, sys, time
    from tubeworker.producer import Producer

    server, spool, first, count, then = sys.argv[1:6]
    with Producer(server, spool=spool, flush_every=0.05, connect_timeout=1) as app:
        spooled = 0
        for n in range(int(first), int(first) + int(count)):
            spooled += app.enqueue("spooled", "t", {"n": n}).spooled
        print(json.dumps({"spooled": spooled}), flush=True)
        while then == "flush" and app.spool_status().jobs:
            time.sleep(0.05)  # the producer's own thread delivers
    """
)


def run_app(tmp_path: Path, server: str, first: int, count: int, then: str = "exit") -> dict:
    script = tmp_path / "app.py"
    script.write_text(APP)
    done = subprocess.run(
        [sys.executable, str(script), server, str(tmp_path / "spool.db"), str(first), str(count),
         then],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_jobs_put_while_beanstalkd_is_down_or_draining_are_delivered_once_in_order(
    tmp_path: Path,
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Stopped: nothing listens.
    assert run_app(tmp_path, address, 0, 1000) == {"spooled": 1000}
    # Draining (SIGUSR1): every put is DRAINING.
    with BeanstalkdProcess(port=port) as server:
        server.signal(signal.SIGUSR1)
        assert run_app(tmp_path, address, 1000, 1000) == {"spooled": 1000}
        assert put_count(server, TUBE) == 0
    # Back: the app flushes and is killed -9 in the middle; the CLI delivers the rest.
    with BeanstalkdProcess(port=port) as server:
        script = tmp_path / "app.py"
        app = subprocess.Popen(
            [sys.executable, str(script), address, str(tmp_path / "spool.db"), "2000", "0",
             "flush"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until_sync(
                lambda: put_count(server, TUBE) >= 500, timeout=60, what="a flush begun"
            )
            app.send_signal(signal.SIGKILL)
        finally:
            app.kill()
            app.wait(timeout=10)
        at_kill = put_count(server, TUBE)
        assert at_kill < 2000, "staging: the flush ended before the kill"
        rest = subprocess.run(
            [sys.executable, "-m", "tubeworker", "spool", "flush", str(tmp_path / "spool.db"),
             "--server", address],
            capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
        )  # fmt: skip
        assert rest.returncode == 0, rest.stderr
        ns = payload_ns(server, TUBE)
    assert sorted(set(ns)) == list(range(2000)), "a job is missing"
    twice = [n for n in set(ns) if ns.count(n) > 1]
    assert len(twice) <= 1, twice  # the one put when the app was killed, if any
    once = list(dict.fromkeys(ns))
    assert once == sorted(once), "out of order"
    print(f"\nkilled after {at_kill} of 2000 delivered; twice: {twice}")


def test_jobs_put_while_the_binlog_disk_is_full_are_spooled_then_delivered(
    small_disk: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    with BeanstalkdProcess(binlog_dir=small_disk, extra_args=["-s", "131072"]) as server:
        fill(small_disk, (server.host, server.port))
        assert run_app(tmp_path, server.address, 0, 300) == {"spooled": 300}
        assert put_count(server, TUBE) == 0
    with BeanstalkdProcess(port=server.port) as back:
        assert run_app(tmp_path, back.address, 300, 0, then="flush") == {"spooled": 0}
        assert payload_ns(back, TUBE) == list(range(300))
