"""Operating schedules as users do, through `tubeworker run` and the CLI on a real
beanstalkd: `schedule pause` skips fires across a daemon's restart and `resume` brings them
back; `overlap = "skip"` never lets two runs of one schedule overlap."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import greenstalk
import pytest

from tests.e2e.test_daemon_process import run_cli
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow


def _put_so_far(server: BeanstalkdProcess, tube: str) -> int:
    with greenstalk.Client((server.host, server.port)) as client:
        try:
            return int(client.stats_tube(tube)["total-jobs"])
        except greenstalk.NotFoundError:
            return 0


def _events(daemons: list[DaemonProcess], name: str) -> list[dict]:
    return [e for d in daemons for e in d.events() if e.get("event") == name]


def test_given_a_paused_schedule_then_no_fire_until_resumed_even_across_a_restart(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[worker]\nservers = ["{beanstalkd.address}"]\n[[pool]]\ntubes = ["unused"]\n'
        '[[schedule]]\nname = "sync"\nevery = "1s"\ntube = "fires"\ntask = "sync"\n'
    )
    first = DaemonProcess(config, tmp_path)
    daemons.append(first.start())
    first.wait_ready()
    wait_until_sync(lambda: _put_so_far(beanstalkd, "fires") >= 2, timeout=20, what="fires")

    paused = run_cli("schedule", "pause", "sync", "1h", "-c", str(config))
    assert paused.returncode == 0, paused.stderr
    assert "paused sync until" in paused.stdout
    before = _put_so_far(beanstalkd, "fires")
    wait_until_sync(
        lambda: len(_events([first], "schedule fire skipped: paused")) >= 2,
        timeout=15,
        what="fires skipped while paused",
    )
    listing = json.loads(run_cli("schedules", "-c", str(config), "--json").stdout)
    assert listing["schedules"][0]["paused_until"] is not None

    # The pause is kept in the tick: a daemon started afresh honours it too.
    first.signal(signal.SIGKILL)
    first.wait(timeout=10)
    second = DaemonProcess(config, tmp_path)
    daemons.append(second.start())
    second.wait_ready()
    wait_until_sync(
        lambda: len(_events([second], "schedule fire skipped: paused")) >= 2,
        timeout=15,
        what="the new daemon skipping paused fires",
    )
    assert _put_so_far(beanstalkd, "fires") <= before + 1  # one may have been on its way

    resumed = run_cli("schedule", "resume", "sync", "-c", str(config))
    assert resumed.returncode == 0, resumed.stderr
    at_resume = _put_so_far(beanstalkd, "fires")
    wait_until_sync(
        lambda: _put_so_far(beanstalkd, "fires") >= at_resume + 2, timeout=15, what="fires again"
    )
    listing = json.loads(run_cli("schedules", "-c", str(config), "--json").stdout)
    assert listing["schedules"][0]["paused_until"] is None
    # Wrong uses are one clear line each.
    assert run_cli("schedule", "pause", "sync", "-c", str(config)).returncode == 64
    assert run_cli("schedule", "pause", "nope", "1h", "-c", str(config)).returncode == 66
    bad = run_cli("schedule", "pause", "sync", "soon", "-c", str(config))
    assert bad.returncode == 65
    assert "Traceback" not in bad.stderr


def test_given_overlap_skip_then_a_run_longer_than_the_interval_never_overlaps_the_next(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[worker]\nservers = ["{beanstalkd.address}"]\n'
        '[handlers]\n"sleepy" = "tests.e2e.handlers:sleepy"\n'
        '[[pool]]\ntubes = ["slow"]\nconcurrency = 10\n'
        '[[schedule]]\nname = "slow-sync"\nevery = "1s"\ntube = "slow"\ntask = "sleepy"\n'
        'payload = { n = 1, seconds = 2.5 }\noverlap = "skip"\n'
    )
    daemon = DaemonProcess(config, tmp_path)
    daemons.append(daemon.start())
    daemon.wait_ready()
    wait_until_sync(lambda: daemon.runs("end")[1] >= 3, timeout=30, what="three runs")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0

    # Runs follow each other: start, end, start, end... never two starts in a row.
    kinds = [line.split()[0] for line in daemon.runlog.read_text().splitlines()]
    assert kinds[: len(kinds) // 2 * 2] == ["start", "end"] * (len(kinds) // 2), kinds
    skipped = _events([daemon], "schedule fire skipped: the previous run is unfinished")
    assert len(skipped) >= 3  # each 2.5 s run held back a fire or two
    fired = _events([daemon], "schedule fired")
    assert len({e["id"] for e in fired}) == len(fired)
