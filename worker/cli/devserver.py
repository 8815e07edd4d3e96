"""A private beanstalkd on a free loopback port, owned by whoever started it.

Used by ``tubeworker dev``/``demo``, the test fixtures and the benchmark. Every process it
starts it stops by PID (SIGTERM, then SIGKILL); nothing is left running.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

__all__ = [
    "BeanstalkdMissing",
    "BeanstalkdProcess",
    "find_beanstalkd",
    "free_port",
    "open_private_beanstalkd",
]

_START_DEADLINE = 10.0


class BeanstalkdMissing(RuntimeError):
    pass


def find_beanstalkd() -> str:
    """Path of the beanstalkd binary, or raise BeanstalkdMissing saying how to get it."""
    found = shutil.which("beanstalkd") or next(
        (p for p in ("/usr/bin/beanstalkd", "/usr/sbin/beanstalkd") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        raise BeanstalkdMissing(
            "beanstalkd is not installed: `make test` installs it with "
            "`apt-get install -y beanstalkd` (Debian/Ubuntu), or install it yourself"
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(host: str, port: int) -> bool:
    """True once beanstalkd answers a command (a completed handshake is not enough: B2)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"list-tube-used\r\n")
            return s.recv(64).startswith(b"USING ")
    except OSError:
        return False


class BeanstalkdProcess:
    """One beanstalkd server. ``start()``, ``stop()``, ``kill9()``, ``restart()``, signals.

    ``binlog_dir`` turns on the binlog (``-b``); ``fsync_ms=0`` (the default here) makes
    every acknowledged write durable before the reply (``-f 0``).
    """

    def __init__(
        self,
        *,
        binlog_dir: Path | None = None,
        fsync_ms: int = 0,
        max_job_size: int | None = None,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.binary = find_beanstalkd()
        self.host = host
        self.port = port or free_port()
        self.binlog_dir = binlog_dir
        self.fsync_ms = fsync_ms
        self.max_job_size = max_job_size
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("beanstalkd is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        args = [self.binary, "-l", self.host, "-p", str(self.port)]
        if self.binlog_dir is not None:
            args += ["-b", str(self.binlog_dir), "-f", str(self.fsync_ms)]
        if self.max_job_size is not None:
            args += ["-z", str(self.max_job_size)]
        return args + list(self.extra_args)

    def start(self) -> BeanstalkdProcess:
        """Start and wait until it answers; on a port clash pick another port and retry."""
        for _ in range(5):
            if self._spawn():
                return self
            self.port = free_port()  # it exited: most likely the port was taken meanwhile
        raise RuntimeError(f"beanstalkd did not start: {' '.join(self.command())}")

    def _spawn(self) -> bool:
        """Start the process and wait until it answers; False (reaped) if it did not."""
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            # beanstalkd can log a lot (B2); never let a full pipe block it.
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _START_DEADLINE
        while time.monotonic() < deadline and self._proc.poll() is None:
            if _answers(self.host, self.port):
                return True
            time.sleep(0.01)
        self._reap()
        return False

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def enter_drain_mode(self) -> None:
        """SIGUSR1: every later put is answered DRAINING."""
        self.signal(signal.SIGUSR1)

    def kill9(self) -> None:
        """Die at once, as on a crash: nothing but the binlog survives."""
        if self.running:
            self.signal(signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        if self.running:
            self.signal(signal.SIGTERM)
        self._reap()

    def restart(self, *, hard: bool = True) -> BeanstalkdProcess:
        """Kill (SIGKILL when ``hard``) and start again on the same port and binlog."""
        port = self.port
        self.kill9() if hard else self.stop()
        self.port = port
        for _ in range(200):  # the old listening socket may linger for a moment
            try:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((self.host, port))
                break
            except OSError:
                time.sleep(0.01)
        if self._spawn():
            return self
        raise RuntimeError(f"beanstalkd did not restart on port {port}")

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> BeanstalkdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@asynccontextmanager
async def open_private_beanstalkd(
    say: Callable[[str], None],
) -> AsyncIterator[BeanstalkdProcess | None]:
    """A beanstalkd with a binlog in a temporary directory, stopped by PID on the way out;
    None (said why) when beanstalkd is not installed."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            server = BeanstalkdProcess(binlog_dir=Path(tmp), fsync_ms=50)
        except BeanstalkdMissing as exc:
            say(str(exc))
            yield None
            return
        await trio.to_thread.run_sync(server.start)
        try:
            yield server
        finally:
            await trio.to_thread.run_sync(server.stop)
