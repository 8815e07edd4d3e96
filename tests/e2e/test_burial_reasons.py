"""Why a job was buried, as operators read it: `tubeworker run` buries jobs for different
reasons, `tubeworker buried TUBE` lists them with their reasons (also after the daemon is
gone), `kick --reason` replays only one kind, and stale records are cleaned up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import greenstalk
import pytest

from tests.e2e.test_daemon_process import write_config
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import REPO, DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow


def cli(server: BeanstalkdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tubeworker", *args, "--server", server.address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_given_jobs_buried_by_the_daemon_then_their_reasons_are_listed_and_kickable(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="e2e") as client:
        client.put("{not json")  # bad body
        client.put(json.dumps({"task": "no.such.task", "payload": {}}))  # unknown task
        client.put(json.dumps({"task": "no.such.task", "payload": {"n": 2}}))
    config = write_config(tmp_path / "w.toml", beanstalkd, concurrency=2)
    daemon = DaemonProcess(config, tmp_path)
    daemons.append(daemon.start())

    def recorded() -> bool:
        result = cli(beanstalkd, "buried", "e2e", "--json")
        return result.returncode == 0 and len(json.loads(result.stdout)[0]["jobs"]) == 3

    wait_until_sync(recorded, timeout=20, what="three burials recorded")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0

    # The daemon is gone: the reasons are still there, in beanstalkd.
    listing = cli(beanstalkd, "buried", "e2e")
    assert listing.returncode == 0, listing.stderr
    assert "3 buried in 'e2e'" in listing.stdout
    assert "bad_body" in listing.stdout
    assert listing.stdout.count("unknown_task") == 2
    assert "no handler registered for task 'no.such.task'" in listing.stdout

    # A deploy fixed one bug: replay only those.
    kicked = cli(beanstalkd, "kick", "e2e", "--reason", "unknown_task")
    assert kicked.returncode == 0, kicked.stderr
    assert "kicked 2 buried jobs" in kicked.stdout
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        stats = client.stats_tube("e2e")
        assert (stats["current-jobs-buried"], stats["current-jobs-ready"]) == (1, 2)
        # Reading the records never consumed them; the kicked ones' records are gone.
        assert client.stats_tube("tubeworker.buried.e2e")["current-jobs-ready"] == 1
    after = json.loads(cli(beanstalkd, "buried", "e2e", "--json").stdout)
    assert [job["cause"] for job in after[0]["jobs"]] == ["bad_body"]

    # A record whose job was deleted by hand is stale: the next listing cleans it up.
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="e2e") as client:
        client.delete(client.peek_buried())
    empty = json.loads(cli(beanstalkd, "buried", "e2e", "--json").stdout)
    assert empty[0]["jobs"] == []
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        try:
            left = client.stats_tube("tubeworker.buried.e2e")["current-jobs-ready"]
        except greenstalk.NotFoundError:
            left = 0  # no record and no watcher: beanstalkd freed the tube
    assert left == 0
