"""Schedules across a fleet, as users run it: three `tubeworker run` processes share one
`every = "1s"` schedule while the daemon that fired last (the likely holder of the next
tick) is killed with -9 and restarted, again and again. Every fire time in the window is
put exactly once (by its envelope id): none missing, none twice."""

from __future__ import annotations

import json
import signal
import statistics
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import greenstalk
import pytest

from tests.e2e.test_daemon_process import run_cli
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

KILL_EVERY = (5, 7, 6, 8, 5, 9)  # seconds (as fires) between kills: ~40 s in all


def _config(path: Path, server: BeanstalkdProcess) -> Path:
    path.write_text(
        f"""
[worker]
servers = ["{server.address}"]

[[pool]]
tubes = ["unused"]

[[schedule]]
name = "every-second"
every = "1s"
tube = "fires"
task = "noop"
misfire = "catch_up"
""",
        encoding="utf-8",
    )
    return path


def _fired(daemon: DaemonProcess) -> list[dict]:
    return [e for e in daemon.events() if e.get("event") == "schedule fired"]


# Rounds of SIGSTOP before the test gives up on beanstalkd 1.12's lost TTR expiry (B1).
_B1_ROUNDS = 3


def _ticks_past_their_ttr(client: greenstalk.Client) -> list[int]:
    """Ticks still reserved after their TTR ran out: beanstalkd lost the expiry
    (docs/beanstalkd.md#b1). Ids run from 1 on the test's own server; ticks are recent."""
    stuck = []
    last = int(client.stats()["total-jobs"])
    for job_id in range(max(1, last - 50), last + 1):
        try:
            stats = client.stats_job(job_id)
        except greenstalk.NotFoundError:
            continue
        if (
            str(stats["tube"]).startswith("tubeworker.schedule.")
            and stats["state"] == "reserved"
            and int(stats["time-left"]) < 0
        ):
            stuck.append(job_id)
    return stuck


def _put_so_far(client: greenstalk.Client) -> int:
    try:
        return int(client.stats_tube("fires")["total-jobs"])
    except greenstalk.NotFoundError:
        return 0


def test_given_three_daemons_and_kills_then_every_fire_is_put_exactly_once(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    config = _config(tmp_path / "w.toml", beanstalkd)
    fleet = [DaemonProcess(config, tmp_path) for _ in range(3)]
    for daemon in fleet:
        daemons.append(daemon.start())
    for daemon in fleet:
        daemon.wait_ready()
    everyone = list(fleet)
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="fires") as client:
        wait_until_sync(lambda: _put_so_far(client) >= 2, timeout=20, what="first fires")
        kills = 0
        for fires in KILL_EVERY:
            # Given the daemon that fired last (it holds, or is about to hold, the tick)
            latest = max(fleet, key=lambda d: max((e["timestamp"] for e in _fired(d)), default=""))
            # When it is killed -9 and started again at once
            latest.signal(signal.SIGKILL)
            latest.wait(timeout=10)
            kills += 1
            fresh = DaemonProcess(config, tmp_path)
            daemons.append(fresh.start())
            everyone.append(fresh)
            fleet[fleet.index(latest)] = fresh
            # Then the schedule goes on: `fires` more fires are put
            target = _put_so_far(client) + fires
            wait_until_sync(
                lambda target=target: _put_so_far(client) >= target,  # type: ignore[misc]
                timeout=fires + 10,
                what=f"{fires} more fires after kill {kills}",
            )
        for daemon in fleet:
            daemon.signal(signal.SIGTERM)
        for daemon in fleet:
            assert daemon.wait(timeout=30) == 0

        ids: list[str] = []
        client.watch("fires")
        client.ignore("default")
        while True:
            try:
                job = client.reserve(timeout=0)
            except greenstalk.TimedOutError:
                break
            ids.append(json.loads(job.body)["id"])
            client.delete(job)

    # every fire time once, none missing between the first and the last
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    prefix = "schedule:every-second:"
    assert all(i.startswith(prefix) for i in ids)
    times = sorted(datetime.fromisoformat(i[len(prefix) :]).timestamp() for i in ids)
    assert times == [times[0] + n for n in range(len(times))], "a fire time is missing"
    assert len(times) >= sum(KILL_EVERY), len(times)
    lateness = sorted(e["lateness_ms"] for d in everyone for e in _fired(d))
    assert len(lateness) == len(ids)  # each put was logged once, by the daemon that put it
    p50 = statistics.median(lateness)
    p99 = lateness[min(len(lateness) - 1, int(len(lateness) * 0.99))]
    print(
        f"\nfires={len(ids)} duplicates=0 missing=0 kills={kills} "
        f"lateness_ms p50={p50:.1f} p99={p99:.1f} max={lateness[-1]:.1f}"
    )
    assert lateness[-1] < 1000  # a kill -9 of the holder is taken over at once


def test_given_beanstalkd_killed_and_restarted_on_its_binlog_then_no_fire_is_lost_or_twice(
    beanstalkd_binlog: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """The ticks and the fires live in beanstalkd: after a kill -9 of the server and a
    restart on its binlog, the fires missed meanwhile are caught up (misfire = catch_up)
    and every fire time of the window is there once."""
    server = beanstalkd_binlog
    config = _config(tmp_path / "w.toml", server)
    fleet = [DaemonProcess(config, tmp_path) for _ in range(3)]
    for daemon in fleet:
        daemons.append(daemon.start())
    for daemon in fleet:
        daemon.wait_ready()
    with greenstalk.Client((server.host, server.port), use="fires") as client:
        wait_until_sync(lambda: _put_so_far(client) >= 3, timeout=20, what="first fires")
    server.restart(hard=True)  # kill -9, then the same port and binlog
    with greenstalk.Client((server.host, server.port), use="fires") as client:
        wait_until_sync(lambda: _put_so_far(client) >= 6, timeout=30, what="fires after restart")
    for daemon in fleet:
        daemon.signal(signal.SIGTERM)
    for daemon in fleet:
        assert daemon.wait(timeout=30) == 0
    with greenstalk.Client((server.host, server.port), watch="fires") as client:
        ids: list[str] = []
        while True:
            try:
                job = client.reserve(timeout=0)
            except greenstalk.TimedOutError:
                break
            ids.append(json.loads(job.body)["id"])
            client.delete(job)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    prefix = "schedule:every-second:"
    times = sorted(datetime.fromisoformat(i[len(prefix) :]).timestamp() for i in ids)
    assert times == [times[0] + n for n in range(len(times))], "a fire time is missing"


BAD_SCHEDULES = {
    'cron = "30 25 * * *"\ntube = "t"\ntask = "x"': "schedule.nightly.cron: bad cron",
    'cron = "30 2 * * *"\ntimezone = "Europe/Berln"\ntube = "t"\ntask = "x"': (
        "schedule.nightly.timezone: unknown time zone 'Europe/Berln'"
    ),
    'every = "5m"\ntask = "x"': "schedule.nightly.tube: a schedule needs the tube",
}


@pytest.mark.parametrize(("table", "expected"), BAD_SCHEDULES.items())
def test_given_a_bad_schedule_then_check_exits_78_naming_schedule_and_field(
    tmp_path: Path, table: str, expected: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'[[pool]]\ntubes = ["t"]\n[[schedule]]\nname = "nightly"\n{table}\n')
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 78, result.stderr
    assert expected in result.stderr


def test_given_two_schedules_of_one_name_then_check_exits_78(tmp_path: Path) -> None:
    table = '[[schedule]]\nname = "a"\nevery = "1m"\ntube = "t"\ntask = "x"\n'
    config = tmp_path / "dup.toml"
    config.write_text(f'[[pool]]\ntubes = ["t"]\n{table}{table}')
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 78
    assert "schedule[1].name: two schedules are named 'a'" in result.stderr


def test_given_a_schedule_then_check_prints_its_next_five_fires_in_its_zone_and_utc(
    tmp_path: Path,
) -> None:
    config = tmp_path / "ok.toml"
    config.write_text(
        '[[pool]]\ntubes = ["reports"]\n[[schedule]]\nname = "nightly"\n'
        'cron = "30 2 * * *"\ntimezone = "Asia/Kolkata"\ntube = "reports"\ntask = "x"\n'
        '[[heartbeat]]\ntube = "reports"\nevery = "1m"\n[[heartbeat]]\ntube = "elsewhere"\n'
    )
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "schedule nightly: cron '30 2 * * *' in Asia/Kolkata" in result.stdout
    nexts = [line for line in result.stdout.splitlines() if line.startswith("  next: ")]
    assert len(nexts) == 5
    assert all("T02:30:00+05:30  (" in n and "T21:00:00Z UTC)" in n for n in nexts), nexts
    assert "heartbeat reports: every 60 s; stale (TubeworkerHeartbeatStale) after 180 s" in (
        result.stdout
    )
    assert "warning: heartbeat 'elsewhere': no pool in this config works the tube" in (
        result.stdout
    )


def _drain(client: greenstalk.Client, tube: str, name: str | None = None) -> list[float]:
    """The fire times of every job in ``tube`` (reserved and deleted) of the schedule
    ``name`` (default: named as the tube)."""
    prefix = f"schedule:{name or tube}:"
    client.watch(tube)
    times = []
    while True:
        try:
            job = client.reserve(timeout=0)
        except greenstalk.TimedOutError:
            break
        fire = json.loads(job.body)["id"]
        assert fire.startswith(prefix), fire
        times.append(datetime.fromisoformat(fire[len(prefix) :]).timestamp())
        client.delete(job)
    client.ignore(tube)
    return sorted(times)


def test_given_every_daemon_down_for_10s_then_each_policy_runs_what_it_says(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    config = tmp_path / "w.toml"
    tables = "".join(
        f'[[schedule]]\nname = "{policy}"\nevery = "1s"\ntube = "{policy}"\ntask = "noop"\n'
        f'misfire = "{policy}"\n'
        for policy in ("skip", "coalesce", "catch_up")
    )
    config.write_text(
        f'[worker]\nservers = ["{beanstalkd.address}"]\n[[pool]]\ntubes = ["unused"]\n{tables}'
    )
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:

        def put(tube: str) -> int:
            try:
                return int(client.stats_tube(tube)["total-jobs"])
            except greenstalk.NotFoundError:
                return 0

        first = DaemonProcess(config, tmp_path)
        daemons.append(first.start())
        wait_until_sync(lambda: put("catch_up") >= 3, timeout=20, what="fires before")
        # Given every daemon stopped for 10 s (the downtime is the scenario, not a wait)
        first.signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        before = {p: put(p) for p in ("skip", "coalesce", "catch_up")}
        time.sleep(10)
        # When one starts again and runs a few fires more
        second = DaemonProcess(config, tmp_path)
        daemons.append(second.start())
        wait_until_sync(lambda: put("skip") >= before["skip"] + 3, timeout=20, what="fires after")
        second.signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
        fired = {p: _drain(client, p) for p in ("skip", "coalesce", "catch_up")}
    events = first.events() + second.events()

    def logged(event: str, schedule: str) -> list[float]:
        prefix = f"schedule:{schedule}:"
        return sorted(
            datetime.fromisoformat(e["id"][len(prefix) :]).timestamp()
            for e in events
            if e.get("event") == event and e.get("schedule") == schedule
        )

    # Then catch_up puts every fire time, the missed ones included
    catch_up = fired["catch_up"]
    assert catch_up == [catch_up[0] + n for n in range(len(catch_up))]
    assert len(catch_up) >= 13
    # skip puts none of the missed ones, and logs each
    skip = fired["skip"]
    missed = [t for a, b in pairwise(skip) for t in range(int(a) + 1, int(b))]
    assert len(missed) >= 8, skip
    assert logged("schedule fire skipped", "skip") == missed
    # coalesce puts one for them all (the latest missed), and logs the others
    coalesce = fired["coalesce"]
    gaps = [(a, b) for a, b in pairwise(coalesce) if b - a > 1]
    assert len(gaps) == 1, coalesce
    start, end = gaps[0]
    assert logged("schedule fire coalesced", "coalesce") == list(range(int(start) + 1, int(end)))
    assert len(set(coalesce)) == len(coalesce)


def test_given_a_running_schedule_then_schedules_shows_its_tick_and_trigger_puts_one_now(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    config = tmp_path / "w.toml"
    config.write_text(
        f'[worker]\nservers = ["{beanstalkd.address}"]\n[[pool]]\ntubes = ["unused"]\n'
        '[[schedule]]\nname = "hourly"\ncron = "0 * * * *"\ntube = "reports"\ntask = "r"\n'
    )
    daemon = DaemonProcess(config, tmp_path)
    daemons.append(daemon.start())
    daemon.wait_ready()

    def listing() -> dict:
        result = run_cli("schedules", "-c", str(config), "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    wait_until_sync(
        lambda: listing()["schedules"][0]["state"] == "waiting", timeout=20, what="a tick"
    )
    (row,) = listing()["schedules"]
    assert row["next"].endswith(":00:00Z")  # the next whole hour, in UTC
    assert listing()["server"] == beanstalkd.address

    trigger = run_cli("schedule", "trigger", "hourly", "-c", str(config))
    assert trigger.returncode == 0, trigger.stderr
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), watch="reports") as client:
        job = client.reserve(timeout=5)
        body = json.loads(job.body)
    assert body["task"] == "r"
    assert body["id"].startswith("schedule:hourly:")
    assert body["id"] in trigger.stdout
    unknown = run_cli("schedule", "trigger", "nope", "-c", str(config))
    assert unknown.returncode == 66


def test_given_two_servers_when_the_tick_server_dies_then_the_schedule_resumes_on_the_other(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    with BeanstalkdProcess() as second:
        config = tmp_path / "w.toml"
        config.write_text(
            f'[worker]\nservers = ["{beanstalkd.address}", "{second.address}"]\n'
            '[[pool]]\ntubes = ["unused"]\n'
            '[[schedule]]\nname = "fires"\nevery = "1s"\ntube = "fires"\ntask = "noop"\n'
            'misfire = "catch_up"\n'
        )
        fleet = [DaemonProcess(config, tmp_path) for _ in range(2)]
        for daemon in fleet:
            daemons.append(daemon.start())
        first = greenstalk.Client((beanstalkd.host, beanstalkd.port))
        other = greenstalk.Client((second.host, second.port))

        def put(client: greenstalk.Client) -> int:
            try:
                return int(client.stats_tube("fires")["total-jobs"])
            except greenstalk.NotFoundError:
                return 0

        # Given the ticks on the first server (the first reachable in configured order)
        wait_until_sync(lambda: put(first) >= 3, timeout=30, what="fires on the first")
        assert put(other) == 0
        first.close()
        # When it is killed -9
        killed = time.time()
        beanstalkd.kill9()
        # Then the fires go on on the other
        wait_until_sync(lambda: put(other) >= 5, timeout=30, what="fires on the other")
        for daemon in fleet:
            daemon.signal(signal.SIGTERM)
        for daemon in fleet:
            assert daemon.wait(timeout=30) == 0
        times = _drain(other, "fires")
        other.close()
    assert len(times) == len(set(times))
    assert times == [times[0] + n for n in range(len(times))]
    resumed = times[0] - killed
    print(f"\nresumed on the other server {resumed:.2f} s after the kill")
    assert resumed < 5


@pytest.mark.parametrize("binlog", [False, True], ids=["fresh", "binlog"])
def test_given_the_tick_server_back_then_the_ticks_move_back_with_at_most_one_duplicate(
    tmp_path: Path, daemons: list[DaemonProcess], binlog: bool
) -> None:
    """The first server dies, the fleet fires on the second, the first returns (empty, or
    with its binlog and its old tick): the ticks move back, and across both servers every
    fire time is there, at most one of them twice (the fire a daemon was holding on the
    second server when the first returned), with the same id."""
    store = tmp_path / "binlog"
    store.mkdir()
    with (
        BeanstalkdProcess(binlog_dir=store if binlog else None, fsync_ms=0) as first,
        BeanstalkdProcess() as second,
    ):
        config = tmp_path / "w.toml"
        config.write_text(
            f'[worker]\nservers = ["{first.address}", "{second.address}"]\n'
            '[[pool]]\ntubes = ["unused"]\n'
            '[[schedule]]\nname = "fires"\nevery = "1s"\ntube = "fires"\ntask = "noop"\n'
            'misfire = "catch_up"\n'
        )
        fleet = [DaemonProcess(config, tmp_path) for _ in range(3)]
        for daemon in fleet:
            daemons.append(daemon.start())

        def put(server: BeanstalkdProcess) -> int:
            with greenstalk.Client((server.host, server.port)) as client:
                try:
                    return int(client.stats_tube("fires")["total-jobs"])
                except greenstalk.NotFoundError:
                    return 0

        wait_until_sync(lambda: put(first) >= 3, timeout=30, what="fires on the first")
        first.kill9()
        wait_until_sync(lambda: put(second) >= 4, timeout=30, what="fires on the second")
        first.restart()  # the same port (and binlog, when it has one)
        at_return = put(second)
        wait_until_sync(lambda: put(first) >= 8, timeout=30, what="fires on the first again")
        for daemon in fleet:
            daemon.signal(signal.SIGTERM)
        for daemon in fleet:
            assert daemon.wait(timeout=30) == 0
        with greenstalk.Client((first.host, first.port)) as client:
            on_first = _drain(client, "fires")
        with greenstalk.Client((second.host, second.port)) as client:
            on_second = _drain(client, "fires")
    times = sorted(on_first + on_second)
    twice = sorted(t for t in set(times) if times.count(t) > 1)
    print(
        f"\nfirst {len(on_first)}, second {len(on_second)} ({at_return} when the first came "
        f"back), twice: {len(twice)}"
    )
    assert len(twice) <= 1, twice
    assert sorted(set(times)) == [times[0] + n for n in range(len(set(times)))], "a gap"


def test_given_the_holder_stopped_silently_then_another_takes_the_tick_after_its_ttr(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    config = _config(tmp_path / "w.toml", beanstalkd)
    fleet = [DaemonProcess(config, tmp_path) for _ in range(2)]
    for daemon in fleet:
        daemons.append(daemon.start())
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        wait_until_sync(lambda: _put_so_far(client) >= 3, timeout=30, what="first fires")
        for attempt in range(1, _B1_ROUNDS + 1):
            # Given the daemon that fired last stopped (SIGSTOP: its connections stay open)
            latest = max(fleet, key=lambda d: max((e["timestamp"] for e in _fired(d)), default=""))
            other = fleet[1 - fleet.index(latest)]
            latest.signal(signal.SIGSTOP)
            stopped = time.time()
            # Then the other daemon takes the schedule on after the tick's TTR (10 s; twice
            # if the stopped daemon's blocked reserve was handed the tick first)
            seen = len(_fired(other))
            try:
                wait_until_sync(
                    lambda o=other, n=seen: len(_fired(o)) >= n + 3,
                    timeout=45,
                    what="fires by the other",
                )
                break
            except AssertionError:
                stuck = _ticks_past_their_ttr(client)
                if not stuck or attempt == _B1_ROUNDS:
                    raise  # not beanstalkd's lost expiry: ours
            # beanstalkd 1.12 lost the tick's TTR expiry behind the silent holder
            # (docs/beanstalkd.md#b1, a server bug the daemon cannot see from outside):
            # the holder, running again, gives the tick back; then the same again.
            print(f"\nround {attempt}: beanstalkd kept {stuck} reserved past its TTR (B1)")
            latest.signal(signal.SIGCONT)
            wait_until_sync(lambda: not _ticks_past_their_ttr(client), timeout=30, what="B1 over")
            target = _put_so_far(client) + 2
            wait_until_sync(
                lambda t=target: _put_so_far(client) >= t, timeout=30, what="fires again"
            )
        taken = time.time() - stopped
        # and the stopped one, running again, puts nothing twice
        latest.signal(signal.SIGCONT)
        target = _put_so_far(client) + 3
        wait_until_sync(lambda: _put_so_far(client) >= target, timeout=20, what="fires after")
        for daemon in fleet:
            daemon.signal(signal.SIGTERM)
        for daemon in fleet:
            assert daemon.wait(timeout=30) == 0
        times = _drain(client, "fires", "every-second")
    assert len(times) == len(set(times))
    assert times == [times[0] + n for n in range(len(times))]
    print(f"\ntaken over {taken:.1f} s after SIGSTOP of the daemon that fired last")
    assert taken < 20
