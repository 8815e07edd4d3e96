"""The daemon as users run it: `python -m tubeworker run` in a subprocess, stopped by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until_sync

REPO = Path(__file__).resolve().parents[2]


class DaemonProcess:
    def __init__(self, config: Path, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.stdout = workdir / f"daemon-{time.monotonic_ns()}.out"
        self.stderr = self.stdout.with_suffix(".err")
        self.runlog = workdir / "runlog"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TUBEWORKER_TEST_RUNLOG": str(self.runlog),
            "TUBEWORKER_LOG_FORMAT": "json",
            **(env or {}),
        }
        if "NOTIFY_SOCKET" not in (env or {}):
            self.env.pop("NOTIFY_SOCKET", None)  # never talk to a systemd running the tests
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, new_session: bool = False) -> DaemonProcess:
        """``new_session``: its own process group, as under systemd or supervisor, so a
        test can signal the whole group (``signal_group``)."""
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tubeworker", "run", "-c", str(self.config), *args],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=new_session,
            )
        return self

    def signal_group(self, signum: int) -> None:
        os.killpg(self.pid, signum)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        lines = self.stdout.read_text().splitlines() if self.stdout.exists() else []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early: {self.stderr.read_text()}")
            return any(e.get("event") == "ready" for e in self.events())

        wait_until_sync(ready, timeout=timeout, what="the daemon's ready line")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Teardown: make sure it is gone (SIGKILL if it does not drain in 10 s), and with
        it every process it started (compute workers)."""
        if self.proc is None:
            return
        children = self.children  # before it exits: then they are re-parented
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a test may have stopped it
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    @property
    def children(self) -> list[int]:
        """PIDs whose parent is the daemon (read from /proc; empty once it has exited and
        they were reaped or re-parented)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if self.proc is not None and int(fields[1]) == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def runs(self, event: str) -> Counter[int]:
        if not self.runlog.exists():
            return Counter()
        counts: Counter[int] = Counter()
        for line in self.runlog.read_text().splitlines():
            kind, _, n = line.partition(" ")
            if kind == event:
                counts[int(n)] += 1
        return counts
