"""`tubeworker run` as a subprocess against a real beanstalkd: signals, exit codes, crashes.

The broker is read with greenstalk, an independent client.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import greenstalk
import httpx
import pytest

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import REPO, DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow


def write_config(path: Path, server: BeanstalkdProcess, **pool: object) -> Path:
    settings = {"tubes": ["e2e"], "concurrency": 10, **pool}
    retry = settings.pop("retry", {})
    lines = [
        "[worker]",
        f'servers = ["{server.address}"]',
        f"drain_timeout = {settings.pop('drain_timeout', 5)}",
        "[logging]",
        'format = "json"',
        "[handlers]",
        '"sleepy" = "tests.e2e.handlers:sleepy"',
        '"crash_on" = "tests.e2e.handlers:crash_on"',
        "[[pool]]",
        *(f"{key} = {json.dumps(value)}" for key, value in settings.items()),
        "[pool.retry]",
        *(f"{key} = {json.dumps(value)}" for key, value in retry.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def start(daemons: list[DaemonProcess], config: Path, tmp_path: Path) -> DaemonProcess:
    daemon = DaemonProcess(config, tmp_path).start()
    daemons.append(daemon)
    return daemon


def put_jobs(server: BeanstalkdProcess, task: str, payloads: list[dict[str, object]]) -> list[int]:
    with greenstalk.Client((server.host, server.port), use="e2e") as client:
        return [client.put(json.dumps({"task": task, "payload": p}), ttr=60) for p in payloads]


def tube_stats(server: BeanstalkdProcess) -> dict[str, int]:
    with greenstalk.Client((server.host, server.port)) as client:
        stats = client.stats_tube("e2e")
    return {k: int(v) for k, v in stats.items() if isinstance(v, int)}


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


def test_sigterm_drains_running_jobs_and_exits_0(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    rng = random.Random(3)
    payloads = [{"n": n, "seconds": round(rng.uniform(0.5, 3.0), 2)} for n in range(60)]
    ids = put_jobs(beanstalkd, "sleepy", payloads)
    config = write_config(tmp_path / "w.toml", beanstalkd, concurrency=20, drain_timeout=5)
    daemon = start(daemons, config, tmp_path)
    daemon.wait_ready()
    wait_until_sync(lambda: len(daemon.runs("start")) >= 20, what="20 running jobs")

    daemon.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert daemon.wait(timeout=15) == 0
    assert time.monotonic() - stopped_at <= 5 + 1

    states = job_states(beanstalkd, ids)
    assert set(states.values()) <= {"deleted", "ready"}  # none reserved, none missing
    started, ended = daemon.runs("start"), daemon.runs("end")
    assert started == ended  # every job that started finished (handlers <= 3 s < 5 s drain)
    deleted = {n for n, job_id in enumerate(ids) if states[job_id] == "deleted"}
    assert deleted == set(ended)
    assert any(e.get("event") == "draining" for e in daemon.events())


def test_second_sigterm_returns_running_jobs_at_once(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    ids = put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 60} for n in range(5)])
    config = write_config(tmp_path / "w.toml", beanstalkd, concurrency=5, drain_timeout=60)
    daemon = start(daemons, config, tmp_path)
    daemon.wait_ready()
    wait_until_sync(lambda: len(daemon.runs("start")) == 5, what="5 running jobs")

    daemon.signal(signal.SIGTERM)
    wait_until_sync(
        lambda: any(e.get("event") == "draining" for e in daemon.events()), what="draining"
    )
    daemon.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert daemon.wait(timeout=15) == 0
    assert time.monotonic() - stopped_at < 3
    assert set(job_states(beanstalkd, ids).values()) == {"ready"}


def test_sigint_drains_without_a_traceback(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    ids = put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 0.5} for n in range(10)])
    config = write_config(tmp_path / "w.toml", beanstalkd, concurrency=5, drain_timeout=5)
    daemon = start(daemons, config, tmp_path)
    daemon.wait_ready()
    wait_until_sync(lambda: len(daemon.runs("start")) >= 5, what="running jobs")
    daemon.signal(signal.SIGINT)
    assert daemon.wait(timeout=15) == 0
    assert "Traceback" not in daemon.stderr.read_text()
    assert set(job_states(beanstalkd, ids).values()) <= {"deleted", "ready"}


def test_kill_9_under_load_then_restart_loses_nothing(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    total = 300
    rng = random.Random(9)
    payloads = [{"n": n, "seconds": round(rng.uniform(0.01, 0.2), 3)} for n in range(total)]
    ids = put_jobs(beanstalkd, "sleepy", payloads)
    config = write_config(tmp_path / "w.toml", beanstalkd, concurrency=20)
    first = start(daemons, config, tmp_path)
    first.wait_ready()
    wait_until_sync(lambda: len(first.runs("end")) >= 50, what="some finished jobs")
    first.signal(signal.SIGKILL)
    first.wait(timeout=5)
    in_flight_at_kill = len(first.runs("start") - first.runs("end"))

    second = start(daemons, config, tmp_path)
    second.wait_ready()
    wait_until_sync(
        lambda: set(job_states(beanstalkd, ids).values()) == {"deleted"},
        timeout=60,
        what="every job deleted",
    )
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=15) == 0

    ended = second.runs("end")  # the run log is shared by both processes
    assert set(ended) == set(range(total))  # nothing lost
    duplicates = sum(count - 1 for count in ended.values())
    # Only a job whose handler finished but whose delete never went out can run twice.
    assert duplicates <= in_flight_at_kill


def test_job_that_kills_the_worker_is_buried_after_the_redelivery_limit(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    payloads: list[dict[str, object]] = [{"n": n} for n in range(20)]
    payloads[0]["crash"] = True
    ids = put_jobs(beanstalkd, "crash_on", payloads)
    # One lane, so only the poison job is in flight when the process dies.
    config = write_config(
        tmp_path / "w.toml", beanstalkd, concurrency=1, retry={"redelivery_limit": 2}
    )
    exits: list[int] = []
    for _ in range(6):  # the restart loop systemd or supervisor would be
        daemon = start(daemons, config, tmp_path)

        def crashed_or_done(d: DaemonProcess = daemon) -> bool:
            assert d.proc is not None
            crashed = d.proc.poll() is not None
            return crashed or set(job_states(beanstalkd, ids).values()) == {"deleted", "buried"}

        wait_until_sync(crashed_or_done, timeout=30, what="a crash, or every job settled")
        assert daemon.proc is not None
        if daemon.proc.poll() is None:
            daemon.signal(signal.SIGTERM)
            exits.append(daemon.wait(timeout=15))
            break
        exits.append(daemon.proc.returncode)
    states = job_states(beanstalkd, ids)
    assert states[ids[0]] == "buried"
    assert set(list(states.values())[1:]) == {"deleted"}
    assert daemon.runs("start")[0] == 2  # ran twice (two crashes), then never again
    assert exits.count(3) == 2
    assert exits[-1] == 0


def test_given_routine_stops_past_the_drain_deadline_then_healthy_jobs_are_not_poison(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    # A rolling deploy whose grace period is shorter than the jobs, four times over: each
    # stop returns every running job at the drain deadline. Those returns were the
    # daemon's choice, on record in beanstalkd: no job is buried as poison (the limit is 3).
    ids = put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 5} for n in range(20)])
    config = write_config(tmp_path / "w.toml", beanstalkd, concurrency=20, drain_timeout=1)
    stops = 4
    for stop in range(stops):
        daemon = start(daemons, config, tmp_path)

        def all_started(d: DaemonProcess = daemon, wanted: int = 20 * (stop + 1)) -> bool:
            return sum(d.runs("start").values()) >= wanted

        wait_until_sync(all_started, what="every job running")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
        returned = [e for e in daemon.events() if e.get("cause") == "drain_deadline"]
        assert len(returned) == 20
    daemon = start(daemons, config, tmp_path)  # the deploy is done: this one is left alone
    wait_until_sync(
        lambda: set(job_states(beanstalkd, ids).values()) == {"deleted"},
        timeout=30,
        what="every job done",
    )
    assert sorted(daemon.runs("end")) == list(range(20))
    assert not [e for d in daemons for e in d.events() if e.get("event") == "job buried"]
    assert set(daemon.runs("start").values()) == {stops + 1}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tubeworker", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[[pool]]\ntubes = ["a"]\nconcurrency = "lots"\n', "pool[0].concurrency"),
        ('[worker]\ndrain_timout = 5\n[[pool]]\ntubes = ["a"]\n', "did you mean 'drain_timeout'"),
        ('[[pool]]\ntubes = ["bad name"]\n', "pool[0].tubes"),
        ('[[pool]]\ntubes = ["a"]\nhandler = "nope"\n', "no handler named 'nope'"),
        ("[[pool]\n", "not valid TOML"),
    ],
)
def test_bad_config_exits_78_naming_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    for command in ("run", "check"):
        result = run_cli(command, "-c", str(config))
        assert result.returncode == 78, result.stderr
        assert str(config) in result.stderr
        assert expected in result.stderr


def test_a_config_file_not_in_utf8_is_one_line_and_exit_78(tmp_path: Path) -> None:
    # Given a config saved as Latin-1 (not UTF-8, which TOML requires)
    config = tmp_path / "latin1.toml"
    config.write_bytes('[[pool]]\ntubes = ["café"]\n'.encode("latin-1"))
    for command in ("run", "check"):
        # When the daemon or check reads it
        result = run_cli(command, "-c", str(config))
        # Then one line naming the file and where, and 78 (a supervisor does not restart)
        assert result.returncode == 78, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert str(config) in result.stderr
        assert "not UTF-8" in result.stderr
        assert "byte offset 22 (line 2)" in result.stderr


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    config = tmp_path / "ok.toml"
    config.write_text('[[pool]]\ntubes = ["a"]\n')
    import os

    env = {**os.environ, "TUBEWORKER_CONCURRENCY": "many"}
    result = run_cli("check", "-c", str(config), env=env)
    assert result.returncode == 78
    assert "environment TUBEWORKER_CONCURRENCY" in result.stderr


def test_check_and_handlers_commands(tmp_path: Path) -> None:
    config = tmp_path / "ok.toml"
    config.write_text('[[pool]]\ntubes = ["emails", "tenant-*"]\nconcurrency = 3\n')
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "tenant-*" in result.stdout
    assert "concurrency: 3 jobs at once (io profile) on 1 connection of up to 50 jobs" in (
        result.stdout
    )
    handlers = run_cli("handlers")
    assert handlers.returncode == 0
    for name in ("demo.echo", "demo.sleep", "demo.fail", "demo.flaky"):
        assert name in handlers.stdout


THREE_MISTAKES = """
[worker]
drain_timout = 5
[handlers]
"good" = "tests.e2e.handlers:sleepy"
"missing" = "no_such_module_for_tubeworker:run"
[[pool]]
tubes = ["a"]
concurrency = "lots"
"""


def test_check_lists_every_problem_in_one_run(tmp_path: Path) -> None:
    # Given a config with three mistakes, one of them a [handlers] entry that cannot load
    config = tmp_path / "three.toml"
    config.write_text(THREE_MISTAKES)
    for command in ("check", "run"):
        # When it is checked (or run)
        result = run_cli(command, "-c", str(config))
        # Then all three, one a line, naming the file and the key; exit 78
        assert result.returncode == 78, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 3, result.stderr
        for line, key in zip(
            lines, ("worker.drain_timout", "pool[0].concurrency", "handlers.missing"), strict=True
        ):
            assert line.startswith(f"tubeworker: bad config: {config}: {key}: "), line


def test_handlers_lists_a_config_entry_that_cannot_load_as_broken(tmp_path: Path) -> None:
    # Given a [handlers] table with one good entry and two bad ones
    config = tmp_path / "handlers.toml"
    config.write_text(
        "[handlers]\n"
        '"good" = "tests.e2e.handlers:sleepy"\n'
        '"missing" = "no_such_module_for_tubeworker:run"\n'
        '"malformed" = "nocolon"\n'
        "[[pool]]\n"
        'tubes = ["a"]\n'
    )
    # When the handlers are listed with that config
    result = run_cli("handlers", "-c", str(config))
    # Then every handler is listed, the bad ones as BROKEN with their error...
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "demo.echo" in rows
    assert "BROKEN" not in rows["good"]
    assert "(config)" in rows["good"]
    assert "BROKEN: ModuleNotFoundError" in rows["missing"]
    assert "BROKEN: must be 'module:function'" in rows["malformed"]
    # ...and exit 78, as `run` would refuse this config, each problem one line on stderr
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    problems = result.stderr.splitlines()
    assert len(problems) == 2, result.stderr
    assert all(line.startswith(f"tubeworker: bad config: {config}: handlers.") for line in problems)
    assert "--config" in run_cli("handlers", "--help").stdout
    assert "78" in run_cli("handlers", "--help").stdout


def test_check_shows_the_control_plane(tmp_path: Path) -> None:
    config = tmp_path / "control.toml"
    config.write_text('[[pool]]\ntubes = ["a"]\n')
    # Given no control plane: check says so
    off = run_cli("check", "-c", str(config))
    assert off.returncode == 0, off.stderr
    assert "control: off" in off.stdout

    # Given a listen address, a token file and allowed host names
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config.write_text(
        '[[pool]]\ntubes = ["a"]\n'
        "[control]\n"
        'listen = "127.0.0.1:9191"\n'
        f'token_file = "{token}"\n'
        'allowed_hosts = ["workers.example", "Ops.Example"]\n'
    )
    on = run_cli("check", "-c", str(config))
    assert on.returncode == 0, on.stderr
    lines = on.stdout.splitlines()
    assert "control: 127.0.0.1:9191 (metrics, health, status, events, dashboard)" in lines
    assert f"  token file: {token} (readable): POST /quiet, /resume and /drain need its token" in (
        lines
    )
    assert any(
        line.startswith("  allowed_hosts: workers.example, ops.example ") for line in lines
    ), on.stdout
    assert "s3cret" not in on.stdout

    # Given an empty token file: every action would be refused, and check says so
    token.write_text("")
    empty = run_cli("check", "-c", str(config))
    assert f"  token file: {token} (readable, empty): " in empty.stdout
    assert "always refused (401)" in empty.stdout

    # Given a token file that cannot be read: a problem, not a crash at start
    token.unlink()
    token.mkdir()
    unreadable = run_cli("check", "-c", str(config))
    assert unreadable.returncode == 78
    assert f"{config}: control.token_file: cannot read {token}" in unreadable.stderr


def test_run_takes_the_control_token_file_from_a_flag_over_the_environment(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    # Given a token file named by the flag and another by the environment
    flag_token, env_token = tmp_path / "flag-token", tmp_path / "env-token"
    flag_token.write_text("from-the-flag\n")
    env_token.write_text("from-the-env\n")
    config = write_config(tmp_path / "w.toml", beanstalkd)
    port = free_port()
    daemon = DaemonProcess(config, tmp_path, env={"TUBEWORKER_CONTROL_TOKEN_FILE": str(env_token)})
    daemons.append(
        daemon.start("--control", f"127.0.0.1:{port}", "--control-token-file", str(flag_token))
    )
    daemon.wait_ready()
    # When actions are called: then the flag's token authorises them, the variable's does not
    quiet = f"http://127.0.0.1:{port}/quiet"

    def post(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.post(quiet, headers=headers, timeout=5).status_code

    assert post("from-the-env") == 401
    assert post("from-the-flag") == 200


def _said(proc: subprocess.Popen[bytes], prefixes: tuple[str, ...], deadline: float) -> list[str]:
    """The rest of the first stderr line of ``proc`` starting with each of ``prefixes``
    (read as it comes, with a deadline)."""
    assert proc.stderr is not None
    buffered = b""
    while True:
        lines = buffered.decode(errors="replace").splitlines()
        found = [next((ln[len(p) :] for ln in lines if ln.startswith(p)), None) for p in prefixes]
        if all(rest is not None for rest in found):
            return [rest for rest in found if rest is not None]
        left = deadline - time.monotonic()
        assert left > 0, f"not all of {prefixes!r} said: {buffered.decode(errors='replace')}"
        ready, _, _ = select.select([proc.stderr], [], [], left)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 65536)
            assert chunk, f"stderr ended before {prefixes!r}: {buffered!r}"
            buffered += chunk


def test_dev_suggests_a_put_command_that_works(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUBEWORKER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tubeworker", "dev", "--log-format", "json"],
        cwd=tmp_path,  # not the repository: nothing of it on the path but the install
        env={**env, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server_pid = None
    try:
        started, suggestion = _said(
            proc,
            ("[tubeworker] private beanstalkd at ", "[tubeworker] put a job: "),
            time.monotonic() + 30,
        )
        match = re.fullmatch(r"(\S+) \(pid (\d+)\); Ctrl-C drains", started)
        assert match is not None, started
        address, server_pid = match[1], int(match[2])
        # Given the command dev suggests
        suggested = shlex.split(suggestion)
        assert suggested[:3] == ["tubeworker", "put", "default"]
        assert suggested[-2:] == ["--server", address]
        # When it is run (as the installed command would be)
        put = run_cli(*suggested[1:], env={**env, "PYTHONPATH": str(REPO)})
        assert put.returncode == 0, put.stderr
        job_id = int(put.stdout)
        # Then the daemon runs the job and deletes it
        host, port = address.rsplit(":", 1)
        with greenstalk.Client((host, int(port))) as client:

            def done() -> bool:
                try:
                    client.stats_job(job_id)
                except greenstalk.NotFoundError:
                    return True
                return False

            wait_until_sync(done, timeout=20, what="the suggested job done")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        if server_pid is not None:  # dev stops it; only a failed test may leave it
            with contextlib.suppress(ProcessLookupError):
                os.kill(server_pid, signal.SIGKILL)


def _next_stopping(sock: socket.socket) -> str:
    """The STOPPING=1 datagram (STATUS summaries may come before it)."""
    while True:
        message = sock.recv(4096).decode()
        if "STOPPING=1" in message:
            return message


def test_sd_notify_ready_status_and_stopping(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        config = write_config(tmp_path / "w.toml", beanstalkd, concurrency=2)
        daemon = DaemonProcess(config, tmp_path, env={"NOTIFY_SOCKET": str(path)})
        daemons.append(daemon.start())
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready
        assert "STATUS=running pools" in ready
        daemon.signal(signal.SIGTERM)
        _next_stopping(sock)
        assert daemon.wait(timeout=15) == 0


def test_given_jobs_on_one_connection_when_draining_then_the_log_and_status_count_jobs(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 2} for n in range(5)])
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        # 5 jobs at once on one connection (jobs_per_connection is 50).
        config = write_config(tmp_path / "w.toml", beanstalkd, concurrency=5)
        daemon = DaemonProcess(config, tmp_path, env={"NOTIFY_SOCKET": str(path)})
        daemons.append(daemon.start())
        assert "READY=1" in sock.recv(4096).decode()
        wait_until_sync(lambda: len(daemon.runs("start")) == 5, what="5 running jobs")
        daemon.signal(signal.SIGTERM)
        stopping = _next_stopping(sock)
        assert "5 jobs running" in stopping
        assert daemon.wait(timeout=15) == 0
    (draining,) = [e for e in daemon.events() if e.get("event") == "draining"]
    assert draining["jobs_running"] == 5


def test_given_the_process_stopped_and_continued_then_no_handler_is_blamed(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    config = write_config(tmp_path / "w.toml", beanstalkd, concurrency=2)
    daemon = start(daemons, config, tmp_path)
    daemon.wait_ready()
    daemon.signal(signal.SIGSTOP)
    time.sleep(2.5)  # the point of the test: time passes while the process is stopped
    daemon.signal(signal.SIGCONT)
    wait_until_sync(
        lambda: any(
            e.get("event", "").startswith("process was suspended") for e in daemon.events()
        ),
        what="the suspension warning",
    )
    (suspended,) = [e for e in daemon.events() if e["event"].startswith("process was suspended")]
    assert suspended["suspended_for"] >= 2
    assert not [e for e in daemon.events() if e["event"].startswith("event loop blocked")]
