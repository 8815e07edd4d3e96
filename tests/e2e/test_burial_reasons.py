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


def buried_config(path: Path, server: BeanstalkdProcess) -> Path:
    """A config as the README writes one: the handlers by name, an envelope pool with one
    attempt per kick (so its reason says which attempt buried it), and a compute pool."""
    path.write_text(
        "\n".join(
            [
                "[worker]",
                f'servers = ["{server.address}"]',
                "[logging]",
                'format = "json"',
                "[handlers]",
                '"shout" = "tests.e2e.handlers:fail_loudly"',
                '"parse" = "tests.e2e.handlers:fail_in_process"',
                "[[pool]]",
                'tubes = ["shout"]',
                "[pool.retry]",
                "max_attempts = 1",
                "[[pool]]",
                'name = "parsing"',
                'tubes = ["parsing"]',
                'profile = "compute"',
                'handler = "parse"',
                "concurrency = 1",
                "[pool.retry]",
                "max_attempts = 1",
            ]
        )
        + "\n"
    )
    return path


def put(server: BeanstalkdProcess, tube: str, body: str) -> int:
    with greenstalk.Client((server.host, server.port), use=tube) as client:
        return client.put(body, ttr=60)


def job_stats(server: BeanstalkdProcess, job_id: int) -> dict[str, object]:
    with greenstalk.Client((server.host, server.port)) as client:
        return dict(client.stats_job(job_id))


def records_in(server: BeanstalkdProcess, tube: str) -> int:
    """Burial records in the tube's record tube (none: beanstalkd freed it)."""
    with greenstalk.Client((server.host, server.port)) as client:
        try:
            return int(client.stats_tube(f"tubeworker.buried.{tube}")["current-jobs-ready"])
        except greenstalk.NotFoundError:
            return 0


def test_given_a_kicked_job_buried_again_then_only_its_latest_burial_is_listed_and_matched(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    job_id = put(beanstalkd, "shout", json.dumps({"task": "shout", "payload": {"n": 1}}))
    daemon = DaemonProcess(buried_config(tmp_path / "w.toml", beanstalkd), tmp_path)
    daemons.append(daemon.start())

    def buried_after(buries: int) -> bool:
        stats = job_stats(beanstalkd, job_id)
        return stats["state"] == "buried" and stats["buries"] == buries

    def recorded(records: int) -> bool:
        return records_in(beanstalkd, "shout") == records

    wait_until_sync(lambda: buried_after(1) and recorded(1), timeout=20, what="1st burial")
    first = json.loads(cli(beanstalkd, "buried", "shout", "--json").stdout)[0]["jobs"]
    assert [job["id"] for job in first] == [job_id]
    assert first[0]["reason"].endswith("(attempt 1 of 1: giving up)")

    # An operator replays it; it fails again (a kick grants one more attempt).
    kicked = cli(beanstalkd, "kick-job", str(job_id))
    assert kicked.returncode == 0, kicked.stderr
    wait_until_sync(lambda: buried_after(2) and recorded(2), timeout=20, what="2nd burial")

    # One row for the job, from its latest burial; the earlier record is gone when read.
    listing = cli(beanstalkd, "buried", "shout")
    assert listing.returncode == 0, listing.stderr
    assert "1 buried in 'shout'" in listing.stdout
    rows = [line for line in listing.stdout.splitlines() if line.startswith(f"{job_id} ")]
    assert len(rows) == 1, listing.stdout
    assert "(attempt 2 of 2: giving up)" in rows[0]
    assert "attempt 1 of 1" not in listing.stdout
    assert records_in(beanstalkd, "shout") == 1

    # A reason that is no longer true matches nothing; the true one does.
    stale = cli(beanstalkd, "kick", "shout", "--reason", "attempt 1 of 1")
    assert stale.returncode == 0, stale.stderr
    assert "kicked 0 buried jobs" in stale.stdout
    assert job_stats(beanstalkd, job_id)["state"] == "buried"
    latest = cli(beanstalkd, "kick", "shout", "--reason", "attempt 2 of 2")
    assert latest.returncode == 0, latest.stderr
    assert "kicked 1 buried job " in latest.stdout
    assert job_stats(beanstalkd, job_id)["kicks"] == 2


def test_given_handler_errors_then_their_tracebacks_are_kept_with_the_burial(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    failed = put(beanstalkd, "shout", json.dumps({"task": "shout", "payload": {"n": 1}}))
    bad = put(beanstalkd, "shout", "{not json")
    crunched = put(beanstalkd, "parsing", "rows")  # a compute pool: a sync handler
    daemon = DaemonProcess(buried_config(tmp_path / "w.toml", beanstalkd), tmp_path)
    daemons.append(daemon.start())

    def recorded() -> bool:
        return records_in(beanstalkd, "shout") == 2 and records_in(beanstalkd, "parsing") == 1

    wait_until_sync(recorded, timeout=30, what="three burials recorded")

    # The list says why; --verbose adds where, for the handler's error only.
    listing = cli(beanstalkd, "buried", "shout")
    assert "Traceback" not in listing.stdout
    verbose = cli(beanstalkd, "buried", "shout", "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    _, _, tracebacks = verbose.stdout.partition(f"job {failed}, attempt 1, handler_error:")
    assert "  Traceback (most recent call last):" in tracebacks
    assert ", in fail_loudly" in tracebacks
    assert f"  ValueError: handler failed on purpose for job {failed}" in tracebacks
    assert f"job {bad}," not in verbose.stdout  # a bad body raised nothing
    jobs = {
        job["id"]: job
        for job in json.loads(cli(beanstalkd, "buried", "shout", "--json").stdout)[0]["jobs"]
    }
    assert jobs[bad]["traceback"] is None
    assert jobs[failed]["traceback"].endswith(
        f"ValueError: handler failed on purpose for job {failed}\n"
    )

    # peek of a buried job says why it was buried, and where.
    peek = cli(beanstalkd, "peek", str(failed))
    assert peek.returncode == 0, peek.stderr
    assert "burial: handler_error, attempt 1, " in peek.stdout
    assert f"reason: ValueError: handler failed on purpose for job {failed} (attempt 1 of 1" in (
        peek.stdout
    )
    assert "traceback:\n  Traceback (most recent call last):" in peek.stdout
    peek_bad = cli(beanstalkd, "peek", str(bad))
    assert "burial: bad_body, attempt 1, " in peek_bad.stdout
    assert "traceback:" not in peek_bad.stdout

    # A compute handler fails in a worker process: its frames come back with it.
    peek_compute = cli(beanstalkd, "peek", "parsing", "buried")
    assert peek_compute.returncode == 0, peek_compute.stderr
    assert f"id: {crunched}" in peek_compute.stdout
    assert "burial: handler_error, attempt 1, " in peek_compute.stdout
    assert ", in fail_in_process" in peek_compute.stdout
    assert ", in _parse_rows" in peek_compute.stdout
    assert "  ValueError: invalid literal for int() with base 10: 'two'" in peek_compute.stdout
