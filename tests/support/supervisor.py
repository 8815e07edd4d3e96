"""Debian's supervisord, run for real in the foreground with a config in a test's folder.

`program_section` turns deploy/supervisor/tubeworker.conf into a section that runs this
repository's daemon: it rewrites only the paths (command, log file), the user (the deployed
file names a system user a test machine does not have) and `numprocs`, and keeps every
other line as it is, so the restart and stop policy under test is the deployed one.

`Supervisord` starts `supervisord -n` with its socket, pid file and logs in a test's folder,
drives it with `supervisorctl`, reads its log, and is stopped by PID (SIGTERM, waited for,
then SIGKILL for it and every process it started).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.waiting import wait_until_sync

__all__ = [
    "LogEvent",
    "ProgramState",
    "SupervisorMissing",
    "Supervisord",
    "find_supervisor",
    "program_section",
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY_CONF = REPO / "deploy" / "supervisor" / "tubeworker.conf"
DEPLOY_LOG_DIR = "/var/log/tubeworker/"


class SupervisorMissing(Exception):
    pass


def find_supervisor() -> tuple[str, str]:
    """Paths of supervisord and supervisorctl, or raise SupervisorMissing saying how."""
    found = []
    for name in ("supervisord", "supervisorctl"):
        path = shutil.which(name) or (
            f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
        )
        if path is None:
            raise SupervisorMissing(
                f"{name} is not installed: `make test` installs Debian's supervisor package "
                "(`apt-get install -y supervisor`), or install it yourself"
            )
        found.append(path)
    return found[0], found[1]


def program_section(
    *,
    command: str,
    log_dir: Path,
    numprocs: int,
    name: str = "tubeworker",
    source: Path = DEPLOY_CONF,
) -> str:
    """deploy/supervisor/tubeworker.conf with its paths, user and numprocs rewritten."""
    text = source.read_text()
    user = pwd.getpwuid(os.getuid()).pw_name

    def set_value(text: str, key: str, value: str) -> str:
        pattern = re.compile(rf"^{key}=.*$", re.MULTILINE)
        matches = pattern.findall(text)
        if len(matches) != 1:
            raise AssertionError(f"{source}: expected one `{key}=` line, found {matches}")
        return pattern.sub(lambda _: f"{key}={value}", text)

    text = set_value(text, "command", command)
    text = set_value(text, "numprocs", str(numprocs))
    text = set_value(text, "user", user)
    if text.count(DEPLOY_LOG_DIR) != 1:
        raise AssertionError(f"{source}: expected one log file under {DEPLOY_LOG_DIR}")
    text = text.replace(DEPLOY_LOG_DIR, f"{log_dir}/")
    if name != "tubeworker":
        text = text.replace("[program:tubeworker]", f"[program:{name}]")
    return text


@dataclass(frozen=True)
class ProgramState:
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, ...
    description: str

    @property
    def pid(self) -> int | None:
        match = re.match(r"pid (\d+),", self.description)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class LogEvent:
    line: int  # its line number in supervisord's log: the order of events
    event: str  # spawned, success, exited, stopped, gave up
    name: str  # the process name, e.g. tubeworker_01
    rest: str  # e.g. "(exit status 0; not expected)"


_LOG_EVENT = re.compile(
    r"^\S+ \S+ (?P<level>\w+) (?P<event>spawned|exited|stopped|gave up|success): '?"
    r"(?P<name>[\w.-]+)'?(?P<rest>.*)$"
)


class Supervisord:
    """``supervisord -n`` with everything it writes in ``workdir``; a context manager."""

    def __init__(self, workdir: Path, programs: str, *, env: dict[str, str]) -> None:
        self.supervisord, self.supervisorctl = find_supervisor()
        self.workdir = workdir
        self.socket = workdir / "supervisor.sock"
        if len(str(self.socket)) > 100:  # AF_UNIX paths are at most 107 bytes
            raise AssertionError(f"socket path too long for AF_UNIX: {self.socket}")
        self.log = workdir / "supervisord.log"
        self.conf = workdir / "supervisord.conf"
        self.conf.write_text(
            "\n".join(
                [
                    "[unix_http_server]",
                    f"file={self.socket}",
                    "chmod=0700",
                    "[supervisord]",
                    "nodaemon=true",
                    f"logfile={self.log}",
                    f"pidfile={workdir / 'supervisord.pid'}",
                    f"childlogdir={workdir}",
                    "loglevel=info",
                    "[rpcinterface:supervisor]",
                    "supervisor.rpcinterface_factory ="
                    " supervisor.rpcinterface:make_main_rpcinterface",
                    "[supervisorctl]",
                    f"serverurl=unix://{self.socket}",
                    "",
                    programs,
                ]
            )
        )
        self.env = {k: v for k, v in env.items() if k != "NOTIFY_SOCKET"}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Supervisord:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Supervisord:
        with open(self.workdir / "supervisord.out", "wb") as out:
            self.proc = subprocess.Popen(
                [self.supervisord, "-n", "-c", str(self.conf)],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"supervisord exited with {self.proc.returncode}: "
                    + (self.workdir / "supervisord.out").read_text()
                )
            return self.ctl("pid").stdout.strip() == str(self.proc.pid)

        wait_until_sync(answers, timeout=15, what="supervisord's control socket")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.supervisorctl, "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )

    def status(self) -> dict[str, ProgramState]:
        """``supervisorctl status``: ``group:name`` → state and description."""
        out = self.ctl("status").stdout
        states = {}
        for line in out.splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2 and ":" in parts[0]:
                states[parts[0]] = ProgramState(parts[1], parts[2] if len(parts) > 2 else "")
        return states

    def events(self, event: str | None = None, name: str | None = None) -> list[LogEvent]:
        """supervisord's log lines about its processes, in order, e.g. every ``exited``
        line with its ``(exit status 0; not expected)``."""
        if not self.log.exists():
            return []
        found = []
        for index, line in enumerate(self.log.read_text().splitlines()):
            match = _LOG_EVENT.match(line)
            if match and event in (None, match["event"]) and name in (None, match["name"]):
                found.append(LogEvent(index, match["event"], match["name"], match["rest"].strip()))
        return found

    def descendants(self) -> list[tuple[int, str]]:
        """(pid, start time) of every live process below supervisord."""
        parents: dict[int, list[tuple[int, str]]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parents.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[19]))
        found: list[tuple[int, str]] = []
        todo = [self.pid]
        while todo:
            for child in parents.get(todo.pop(), []):
                found.append(child)
                todo.append(child[0])
        return found

    def stop(self) -> None:
        """SIGTERM (supervisord stops its programs the configured way), waited for; then
        SIGKILL for it and for whatever it started that is still alive."""
        if self.proc is None:
            return
        children = self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid, started in children:
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                if fields[19] == started:  # the same process, not a reused PID
                    os.kill(pid, signal.SIGKILL)

    def wait_states(
        self, expected: dict[str, str] | str, *, names: list[str], timeout: float = 30
    ) -> dict[str, ProgramState]:
        """Wait until every program in ``names`` is in its expected state."""
        want = expected if isinstance(expected, dict) else dict.fromkeys(names, expected)
        seen: dict[str, ProgramState] = {}

        def reached() -> bool:
            nonlocal seen
            seen = self.status()
            return all(seen.get(n, ProgramState("?", "")).state == want[n] for n in names)

        try:
            wait_until_sync(reached, timeout=timeout, what=f"states {want}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status: {seen}") from None
        return seen
