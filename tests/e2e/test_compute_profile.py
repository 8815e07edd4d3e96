"""The compute profile as users run it: `tubeworker run` with a process pool, the daemon's
real logging (console and JSON), a real beanstalkd; and a stop of the whole process group,
as systemd (KillMode=mixed) and supervisor (stopasgroup) do it."""

from __future__ import annotations

import signal
from pathlib import Path

import greenstalk
import pytest

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow


def compute_config(path: Path, server: BeanstalkdProcess, *, drain_timeout: int = 10) -> Path:
    path.write_text(
        "\n".join(
            [
                "[worker]",
                f'servers = ["{server.address}"]',
                f"drain_timeout = {drain_timeout}",
                "[handlers]",
                '"crunch" = "tests.e2e.handlers:crunch"',
                "[[pool]]",
                'name = "thumbnails"',
                'tubes = ["thumbnails"]',
                'profile = "compute"',
                "concurrency = 2",
                'handler = "crunch"',
            ]
        )
        + "\n"
    )
    return path


def put_raw(server: BeanstalkdProcess, count: int) -> list[int]:
    with greenstalk.Client((server.host, server.port), use="thumbnails") as client:
        return [client.put(f"image-{n}".encode(), ttr=60) for n in range(count)]


def left_in_tube(server: BeanstalkdProcess) -> dict[str, int]:
    with greenstalk.Client((server.host, server.port)) as client:
        try:
            stats = client.stats_tube("thumbnails")
        except greenstalk.NotFoundError:
            return {"ready": 0, "reserved": 0, "buried": 0, "delayed": 0}
    return {
        k.removeprefix("current-jobs-"): int(v)
        for k, v in stats.items()
        if k.startswith("current-jobs-") and k != "current-jobs-urgent"
    }


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_given_a_compute_pool_under_the_real_daemon_then_every_job_is_deleted(
    beanstalkd: BeanstalkdProcess,
    tmp_path: Path,
    daemons: list[DaemonProcess],
    log_format: str,
) -> None:
    ids = put_raw(beanstalkd, 5)
    config = compute_config(tmp_path / "compute.toml", beanstalkd)
    daemon = DaemonProcess(config, tmp_path, env={"TUBEWORKER_LOG_FORMAT": log_format})
    daemons.append(daemon.start())

    def all_deleted() -> bool:
        left = left_in_tube(beanstalkd)
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, daemon.stderr.read_text()
        return sum(left.values()) == 0

    def all_logged_done() -> bool:
        # The "job done" line follows beanstalkd's confirmation of the delete and goes out
        # with the next batch of log lines, so the tube can be empty a moment before it.
        return daemon.stdout.read_text().count("job done") >= len(ids)

    wait_until_sync(all_deleted, timeout=60, what="every compute job deleted")
    wait_until_sync(all_logged_done, timeout=10, what="every deletion logged")
    assert len(daemon.runs("end")) == len(ids)
    output = daemon.stdout.read_text()
    assert "released" not in output, output  # no attempt failed (the bug: cannot pickle)
    assert "pickle" not in output
    if log_format == "json":
        done = [e for e in daemon.events() if e.get("event") == "job done"]
        assert sorted(e["job_id"] for e in done) == sorted(ids)
    else:
        assert output.count("job done") == len(ids)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    assert "Traceback" not in daemon.stderr.read_text()


def test_given_compute_jobs_running_when_the_whole_group_gets_sigterm_then_a_clean_drain(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    put_raw(beanstalkd, 40)
    config = compute_config(tmp_path / "compute.toml", beanstalkd)
    daemon = DaemonProcess(config, tmp_path)
    daemons.append(daemon.start(new_session=True))
    wait_until_sync(lambda: len(daemon.runs("end")) >= 2, timeout=60, what="compute jobs done")
    wait_until_sync(lambda: len(daemon.children) >= 1, what="worker processes")

    daemon.signal_group(signal.SIGTERM)  # the daemon and its worker processes at once
    assert daemon.wait(timeout=30) == 0
    stderr = daemon.stderr.read_text()
    assert "Traceback" not in stderr, stderr
    assert "Graceful shutdown failed" not in stderr
    left = left_in_tube(beanstalkd)
    assert left["reserved"] == 0
    assert left["buried"] == 0
    # Every job either ran to its delete or is back in the tube for the next worker.
    assert len(daemon.runs("end")) + left["ready"] >= 40
