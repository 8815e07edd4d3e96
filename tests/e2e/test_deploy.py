"""deploy/ run for real: the supervisor program under Debian's supervisord, the systemd unit
through `systemd-analyze verify`.

supervisord runs in the foreground with deploy/supervisor/tubeworker.conf, only its paths,
user and numprocs rewritten (tests/support/supervisor.py), against the test's beanstalkd.
The broker is read with greenstalk, an independent client; runs are counted through
TUBEWORKER_TEST_RUNLOG (tests/e2e/handlers.py), which supervisord's children inherit.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import greenstalk
import pytest

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.supervisor import (
    LogEvent,
    Supervisord,
    SupervisorMissing,
    find_supervisor,
    program_section,
)
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "tubeworker@.service"
WORKERS = [f"tubeworker:tubeworker_{i:02d}" for i in range(3)]


def _missing(reason: str) -> NoReturn:
    """Skip, or fail under CI, where the deploy files must be checked (as for beanstalkd)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must have it: deploy tests cannot be skipped there)")
    pytest.skip(reason)


def daemon_command(config: Path) -> str:
    """This repository's daemon, as the deployed file runs it: the venv's script."""
    script = Path(sys.executable).parent / "tubeworker"
    if script.exists():
        return f"{script} run -c {config}"
    return f"{sys.executable} -m tubeworker run -c {config}"


# --- the daemon's side: configs, jobs, run log -------------------------------------------


def write_config(
    path: Path, server: BeanstalkdProcess, *extra: str, drain_timeout: float = 1
) -> Path:
    lines = [
        "[worker]",
        f'servers = ["{server.address}"]',
        f"drain_timeout = {drain_timeout}",
        "[handlers]",
        '"sleepy" = "tests.e2e.handlers:sleepy"',
        '"crash_on" = "tests.e2e.handlers:crash_on"',
        "[[pool]]",
        'tubes = ["e2e"]',
        "concurrency = 5",
        *extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def put_jobs(server: BeanstalkdProcess, task: str, payloads: list[dict[str, Any]]) -> list[int]:
    with greenstalk.Client((server.host, server.port), use="e2e") as client:
        return [client.put(json.dumps({"task": task, "payload": p}), ttr=60) for p in payloads]


def job_states(server: BeanstalkdProcess, ids: list[int]) -> dict[int, str]:
    """id → state, or "deleted" when beanstalkd no longer has it."""
    states = {}
    with greenstalk.Client((server.host, server.port)) as client:
        for job_id in ids:
            try:
                states[job_id] = str(client.stats_job(job_id)["state"])
            except greenstalk.NotFoundError:
                states[job_id] = "deleted"
    return states


def all_deleted(server: BeanstalkdProcess, ids: list[int]) -> bool:
    return set(job_states(server, ids).values()) == {"deleted"}


def runs(runlog: Path, event: str) -> Counter[int]:
    counts: Counter[int] = Counter()
    if runlog.exists():
        for line in runlog.read_text().splitlines():
            kind, _, n = line.partition(" ")
            if kind == event:
                counts[int(n)] += 1
    return counts


def process_log(workdir: Path, process: str) -> list[dict[str, Any]]:
    """A worker's JSON lines, from the stdout_logfile supervisord writes for it."""
    path = workdir / f"{process.split(':')[-1]}.log"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# --- supervisord -------------------------------------------------------------------------


@pytest.fixture
def supervisors() -> Iterator[list[Supervisord]]:
    """Every supervisord a test starts is stopped by PID at teardown, with its children."""
    try:
        find_supervisor()
    except SupervisorMissing as exc:
        _missing(str(exc))
    started: list[Supervisord] = []
    yield started
    for supervisord in started:
        supervisord.stop()


def start_supervisord(supervisors: list[Supervisord], workdir: Path, programs: str) -> Supervisord:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),  # for tests.e2e.handlers
        "TUBEWORKER_TEST_RUNLOG": str(workdir / "runlog"),
    }
    supervisord = Supervisord(workdir, programs, env=env)
    supervisors.append(supervisord)
    return supervisord.start()


def pids(supervisord: Supervisord, names: list[str]) -> dict[str, int | None]:
    status = supervisord.status()
    return {name: status[name].pid for name in names}


def test_supervisor_processes_restarts_a_crash_stops_by_draining_and_starts_again(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, supervisors: list[Supervisord]
) -> None:
    # redelivery_limit 2: the job that kills its worker runs twice, then is buried.
    config = write_config(tmp_path / "w.toml", beanstalkd, "[pool.retry]", "redelivery_limit = 2")
    programs = program_section(command=daemon_command(config), log_dir=tmp_path, numprocs=3)
    supervisord = start_supervisord(supervisors, tmp_path, programs)
    runlog = tmp_path / "runlog"
    supervisord.wait_states("RUNNING", names=WORKERS)
    wait_until_sync(
        lambda: all(
            any(e.get("event") == "ready" for e in process_log(tmp_path, w)) for w in WORKERS
        ),
        timeout=20,
        what="a ready line from each of the 3 workers",
    )

    # 1. Jobs are processed, by all three processes.
    rng = random.Random(8)
    ids = put_jobs(
        beanstalkd, "sleepy", [{"n": n, "seconds": rng.uniform(0.05, 0.3)} for n in range(60)]
    )
    wait_until_sync(lambda: all_deleted(beanstalkd, ids), timeout=30, what="60 jobs deleted")
    assert set(runs(runlog, "end")) == set(range(60))
    for worker in WORKERS:
        done = [e for e in process_log(tmp_path, worker) if e.get("outcome") == "deleted"]
        assert done, f"{worker} finished no job"

    # 2. A worker that dies mid-job (exit 3) is restarted, twice; the job is buried, not lost.
    before = pids(supervisord, WORKERS)
    [crash_id] = put_jobs(beanstalkd, "crash_on", [{"n": 1000, "crash": True}])
    wait_until_sync(
        lambda: job_states(beanstalkd, [crash_id]) == {crash_id: "buried"},
        timeout=20,
        what="the crashing job buried",
    )
    assert runs(runlog, "start")[1000] == 2

    def crashes_restarted() -> bool:
        exits = [e for e in supervisord.events("exited") if e.name.startswith("tubeworker_")]
        states = {s.state for s in supervisord.status().values()}
        return (
            len(exits) == 2
            and len(supervisord.events("spawned")) == 3 + 2
            and states == {"RUNNING"}
        )

    wait_until_sync(crashes_restarted, what="both crashed workers restarted")
    crashes = [e for e in supervisord.events("exited") if e.name.startswith("tubeworker_")]
    assert [e.rest for e in crashes] == ["(exit status 3; not expected)"] * 2
    after = pids(supervisord, WORKERS)
    assert any(after[w] != before[w] for w in WORKERS), (before, after)
    more = put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 0.05} for n in range(100, 130)])
    wait_until_sync(lambda: all_deleted(beanstalkd, more), timeout=30, what="30 more jobs deleted")

    # 3. `supervisorctl stop` drains: SIGTERM, running jobs finish or go back to ready.
    # Three jobs outlast drain_timeout (1 s) and are returned at its deadline.
    long = put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 8} for n in range(200, 203)])
    short = put_jobs(
        beanstalkd, "sleepy", [{"n": n, "seconds": rng.uniform(0.2, 0.6)} for n in range(300, 360)]
    )
    wait_until_sync(
        lambda: (
            set(range(200, 203)) <= set(runs(runlog, "start"))
            and len(set(range(300, 360)) & set(runs(runlog, "end"))) >= 10
        ),
        timeout=20,
        what="the long jobs running and some short ones done",
    )
    running = pids(supervisord, WORKERS)
    stopped_at = time.monotonic()
    stop = supervisord.ctl("stop", "tubeworker:*")
    took = time.monotonic() - stopped_at
    assert stop.returncode == 0, stop
    assert all(f"{w}: stopped" in stop.stdout for w in WORKERS), stop.stdout
    assert took < 10, f"stop took {took:.1f} s: drain_timeout is 1 s"
    assert {s.state for s in supervisord.status().values()} == {"STOPPED"}
    stops = {e.name: e.rest for e in supervisord.events("stopped")}
    assert stops == {w.split(":")[1]: "(exit status 0)" for w in WORKERS}  # drained, not killed

    states = job_states(beanstalkd, long + short)
    assert set(states.values()) <= {"deleted", "ready"}  # nothing reserved, nothing missing
    numbers = dict(zip(long + short, [*range(200, 203), *range(300, 360)], strict=True))
    started, ended = runs(runlog, "start"), runs(runlog, "end")
    for job_id, n in numbers.items():
        if n in ended:
            assert states[job_id] == "deleted", n
        else:  # never started, or started and returned by the drain
            assert states[job_id] == "ready", n
    assert all(states[job_id] == "ready" for job_id in long)
    assert all(started[n] == 1 and n not in ended for n in range(200, 203))
    returned = [
        e
        for w in WORKERS
        for e in process_log(tmp_path, w)
        if e.get("outcome") == "returned" and e.get("cause") == "drain_deadline"
    ]
    assert sorted(e["job_id"] for e in returned) == sorted(long)

    # 4. `supervisorctl start` brings the three back, and they take up the rest.
    start = supervisord.ctl("start", "tubeworker:*")
    assert start.returncode == 0, start
    back = supervisord.wait_states("RUNNING", names=WORKERS)
    assert all(back[w].pid not in (None, running[w]) for w in WORKERS)
    wait_until_sync(
        lambda: all_deleted(beanstalkd, short), timeout=30, what="the short jobs deleted"
    )
    wait_until_sync(
        lambda: all(runs(runlog, "start")[n] == 2 for n in range(200, 203)),
        what="the returned long jobs running again",
    )


def test_supervisor_restarts_a_recycling_worker_but_not_a_bad_config(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, supervisors: list[Supervisord]
) -> None:
    good = write_config(tmp_path / "w.toml", beanstalkd, "[recycle]", "max_jobs = 5")
    bad = write_config(tmp_path / "bad.toml", beanstalkd, "no_such_key = 1")
    programs = program_section(command=daemon_command(good), log_dir=tmp_path, numprocs=3)
    programs += program_section(
        command=daemon_command(bad), log_dir=tmp_path, numprocs=1, name="badconfig"
    )
    supervisord = start_supervisord(supervisors, tmp_path, programs)
    runlog = tmp_path / "runlog"

    # The bad config exits 78 at once, and that is final: EXITED, expected, one spawn.
    supervisord.wait_states("EXITED", names=["badconfig:badconfig_00"])
    assert supervisord.events("exited", "badconfig_00")[0].rest == "(exit status 78; expected)"
    reason = (tmp_path / "badconfig_00.log").read_text()
    assert "bad config" in reason, reason
    assert "no_such_key" in reason, reason
    supervisord.wait_states("RUNNING", names=WORKERS)

    # Each worker exits 0 after 5 jobs (and its drain): every exit is restarted at once.
    ids = put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 0.02} for n in range(60)])
    wait_until_sync(lambda: all_deleted(beanstalkd, ids), timeout=30, what="60 jobs deleted")
    assert set(runs(runlog, "end")) == set(range(60))

    def recycles() -> tuple[list[LogEvent], list[LogEvent], list[dict[str, Any]]]:
        exits = [e for e in supervisord.events("exited") if e.name.startswith("tubeworker_")]
        spawned = [e for e in supervisord.events("spawned") if e.name.startswith("tubeworker_")]
        stopped = [
            e
            for w in WORKERS
            for e in process_log(tmp_path, w)
            if e.get("event") == "stopped" and "max_jobs" in str(e.get("reason"))
        ]
        return exits, spawned, stopped

    def settled() -> bool:  # every recycle's exit seen and restarted, every worker up
        exits, spawned, stopped = recycles()
        states = {supervisord.status()[w].state for w in WORKERS}
        return (
            len(spawned) == 3 + len(exits) and len(stopped) == len(exits) and states == {"RUNNING"}
        )

    wait_until_sync(settled, what="every recycled worker restarted")
    exits, spawned, _ = recycles()
    assert len(exits) >= 60 // 5 // 2, exits  # (a drain may finish a few more than 5 jobs)
    assert {e.rest for e in exits} == {"(exit status 0; not expected)"}
    assert supervisord.events("gave up") == []  # no recycle was taken for a failed start

    # supervisord respawned workers many times after the bad config's exit: it had every
    # chance to restart that one too, and did not.
    bad_exit = supervisord.events("exited", "badconfig_00")[0].line
    assert sum(e.line > bad_exit for e in spawned) >= 3
    assert len(supervisord.events("spawned", "badconfig_00")) == 1
    assert supervisord.status()["badconfig:badconfig_00"].state == "EXITED"


# --- systemd -----------------------------------------------------------------------------


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or (
        "/usr/bin/systemd-analyze" if os.access("/usr/bin/systemd-analyze", os.X_OK) else None
    )
    if found is None:
        _missing(
            "systemd-analyze is not installed: `make test` installs Debian's systemd package "
            "(`apt-get install -y systemd`; it need not run), or install it yourself"
        )
    return found


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    return subprocess.run(
        [systemd_analyze(), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The unit, with ExecStart pointing at this venv's tubeworker (verify checks that the
    binary exists and is executable; /opt/tubeworker is not on a test machine)."""
    probe = tmp_path / "probe" / "probe.service"
    probe.parent.mkdir()
    probe.write_text("[Service]\nExecStart=/bin/true\n")
    result = analyze("verify", "--man=no", str(probe))
    if result.returncode != 0 or result.stderr.strip():
        _missing(f"systemd-analyze verify cannot run here: {result.stderr.strip() or result}")

    text = UNIT.read_text()
    script = Path(sys.executable).parent / "tubeworker"
    assert script.exists(), script
    text, count = re.subn(
        r"^ExecStart=/opt/tubeworker/bin/tubeworker ", f"ExecStart={script} ", text, flags=re.M
    )
    assert count == 1, "the unit's ExecStart= is not /opt/tubeworker/bin/tubeworker run ..."
    folder = tmp_path / "units"
    folder.mkdir()
    (folder / UNIT.name).write_text(text)
    return folder


def verify_complaints(unit: Path) -> tuple[int, list[str]]:
    """`systemd-analyze verify` of instance ``io`` of the template: exit code and the lines
    about our unit (warnings such as an unknown key do not change the exit code)."""
    instance = unit.parent / unit.name.replace("@.", "@io.")
    result = analyze("verify", "--man=no", str(instance))
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if "tubeworker" in line]


def test_systemd_unit_passes_systemd_analyze_verify(unit_dir: Path) -> None:
    unit = unit_dir / UNIT.name
    assert verify_complaints(unit) == (0, [])

    # The check is live: it does report a bad key in this template, and the deployed
    # ExecStart where its binary is missing.
    broken = unit_dir / "broken" / UNIT.name
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("[Service]\n", "[Service]\nNoSuchKey=1\n", 1))
    code, complaints = verify_complaints(broken)
    assert any("Unknown key" in line and "NoSuchKey" in line for line in complaints), complaints
    original = unit_dir / "original" / UNIT.name
    original.parent.mkdir()
    shutil.copy(UNIT, original)
    code, complaints = verify_complaints(original)
    assert code != 0
    assert any("/opt/tubeworker/bin/tubeworker" in line for line in complaints), complaints


def test_systemd_unit_hardening_exposure(unit_dir: Path) -> None:
    """`systemd-analyze security --offline`: the unit's sandboxing, scored (0 best, 10 worst)."""
    instance = unit_dir / UNIT.name.replace("@.", "@io.")
    result = analyze("security", "--offline=true", "--no-pager", str(instance))
    match = re.search(r"Overall exposure level for tubeworker@io\.service: ([\d.]+)", result.stdout)
    if match is None:
        _missing(f"systemd-analyze security --offline gave no score: {result.stderr.strip()}")
    assert float(match.group(1)) <= 2.5, result.stdout[-2000:]
