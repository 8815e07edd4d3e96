"""`tubeworker top` as operators run it: against a real daemon (`tubeworker run --control`)
and a real beanstalkd; once as a plain command (`--once`), once under a real terminal (tmux,
its screen read with `capture-pane`)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import greenstalk
import httpx
import pytest
import trio

from tests.e2e.test_control_plane import metrics, start_with_control, value
from tests.e2e.test_daemon_process import put_jobs
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.httpserver import Reply, open_http_api
from tests.support.process import REPO, DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow


def top_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tubeworker", "top", *args]


def deleted(base: str) -> int:
    return int(httpx.get(f"{base}/status", timeout=5).json()["counters"]["deleted"])


def row(screen: str, name: str) -> list[str] | None:
    """The cells of the table row of a tube (``name``) or a handler (``  name``)."""
    for line in screen.splitlines():
        if line.startswith(f"  {name} "):
            return line.split()
    return None


def test_given_a_daemon_that_did_jobs_then_top_once_prints_it_and_its_tube(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    daemon, base = start_with_control(beanstalkd, tmp_path, daemons, concurrency=4)
    put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 0} for n in range(12)])
    wait_until_sync(lambda: deleted(base) == 12, timeout=20, what="12 jobs done")

    done = subprocess.run(
        top_command("--once", base), capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0].startswith("tubeworker top  1 daemon  every 1s  ")
    assert lines[2].startswith(f"{base}  pid {daemon.pid}  running  jobs 0  lanes 1/1  up ")
    assert lines[3].startswith("  pool pool0            tubes e2e ")
    # DONE, then no rates (no events stream in a snapshot), FLIGHT, READY, BURIED, BACKLOG,
    # API; then the key to the columns.
    assert row(done.stdout, "e2e") == ["e2e", "12", "—", "—", "—", "—", "0", "0", "0", "0s", "—"]
    assert "key: DONE jobs deleted since the daemon started" in done.stdout
    assert row(done.stdout, "  sleepy") == ["sleepy", "12", "—", "—", "—", "—", "—"]

    # A daemon that is not there: shown with the error, exit 69, no traceback.
    nowhere = f"http://127.0.0.1:{free_port()}"
    partly = subprocess.run(
        top_command("--once", base, nowhere), capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert (partly.returncode, partly.stderr) == (69, "")
    assert f"{nowhere}  unreachable: ConnectError: Connection refused" in partly.stdout
    assert row(partly.stdout, "e2e") is not None


def test_given_a_pool_of_several_tubes_then_top_shows_each_tubes_jobs_in_flight_and_buried(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    # Given two tubes of one pattern pool: three jobs that take a minute (held while top
    # looks), one job with no handler (buried by the daemon, its reason recorded in
    # tubeworker.buried.job-a, a tube of tubeworker's own).
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as client:
        for tube, task in (("job-a", "sleepy"), ("job-a", "sleepy"), ("job-b", "sleepy"),
                           ("job-a", "no.such.task")):  # fmt: skip
            client.use(tube)
            client.put(json.dumps({"task": task, "payload": {"n": 0, "seconds": 60}}), ttr=120)
    _, base = start_with_control(
        beanstalkd, tmp_path, daemons, tubes=["job-*"], concurrency=4, drain_timeout=1
    )

    def settled() -> bool:
        status = httpx.get(f"{base}/status", timeout=5).json()
        buried = value(metrics(base), "tubeworker_tube_jobs", tube="job-a", state="buried")
        return status["in_flight_by_tube"] == {"job-a": 2, "job-b": 1} and buried == 1

    wait_until_sync(settled, timeout=20, what="3 jobs held, 1 buried and its depth polled")

    # When top takes a snapshot
    done = subprocess.run(
        top_command("--once", base), capture_output=True, text=True, timeout=30, cwd=REPO
    )

    # Then FLIGHT and BURIED are each tube's (FLIGHT was "—" for a pool of several tubes)
    assert (done.returncode, done.stderr) == (0, "")
    flight_ready_buried = slice(6, 9)
    assert (row(done.stdout, "job-a") or [])[flight_ready_buried] == ["2", "0", "1"]
    assert (row(done.stdout, "job-b") or [])[flight_ready_buried] == ["1", "0", "0"]
    assert "tubeworker." not in done.stdout.replace("tubeworker top", "")


async def test_given_urls_that_answer_but_are_not_control_planes_then_top_says_so_not_running() -> (
    None
):
    # Given a web server's 404 page and a service whose /status is some other JSON
    html = (("content-type", "text/html"),)
    with trio.fail_after(30):
        async with open_http_api() as web, open_http_api() as service:
            web.reply = Reply(404, html, b"<html><body><h1>Not Found</h1></body></html>")
            service.reply = Reply(200, (("content-type", "application/json"),), b'{"ok": true}')
            # When top takes a snapshot of both, and of a port nobody listens on
            nowhere = f"http://127.0.0.1:{free_port()}"
            done = await trio.run_process(
                top_command("--once", web.url, service.url, nowhere),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=REPO,
            )
    # Then each says what it answered, apart from the unreachable one; no table, exit 76
    lines = done.stdout.decode().splitlines()
    assert (done.returncode, done.stderr) == (76, b"")
    assert lines[1:] == [
        "",
        f"{web.url}  not a tubeworker control plane: /status answered 404 (text/html):"
        " <html><body><h1>Not Found</h1></body></html>",  # (this server sends no reason)
        "",
        f"{service.url}  not a tubeworker control plane: /status answered JSON without pid,"
        ' pools, counters: {"ok": true}',
        "",
        f"{nowhere}  unreachable: ConnectError: Connection refused",
    ]


# --------------------------------------------------------------------------- under a terminal


def _descendants(root: int) -> set[int]:
    """Every live process under ``root`` (read from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# Runs argv[2:] in the terminal's foreground with Ctrl-C as usual, itself deaf to it, and
# writes its exit status (negative: the signal that killed it) to argv[1].
_RECORD_EXIT = """\
import signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
code = subprocess.call(sys.argv[2:], preexec_fn=restore)
open(sys.argv[1], "w").write(str(code))
"""


class Tmux:
    """A tmux server of its own (its own socket and config), one detached 160x40 session."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.socket = f"tubeworker-top-{os.getpid()}-{time.monotonic_ns()}"
        self.config = workdir / "tmux.conf"
        # The pane stays when top exits, so its last screen can be read.
        self.config.write_text("set -g remain-on-exit on\nset -g status off\n")
        self.session = "top"
        self.pids: set[int] = set()
        self.status_file = workdir / "exit-status"

    def tmux(self, *args: str) -> str:
        command = [self.executable, "-u", "-L", self.socket, "-f", str(self.config), *args]
        return subprocess.run(
            command, check=True, capture_output=True, text=True, timeout=10
        ).stdout

    def start(self, command: list[str]) -> None:
        """Run ``command`` in the pane, its exit status written to ``status_file`` (tmux
        3.3 does not always learn the status of a pane's process)."""
        wrapped = [sys.executable, "-c", _RECORD_EXIT, str(self.status_file), *command]
        self.tmux(
            "new-session", "-d", "-s", self.session, "-x", "160", "-y", "40", "-c", str(REPO),
            "exec " + shlex.join(wrapped),
        )  # fmt: skip
        self.pids.add(int(self.display("#{pid}")))  # the server
        pane = int(self.display("#{pane_pid}"))
        self.pids |= {pane, *_descendants(pane)}

    def display(self, form: str) -> str:
        return self.tmux("display-message", "-p", "-t", self.session, form).strip()

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def close(self) -> None:
        """Always: the server goes, and every process it ran, by PID."""
        for pid in list(self.pids):
            self.pids |= _descendants(pid)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.tmux("kill-server")
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    executable = shutil.which("tmux")
    if executable is None:
        reason = "tmux is not installed (Debian: apt-get install -y tmux)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must have it: the terminal test cannot be skipped there")
        pytest.skip(reason)
    terminal = Tmux(executable, tmp_path)
    try:
        yield terminal
    finally:
        terminal.close()
        left = [pid for pid in terminal.pids if _alive(pid)]
        wait_until_sync(
            lambda: not any(_alive(pid) for pid in left), timeout=5, what="no process left"
        )


def test_given_a_terminal_then_top_redraws_live_counts_and_exits_0_on_ctrl_c(
    beanstalkd: BeanstalkdProcess,
    tmp_path: Path,
    daemons: list[DaemonProcess],
    tmux: Tmux,
) -> None:
    daemon, base = start_with_control(beanstalkd, tmp_path, daemons, concurrency=4)
    nowhere = f"http://127.0.0.1:{free_port()}"
    tmux.start(top_command("--interval", "0.5", base, nowhere))

    def shows_tube_and_events() -> bool:
        screen = tmux.screen()
        cells = row(screen, "e2e")
        return (
            cells is not None
            and f"{nowhere}  unreachable: ConnectError: Connection refused" in screen
            and "note: events: not connected" not in screen
        )

    wait_until_sync(shows_tube_and_events, timeout=20, what="the tube, live, on the screen")

    put_jobs(beanstalkd, "sleepy", [{"n": n, "seconds": 0} for n in range(10)])

    def counted() -> bool:
        cells = row(tmux.screen(), "e2e")
        # DONE from the daemon's counters; the 10 s rate from the events stream.
        return cells is not None and cells[1] == "10" and cells[2] not in ("—", "0.0")

    wait_until_sync(counted, timeout=20, what="10 jobs done and a rate on the screen")
    handler = row(tmux.screen(), "  sleepy")
    assert handler is not None
    assert handler[:2] == ["sleepy", "10"]
    assert "Traceback" not in tmux.screen()

    # The daemon goes away: shown as unreachable, then retried; top goes on.
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
    wait_until_sync(
        lambda: f"{base}  unreachable: " in tmux.screen(), timeout=20, what="the daemon gone"
    )

    tmux.tmux("send-keys", "-t", tmux.session, "C-c")

    wait_until_sync(tmux.status_file.exists, timeout=10, what="top's exit")
    assert tmux.status_file.read_text() == "0"
    assert "Traceback" not in tmux.screen()  # the alternate screen is left: the shell's is back
