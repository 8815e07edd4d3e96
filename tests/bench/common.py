"""Shared benchmark plumbing: beanstalkd admin connection, prefill, meters, tables, JSON.

Rules from docs/benchmarks.md that live here: medians of several runs, systems interleaved
within one invocation against one beanstalkd, ratios only between systems of the same
invocation, and every process we start stopped by PID even on Ctrl-C or errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from tubeworker.beanstalk import protocol as p

__all__ = [
    "BODY_SIZE",
    "BenchError",
    "Meter",
    "Sample",
    "Summary",
    "SyncBeanstalk",
    "environment_info",
    "format_table",
    "job_body",
    "positive_int",
    "prefill",
    "process_cpu_seconds",
    "ratio",
    "run_child",
    "sample_records",
    "sigterm_as_interrupt",
    "summarize",
    "unique_tube",
    "verify_consumed",
    "write_json",
]

BODY_SIZE = 100
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_RECV_SIZE = 256 * 1024


def positive_int(text: str) -> int:
    """argparse type: an int of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class BenchError(RuntimeError):
    """A run did not do what it claims (jobs lost, left over, or a wrong reply): fail loudly."""


# --------------------------------------------------------------------------- processes


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from /proc (clock-tick resolution, ~10 ms)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name (field 2) may hold spaces or parentheses: split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLK_TCK


def sigterm_as_interrupt() -> None:
    """Make SIGTERM behave like Ctrl-C so every ``finally`` (stop beanstalkd, peers) runs.

    Hand it to the current SIGINT handler, so inside ``trio.run`` Trio delivers it safely.
    Not re-raised as SIGINT: a shell starts background jobs with SIGINT ignored.
    """

    def _handler(signum: int, frame: FrameType | None) -> None:
        on_interrupt = signal.getsignal(signal.SIGINT)
        if not callable(on_interrupt):  # SIG_IGN or SIG_DFL
            raise KeyboardInterrupt
        on_interrupt(signal.SIGINT, frame)  # Trio's may defer it to a safe point

    signal.signal(signal.SIGTERM, _handler)


def run_child(argv: Sequence[str], *, timeout: float, cwd: Path | None = None) -> str:
    """Run a peer process to completion and return its stdout; stop it by PID on any error."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    if proc.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} exited with {proc.returncode}:\n{err.decode(errors='replace')}"
        )
    return out.decode()


# --------------------------------------------------------------------------- beanstalkd


def unique_tube(system: str, run: int) -> str:
    """A fresh tube per system and run, so no run sees another's leftovers."""
    return f"bench.{system}.r{run}.{secrets.token_hex(4)}"


def job_body(seq: int) -> bytes:
    """A ~100-byte JSON body, like a small real job (exactly BODY_SIZE bytes)."""
    head = b'{"task":"bench.noop","seq":%8d,"pad":"' % seq  # spaces: strict JSON
    return head + b"x" * (BODY_SIZE - len(head) - 2) + b'"}'


class SyncBeanstalk:
    """A blocking admin connection built on our sans-I/O protocol (prefill, stats).

    Not a system under test: it only sets runs up and checks them afterwards.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._proto = p.Connection()

    def pipeline(self, commands: Sequence[p.Command]) -> list[p.Reply]:
        self._sock.sendall(self._proto.send_many(commands))
        replies: list[p.Reply] = []
        while len(replies) < len(commands):
            event = self._proto.next_event()
            if isinstance(event, p.Reply):
                replies.append(event)
            else:
                # b"" (EOF) makes the next next_event() raise RemoteProtocolError.
                self._proto.receive_data(self._sock.recv(_RECV_SIZE))
        return replies

    def request(self, command: p.Command) -> p.Reply:
        return self.pipeline([command])[0]

    def tube_stats(self, tube: str) -> p.TubeStats:
        reply = self.request(p.StatsTube(tube))
        if not isinstance(reply, p.TubeStats):
            raise BenchError(f"stats-tube {tube}: {reply!r}")
        return reply

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SyncBeanstalk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def prefill(
    admin: SyncBeanstalk,
    tube: str,
    jobs: int,
    *,
    batch: int = 1000,
    body: Callable[[int], bytes] | None = None,
) -> None:
    """Put ``jobs`` bodies into ``tube`` with pipelined puts, ``batch`` per write
    (``body``: each job's, default :func:`job_body`).

    ``admin`` keeps using the tube afterwards: an empty tube nobody uses or watches is
    dropped by beanstalkd, and the check after the run needs its stats-tube.
    """
    reply = admin.request(p.Use(tube))
    if reply != p.Using(tube):
        raise BenchError(f"use {tube}: {reply!r}")
    for start in range(0, jobs, batch):
        make = body or job_body
        puts = [p.Put(make(seq)) for seq in range(start, min(start + batch, jobs))]
        for reply in admin.pipeline(puts):
            if not isinstance(reply, p.Inserted):
                raise BenchError(f"prefill put into {tube}: {reply!r}")
    stats = admin.tube_stats(tube)
    if stats.current_jobs_ready != jobs or stats.total_jobs != jobs:
        raise BenchError(f"prefill of {tube}: wanted {jobs} ready jobs, stats say {stats}")


def verify_consumed(admin: SyncBeanstalk, tube: str, jobs: int, sample: Sample) -> None:
    """Every prefilled job was reserved and deleted exactly once, and the tube is empty."""
    problems = []
    if sample.reserved != jobs:
        problems.append(f"reserved {sample.reserved}, expected {jobs}")
    if sample.deleted != jobs:
        problems.append(f"deleted {sample.deleted}, expected {jobs}")
    stats = admin.tube_stats(tube)
    left = {
        "ready": stats.current_jobs_ready,
        "reserved": stats.current_jobs_reserved,
        "delayed": stats.current_jobs_delayed,
        "buried": stats.current_jobs_buried,
    }
    if any(left.values()):
        problems.append(f"tube not empty afterwards: {left}")
    if stats.cmd_delete != jobs:
        problems.append(f"server counted {stats.cmd_delete} deletes, expected {jobs}")
    if problems:
        raise BenchError(f"{sample.system} run {sample.run} on {tube}: " + "; ".join(problems))


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    """One run of one system."""

    system: str
    run: int
    jobs: int
    elapsed: float  # wall seconds of the consume loop only (connect and setup excluded)
    client_cpu: float  # CPU seconds of the consuming process over the same window
    server_cpu: float  # beanstalkd CPU seconds over the window
    reserved: int
    deleted: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.elapsed


class Meter:
    """Wall clock, this process's CPU and beanstalkd's CPU over one measured window."""

    def __init__(self, server_pid: int) -> None:
        self._server_pid = server_pid
        self._wall = self._cpu = self._server = 0.0
        self.elapsed = self.client_cpu = self.server_cpu = 0.0

    def start(self) -> None:
        self._server = process_cpu_seconds(self._server_pid)
        self._cpu = time.process_time()
        self._wall = time.perf_counter()

    def stop(self) -> None:
        self.elapsed = time.perf_counter() - self._wall
        self.client_cpu = time.process_time() - self._cpu
        self.server_cpu = process_cpu_seconds(self._server_pid) - self._server


@dataclass(frozen=True)
class Summary:
    system: str
    runs: int
    median: float
    low: float
    high: float
    client_cpu_per_1k: float  # median over runs, CPU seconds per 1000 jobs
    server_cpu_per_1k: float

    @classmethod
    def of(cls, system: str, samples: Sequence[Sample]) -> Summary:
        rates = [s.jobs_per_s for s in samples]
        return cls(
            system=system,
            runs=len(samples),
            median=statistics.median(rates),
            low=min(rates),
            high=max(rates),
            client_cpu_per_1k=statistics.median(1000 * s.client_cpu / s.jobs for s in samples),
            server_cpu_per_1k=statistics.median(1000 * s.server_cpu / s.jobs for s in samples),
        )


def summarize(samples: dict[str, list[Sample]]) -> list[Summary]:
    return [Summary.of(name, runs) for name, runs in samples.items() if runs]


def ratio(summaries: Iterable[Summary], row: Summary, peer: str) -> str:
    """Median over median, only against a peer measured in this same invocation."""
    for other in summaries:
        if other.system == peer:
            return f"{row.median / other.median:.2f}x"
    return "—"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


# --------------------------------------------------------------------------- records


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment_info(beanstalkd_binary: str) -> dict[str, Any]:
    """What the figures depend on: versions, cores, load at the start."""
    version = subprocess.run(
        [beanstalkd_binary, "-v"], capture_output=True, text=True, timeout=5
    ).stdout.strip()
    return {
        "beanstalkd": version,
        "beanstalkd_binary": beanstalkd_binary,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "trio": _version("trio"),
        "greenstalk": _version("greenstalk"),
        "aiostalk": _version("aiostalk"),
        "structlog": _version("structlog"),
        "tubeworker": _version("tubeworker"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
    }


def write_json(json_dir: Path, scenario: str, payload: dict[str, Any]) -> Path:
    json_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(payload, indent=2, default=str) + "\n"
    for n in range(1, 100):  # never overwrite a record made in the same second
        path = json_dir / (f"{stamp}-{scenario}.json" if n == 1 else f"{stamp}-{scenario}-{n}.json")
        try:
            with path.open("x") as f:
                f.write(text)
        except FileExistsError:
            continue
        return path
    raise BenchError(f"too many result files named {stamp}-{scenario}*.json in {json_dir}")


def sample_records(samples: dict[str, list[Sample]]) -> dict[str, list[dict[str, Any]]]:
    return {
        name: [{**asdict(s), "jobs_per_s": s.jobs_per_s} for s in runs]
        for name, runs in samples.items()
    }
