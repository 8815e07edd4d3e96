"""The daemon scenarios (``overhead``, ``io``): the WHOLE worker as users run it, vs peers.

Every system is a subprocess consuming its own freshly prefilled tube on one shared
beanstalkd, interleaved (for each concurrency: run 1 of every system, run 2 of every
system, …):

- ``tubeworker``: ``tubeworker run -c CONFIG`` with a generated config: one pool bound to a
  handler of tests/bench/handlers.py, JSON logs to a file, ``job_lines = true`` (one log
  line per job), everything else at its default (stats-job per job, counters, the
  guardian task per job, …).
- ``tubeworker-nolog``: the same with ``job_lines = false`` (per-job logging off).
- ``tubeworker-signed``, ``tubeworker-envelope``, ``tubeworker-secret``, ``tubeworker-tls``,
  ``tubeworker-features`` (opt-in): ``tubeworker`` with signed bodies, envelopes,
  envelopes carrying an encrypted secret, through a local stunnel, or with flow control,
  limits, a schedule and a heartbeat configured for other jobs than the bench's (the cost
  of features configured but unused by the job): tests/bench/variants.py (overhead only).
- ``tubeworker-typed`` (opt-in): ``tubeworker`` whose no-op handler declares a payload
  model (``@handler(payload=BenchBody)``, pydantic): the body is read as JSON and validated
  per job. Compare it with ``tubeworker`` in the same run (overhead scenario only).
- ``tubeworker-control`` (opt-in with ``--daemon-systems``): ``tubeworker`` with its control
  plane on (``[control] listen`` on a free loopback port): labelled metrics kept per job,
  the tube poller, the HTTP server idle. Compare it with ``tubeworker`` in the same run.
- ``tubeworker-baseline`` (opt-in): ``tubeworker`` from another tree, for a before/after in
  one run: ``TUBEWORKER_BENCH_BASELINE=DIR`` names a directory holding a ``tubeworker``
  package (``git archive COMMIT worker handlers`` unpacked, ``worker`` renamed
  ``tubeworker`` and ``handlers`` moved inside it), put first on the daemon's
  ``PYTHONPATH``.
- ``greenstalk-threads``: tests/bench/peers/greenstalk_threads.py, C threads.
- ``aiostalk``: tests/bench/peers/aiostalk_coroutines.py, C asyncio coroutines.

How a run is timed (the same for every system, all measured from outside the process):

1. Prefill N ~100-byte jobs into a fresh tube, then ``pause-tube TUBE 3600``.
2. Start the process. It connects its connections (C for the peers, ceil(C / 50) for
   tubeworker, whose connections hold up to 50 jobs each), watches the tube and blocks in
   reserve. Startup is the wall time from spawn until stats-tube shows every one of them
   waiting (``current-waiting``, each blocked in a reserve on the tube); it is
   reported in its own column and is NOT part of the throughput window.
3. Read the worker's and beanstalkd's CPU (utime+stime from /proc/<pid>/stat, all
   threads), take t0, and send ``pause-tube TUBE 0``: beanstalkd lifts the pause at once
   (1 ns) and hands a job to every waiting connection. So the window starts at the first
   reserve with the process already in its steady state, and the clock is read by us,
   not reported by the system under test.
4. Poll stats-tube every ``--poll-ms`` (2 ms) until ``cmd-delete == N`` and
   ``ready + reserved + delayed == 0``: that poll's time is t1 (late by at most one poll
   interval plus one round trip: ≤ 0.3 % of a 1 s window). CPU is read again; peak RSS is
   ``VmHWM`` from /proc/<pid>/status, read before the process is stopped.
5. SIGTERM; the process must exit 0 (the daemon drains; peers finish their loop), else the
   run fails. Whatever the outcome, no process is left behind (killed by PID).

Why the pause gate rather than "process start to tube empty": start-up (interpreter,
imports, C connects — 0.2 to a few seconds, and different per system) would otherwise be
counted as consume time and swamp a 1-2 s window. Why not poll for the first reserve: with
the gate, the first reserve happens within a tick of the unpause, and t0 is exact.

Correctness is checked after every run, and a failure stops the benchmark: the tube is
empty, beanstalkd counted exactly N deletes in it, the system's own counters say it
reserved N and deleted N (the daemon's from its ``stopped`` log line; with job lines on,
also N ``job done`` lines), and beanstalkd's global counters moved by 0 for releases,
buries and TTR timeouts (one system runs at a time), so no job was handled twice. (The
releases of the clock's plan job, which is no job of a run, are not counted: a daemon
with schedules releases it once, when it first makes their ticks.)

A run whose window passes ``--max-window`` (30 s; greenstalk-threads at 5000 threads
collapses to a few hundred jobs/s) is timed on the jobs deleted by then, the system is
stopped (it finishes and deletes what it holds), the harness deletes the rest, and the
same checks apply with that split; the table marks such rows.

The daemon's sources are hashed before the first run and after every run: ``worker/`` is
installed editable, and a change mid-benchmark would mix two versions in one table.

The polling harness costs a little of beanstalkd's CPU (≤ 500 stats-tube/s, well under
1 µs per job) and runs on the same 2 cores; it is the same for every system.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tests.bench import variants
from tests.bench.common import (
    BODY_SIZE,
    BenchError,
    Sample,
    SyncBeanstalk,
    environment_info,
    format_table,
    prefill,
    process_cpu_seconds,
    sample_records,
    unique_tube,
    verify_consumed,
    write_json,
)
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tubeworker.beanstalk import protocol as p

_REPO_ROOT = Path(__file__).resolve().parents[2]
_PEER_DIR = Path(__file__).parent / "peers"
_GATE_CLOSED = 3600  # pause-tube seconds while the system starts (lifted explicitly)
_STALL_LIMIT = 30.0  # seconds without a delete before a run is declared stuck
_STOP_TIMEOUT = 30.0  # after SIGTERM: drain_timeout (5 s) + slack
_FDS_PER_CONNECTION_SLACK = 256  # files besides the C sockets (pipes, epoll, logs, …)

TUBEWORKER = "tubeworker"
TUBEWORKER_NOLOG = "tubeworker-nolog"
TUBEWORKER_CONTROL = "tubeworker-control"
TUBEWORKER_TYPED = "tubeworker-typed"
TUBEWORKER_BASELINE = "tubeworker-baseline"
BASELINE_ENV = "TUBEWORKER_BENCH_BASELINE"
GREENSTALK_THREADS = "greenstalk-threads"
AIOSTALK = "aiostalk"
SYSTEMS = (TUBEWORKER, TUBEWORKER_NOLOG, GREENSTALK_THREADS, AIOSTALK)
OPTIONAL_SYSTEMS = (TUBEWORKER_CONTROL, TUBEWORKER_BASELINE, TUBEWORKER_TYPED, *variants.VARIANTS)
DAEMONS = (
    TUBEWORKER,
    TUBEWORKER_NOLOG,
    TUBEWORKER_CONTROL,
    TUBEWORKER_BASELINE,
    TUBEWORKER_TYPED,
    *variants.VARIANTS,
)
PEERS = (GREENSTALK_THREADS, AIOSTALK)


@dataclass(frozen=True)
class Handler:
    """The same work for every system: the name of each system's version of it."""

    name: str  # tests/bench/handlers.py function and the peers' --handler choice
    seconds: float  # the simulated wait (0 for no-op): for the "share of ideal"


NOOP = Handler("noop", 0.0)
SLEEP20 = Handler("sleep20", 0.02)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    handler: Handler
    concurrencies: tuple[int, ...]
    jobs_for: Callable[[int], int]  # default N for a concurrency (when --jobs is not given)


# --------------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the daemon scenarios; added once however many scenarios call it."""
    if getattr(parser, "_daemon_scenario_flags", False):
        return
    parser._daemon_scenario_flags = True  # type: ignore[attr-defined]
    group = parser.add_argument_group("scenarios overhead and io (the whole daemon)")
    group.add_argument(
        "--concurrency-list",
        metavar="C,C,…",
        help="concurrencies to run (default: overhead 50,200,1000; io 200,1000)",
    )
    group.add_argument(
        "--with-5000",
        action="store_true",
        help="io: also run concurrency 5000 (raises the open-file limit for beanstalkd and "
        "the workers; needs a hard limit above ~5300 or root)",
    )
    group.add_argument(
        "--daemon-systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset, in run order (default: {','.join(SYSTEMS)})",
    )
    group.add_argument(
        "--poll-ms",
        type=float,
        default=2.0,
        help="stats-tube polling interval that detects the end of a run (default 2 ms)",
    )
    group.add_argument(
        "--max-window",
        type=float,
        default=30.0,
        help="cap on one run's measured window in seconds (default 30): a system that has "
        "not drained the tube by then is timed on the jobs it finished, stopped, and the "
        "harness deletes the rest (the row is marked 'capped')",
    )
    group.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep each run's config, stdout and stderr under the JSON directory",
    )


def _concurrencies(args: argparse.Namespace, scenario: Scenario) -> list[int]:
    if args.concurrency_list:
        values = [int(v) for v in args.concurrency_list.split(",") if v.strip()]
    else:
        values = list(scenario.concurrencies)
        if args.with_5000 and scenario.name == "io":
            values.append(5000)
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"--concurrency-list needs positive integers, got {values}")
    return values


def _systems(args: argparse.Namespace) -> list[str]:
    systems = [s.strip() for s in args.daemon_systems.split(",") if s.strip()]
    known = SYSTEMS + OPTIONAL_SYSTEMS
    unknown = [s for s in systems if s not in known]
    if unknown or not systems:
        raise SystemExit(f"unknown systems {unknown}; choose from {', '.join(known)}")
    return systems


def _raise_open_file_limit(max_concurrency: int) -> dict[str, int]:
    """beanstalkd and the workers inherit our RLIMIT_NOFILE: make room for C connections
    in each (plus slack). Raises the hard limit too when we may (root)."""
    need = max_concurrency + _FDS_PER_CONNECTION_SLACK
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            if os.geteuid() != 0:
                raise BenchError(
                    f"concurrency {max_concurrency} needs {need} open files, but the hard "
                    f"limit is {hard} (raise it: ulimit -Hn, or run as root)"
                )
            hard = need
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"soft": soft, "hard": hard}


def code_fingerprint() -> str:
    """A hash of the daemon's sources (worker/, handlers/, the bench handlers). The package
    is installed editable: a change while the benchmark runs would mix two versions in one
    table, so every run checks it."""
    digest = hashlib.sha256()
    paths = [
        *sorted((_REPO_ROOT / "worker").rglob("*.py")),
        *sorted((_REPO_ROOT / "handlers").rglob("*.py")),
        Path(__file__).parent / "handlers.py",
    ]
    for path in paths:
        digest.update(str(path.relative_to(_REPO_ROOT)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- processes


def _tubeworker_binary() -> Path:
    binary = Path(sys.executable).parent / "tubeworker"
    if not os.access(binary, os.X_OK):
        raise BenchError(f"{binary} not found: install the package into this venv (make test)")
    return binary


def _tubeworker_config(
    address: str,
    tube: str,
    concurrency: int,
    handler: Handler,
    *,
    job_lines: bool,
    control: bool = False,
    bound: bool = True,
) -> str:
    control_table = f'[control]\nlisten = "127.0.0.1:{free_port()}"\n' if control else ""
    return control_table + (
        "[worker]\n"
        f'servers = ["{address}"]\n'
        "drain_timeout = 5\n"
        "[logging]\n"
        'format = "json"\n'
        'level = "info"\n'
        f"job_lines = {'true' if job_lines else 'false'}\n"
        "[handlers]\n"
        f'"bench.{handler.name}" = "tests.bench.handlers:{handler.name}"\n'
        "[[pool]]\n"
        'name = "bench"\n'
        f'tubes = ["{tube}"]\n'
        f"concurrency = {concurrency}\n" + (f'handler = "bench.{handler.name}"\n' if bound else "")
    )


def _argv(
    system: str,
    route: variants.Route,
    tube: str,
    concurrency: int,
    handler: Handler,
    workdir: Path,
) -> list[str]:
    address = route.address
    if system in DAEMONS:
        if system == TUBEWORKER_TYPED:
            if handler.name != "noop":
                raise BenchError(f"{system} runs the overhead scenario only")
            handler = replace(handler, name="noop_typed")
        config = workdir / f"{tube}.toml"
        text = _tubeworker_config(
            address,
            tube,
            concurrency,
            handler,
            job_lines=system != TUBEWORKER_NOLOG,
            control=system == TUBEWORKER_CONTROL,
            bound=system not in variants.ENVELOPE_POOLS,
        )
        if system in variants.VARIANTS:
            if handler.name != "noop":
                raise BenchError(f"{system} runs the overhead scenario only")
            text += variants.config_of(system, workdir, route)
        config.write_text(text)
        if system == TUBEWORKER_BASELINE:
            return [sys.executable, "-m", "tubeworker", "run", "-c", str(config)]
        return [str(_tubeworker_binary()), "run", "-c", str(config)]
    script = {GREENSTALK_THREADS: "greenstalk_threads.py", AIOSTALK: "aiostalk_coroutines.py"}
    return [
        sys.executable,
        str(_PEER_DIR / script[system]),
        address,
        tube,
        str(concurrency),
        "--handler",
        handler.name,
    ]


class _Child:
    """A system under test: stdout/stderr to files, its own session (a Ctrl-C at the
    terminal reaches only us), and stopped by PID on the way out whatever happened."""

    def __init__(
        self, argv: Sequence[str], workdir: Path, stem: str, *, baseline: bool = False
    ) -> None:
        self.argv = list(argv)
        self.stdout_path = workdir / f"{stem}.out"
        self.stderr_path = workdir / f"{stem}.err"
        env = {**os.environ, "PYTHONPATH": str(_REPO_ROOT)}
        if baseline:
            tree = os.environ.get(BASELINE_ENV)
            if not tree:
                raise BenchError(f"{TUBEWORKER_BASELINE} needs {BASELINE_ENV}=DIR")
            env["PYTHONPATH"] = f"{tree}{os.pathsep}{_REPO_ROOT}"
        env.pop("TUBEWORKER_CONFIG", None)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=_REPO_ROOT,
                env=env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, chars: int = 3000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self, doing: str) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{' '.join(self.argv)} exited with {self.proc.returncode} while {doing}:\n"
                + self.stderr_tail()
            )

    def peak_rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise BenchError(f"no VmHWM in /proc/{self.pid}/status")

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM and wait: it must exit 0 (the daemon after its drain)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"{' '.join(self.argv)} did not exit within {timeout:.0f} s of SIGTERM"
            ) from None
        if code != 0:
            raise BenchError(
                f"{' '.join(self.argv)} exited with {code} after SIGTERM:\n" + self.stderr_tail()
            )

    def kill(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> _Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class _Run:
    scenario: Scenario
    system: str
    concurrency: int
    run: int
    jobs: int
    poll: float
    max_window: float


# The daemon's default [pool] jobs_per_connection: its C slots use ceil(C / 50) connections.
TUBEWORKER_JOBS_PER_CONNECTION = 50


def connections_of(system: str, concurrency: int) -> int:
    """How many connections the system holds for C concurrent jobs."""
    if system.startswith("tubeworker"):
        return math.ceil(concurrency / TUBEWORKER_JOBS_PER_CONNECTION)
    return concurrency


def _wait_all_waiting(admin: SyncBeanstalk, child: _Child, run: _Run, tube: str) -> float:
    """Until every connection of the system is blocked in a reserve on the gated tube."""
    started = time.perf_counter()
    deadline = started + 60 + run.concurrency / 50
    connections = connections_of(run.system, run.concurrency)
    while True:
        stats = admin.tube_stats(tube)
        if stats.current_waiting >= connections:
            if stats.current_jobs_ready != run.jobs:
                raise BenchError(f"{run.system}: jobs left the paused tube {tube}: {stats}")
            return time.perf_counter()
        child.check_alive("starting")
        if time.perf_counter() > deadline:
            raise BenchError(
                f"{run.system}: only {stats.current_waiting} of {connections} connections "
                f"waiting on {tube} after {deadline - started:.0f} s:\n{child.stderr_tail()}"
            )
        time.sleep(0.01)


@dataclass
class _Window:
    t1: float  # the poll that saw the tube drained (or the cap reached)
    first_progress: float  # the first poll that saw a job reserved or deleted (0: none)
    deleted: int  # beanstalkd's cmd-delete for the tube at t1
    capped: bool  # stopped at --max-window before the tube was drained


def _wait_drained(admin: SyncBeanstalk, child: _Child, run: _Run, tube: str, t0: float) -> _Window:
    """Poll until the tube is empty and N deletes were counted, or the window cap passes."""
    last_deleted, last_progress = -1, time.perf_counter()
    first_progress = 0.0
    while True:
        time.sleep(run.poll)
        stats = admin.tube_stats(tube)
        now = time.perf_counter()
        busy = stats.current_jobs_ready + stats.current_jobs_reserved + stats.current_jobs_delayed
        if stats.cmd_delete >= run.jobs and busy == 0:
            return _Window(now, first_progress, stats.cmd_delete, capped=False)
        if now - t0 > run.max_window:
            return _Window(now, first_progress, stats.cmd_delete, capped=True)
        if not first_progress and (stats.current_jobs_reserved or stats.cmd_delete):
            first_progress = now
        if stats.cmd_delete != last_deleted:
            last_deleted, last_progress = stats.cmd_delete, now
        elif now - last_progress > _STALL_LIMIT:
            raise BenchError(
                f"{run.system}: no delete for {_STALL_LIMIT:.0f} s on {tube}: {stats}\n"
                + child.stderr_tail()
            )
        child.check_alive("consuming")


def _delete_leftovers(server: BeanstalkdProcess, tube: str) -> int:
    """After a capped run: delete what the stopped system left ready (not timed)."""
    deleted = 0
    with SyncBeanstalk(server.host, server.port) as conn:
        conn.pipeline([p.Watch(tube), p.Ignore("default")])
        while True:
            replies = conn.pipeline([p.ReserveWithTimeout(0)] * 500)
            ids = [r.id for r in replies if isinstance(r, p.Reserved)]
            if not ids:
                return deleted
            for reply in conn.pipeline([p.Delete(i) for i in ids]):
                if not isinstance(reply, p.Deleted):
                    raise BenchError(f"deleting leftovers of {tube}: {reply!r}")
            deleted += len(ids)


def _server_counters(admin: SyncBeanstalk, server: BeanstalkdProcess) -> dict[str, int]:
    reply = admin.request(p.Stats())
    if not isinstance(reply, p.ServerStats):
        raise BenchError(f"stats: {reply!r}")
    return {
        # The clock's plan job is no job of a run (tests/bench/variants.py clock_releases).
        "cmd_release": reply.cmd_release - variants.clock_releases(server),
        "cmd_bury": reply.cmd_bury,
        "job_timeouts": reply.job_timeouts,
    }


def _own_counts(system: str, child: _Child) -> dict[str, int]:
    """What the system says it did: the daemon's ``stopped`` line, or the peer's JSON."""
    text = child.stdout_path.read_text(errors="replace")
    if system in DAEMONS:
        stopped = None
        for line in reversed(text.splitlines()):
            if '"stopped"' in line:
                stopped = json.loads(line)
                break
        if stopped is None or stopped.get("event") != "stopped":
            raise BenchError(f"{system}: no 'stopped' line in its log:\n{text[-2000:]}")
        counts = {
            k: int(stopped.get(k, -1))
            for k in ("reserved", "deleted", "released", "buried", "returned")
        }
        if system != TUBEWORKER_NOLOG:
            counts["job_done_lines"] = text.count('"event": "job done"')
        return counts
    lines = text.strip().splitlines()
    if not lines:
        raise BenchError(f"{system}: printed no result line")
    result = json.loads(lines[-1])
    return {k: int(result[k]) for k in ("reserved", "deleted", "errors")}


def _check_own_counts(run: _Run, counts: dict[str, int], expected: int) -> None:
    problems = []
    for key in ("reserved", "deleted", "job_done_lines"):
        if key in counts and counts[key] != expected:
            problems.append(f"{key} {counts[key]}, expected {expected}")
    for key in ("released", "buried", "returned", "errors"):
        if counts.get(key, 0) != 0:
            problems.append(f"{key} {counts[key]}, expected 0")
    if problems:
        raise BenchError(f"{run.system} run {run.run}: own counters: " + "; ".join(problems))


def _terminator_cpu(route: variants.Route) -> float:
    return process_cpu_seconds(route.terminator_pid) if route.terminator_pid else 0.0


def _one_run(server: BeanstalkdProcess, run: _Run, workdir: Path) -> Sample:
    tube = unique_tube(f"{run.system}.c{run.concurrency}", run.run)
    with SyncBeanstalk(server.host, server.port) as admin:
        body = variants.body_of(run.system, run.scenario.handler.name)
        prefill(admin, tube, run.jobs, body=body)
        if admin.request(p.PauseTube(tube, _GATE_CLOSED)) != p.Paused():
            raise BenchError(f"pause-tube {tube} failed")
        before = _server_counters(admin, server)
        gc.collect()  # our own collector debt: none during the window
        baseline = run.system == TUBEWORKER_BASELINE
        with variants.open_route(run.system, server, workdir) as route:
            argv = _argv(run.system, route, tube, run.concurrency, run.scenario.handler, workdir)
            spawned = time.perf_counter()
            with _Child(argv, workdir, tube, baseline=baseline) as child:
                ready = _wait_all_waiting(admin, child, run, tube)
                worker_cpu0 = process_cpu_seconds(child.pid)
                server_cpu0 = process_cpu_seconds(server.pid)
                terminator_cpu0 = _terminator_cpu(route)
                t0 = time.perf_counter()
                if admin.request(p.PauseTube(tube, 0)) != p.Paused():  # the gate opens
                    raise BenchError(f"pause-tube {tube} 0 failed")
                window = _wait_drained(admin, child, run, tube, t0)
                worker_cpu = process_cpu_seconds(child.pid) - worker_cpu0
                server_cpu = process_cpu_seconds(server.pid) - server_cpu0
                terminator_cpu = _terminator_cpu(route) - terminator_cpu0
                peak_rss = child.peak_rss_bytes()
                child.stop(timeout=_STOP_TIMEOUT + run.concurrency / 50)
        # Capped: the system stopped (finishing the jobs it held); we delete the rest.
        leftovers = _delete_leftovers(server, tube) if window.capped else 0
        after = _server_counters(admin, server)
        moved = {k: after[k] - before[k] for k in before if after[k] != before[k]}
        if moved:
            raise BenchError(f"{run.system} run {run.run}: beanstalkd counted {moved}")
        counts = _own_counts(run.system, child)
        _check_own_counts(run, counts, run.jobs - leftovers)
        sample = Sample(
            system=run.system,
            run=run.run,
            jobs=window.deleted,  # == N unless capped
            elapsed=window.t1 - t0,
            client_cpu=worker_cpu,
            server_cpu=server_cpu,
            reserved=counts["reserved"] + leftovers,
            deleted=counts["deleted"] + leftovers,
            extra={
                "concurrency": run.concurrency,
                "prefilled": run.jobs,
                "capped_at_s": run.max_window if window.capped else None,
                "leftovers_deleted_by_harness": leftovers,
                "startup_s": ready - spawned,
                "peak_rss_bytes": peak_rss,
                "first_progress_s": window.first_progress - t0 if window.first_progress else None,
                "own_counts": counts,
                # stunnel's CPU in the window (tubeworker-tls), beside beanstalkd's
                "terminator_cpu_s": terminator_cpu if route.terminator_pid else None,
                "tube": tube,
            },
        )
        verify_consumed(admin, tube, run.jobs, sample)
    return sample


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Row:
    system: str
    concurrency: int
    runs: int
    jobs: int
    median: float
    low: float
    high: float
    worker_us_per_job: float  # medians over runs
    server_us_per_job: float
    worker_busy: float  # worker CPU seconds per wall second (1.0: one core flat out)
    peak_rss_mib: float
    startup_s: float
    capped_runs: int  # runs stopped at --max-window (timed on the jobs finished by then)

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Row:
        rates = [s.jobs_per_s for s in samples]
        return cls(
            system=samples[0].system,
            concurrency=samples[0].extra["concurrency"],
            runs=len(samples),
            jobs=samples[0].extra["prefilled"],
            median=statistics.median(rates),
            low=min(rates),
            high=max(rates),
            worker_us_per_job=statistics.median(1e6 * s.client_cpu / s.jobs for s in samples),
            server_us_per_job=statistics.median(1e6 * s.server_cpu / s.jobs for s in samples),
            worker_busy=statistics.median(s.client_cpu / s.elapsed for s in samples),
            peak_rss_mib=statistics.median(s.extra["peak_rss_bytes"] / 2**20 for s in samples),
            startup_s=statistics.median(s.extra["startup_s"] for s in samples),
            capped_runs=sum(1 for s in samples if s.extra["capped_at_s"]),
        )


def _ratio(rows: Sequence[Row], row: Row, peer: str) -> str:
    for other in rows:
        if other.system == peer and other.concurrency == row.concurrency:
            return f"{row.median / other.median:.2f}x"
    return "—"


def _table(scenario: Scenario, rows: Sequence[Row], runs: int) -> str:
    ideal = scenario.handler.seconds > 0
    headers = [
        "system",
        "conc",
        "runs",
        "jobs",
        "jobs/s median",
        "min-max",
        *(f"x {peer}" for peer in PEERS),
        *(["% of ideal"] if ideal else []),
        "worker CPU us/job",
        "worker busy",
        "beanstalkd CPU us/job",
        "peak RSS MiB",
        "startup s",
    ]
    body = [
        [
            r.system + (" *" if r.capped_runs else ""),
            str(r.concurrency),
            str(r.runs),
            f"{r.jobs:,}",
            f"{r.median:,.0f}",
            f"{r.low:,.0f}-{r.high:,.0f}",
            *(_ratio(rows, r, peer) for peer in PEERS),
            *(
                [f"{100 * r.median * scenario.handler.seconds / r.concurrency:.1f}%"]
                if ideal
                else []
            ),
            f"{r.worker_us_per_job:.1f}",
            f"{100 * r.worker_busy:.0f}%",
            f"{r.server_us_per_job:.1f}",
            f"{r.peak_rss_mib:.1f}",
            f"{r.startup_s:.2f}",
        ]
        for r in rows
    ]
    title = (
        f"scenario {scenario.name}: {scenario.title}; whole process per system, prefilled tube "
        f"of {BODY_SIZE}-byte jobs, {runs} interleaved runs, medians"
    )
    notes = [
        f"* {r.system} at {r.concurrency}: {r.capped_runs} of {r.runs} runs hit --max-window "
        "and were timed on the jobs finished by then"
        for r in rows
        if r.capped_runs
    ]
    return "\n".join([title, format_table(headers, body), *notes])


# --------------------------------------------------------------------------- the scenario


@contextlib.contextmanager
def _workdir(args: argparse.Namespace, scenario: Scenario) -> Iterator[Path]:
    if args.keep_logs:
        path = args.json_dir / f"{scenario.name}-logs-{time.strftime('%Y%m%dT%H%M%S')}"
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix=f"tubeworker-bench-{scenario.name}-") as tmp:
            yield Path(tmp)


def run_scenario(args: argparse.Namespace, scenario: Scenario) -> int:
    systems = _systems(args)
    concurrencies = _concurrencies(args, scenario)
    if args.poll_ms <= 0:
        raise SystemExit("--poll-ms must be positive")
    rlimit = _raise_open_file_limit(max(concurrencies))
    samples: dict[tuple[str, int], list[Sample]] = {}
    fingerprint = code_fingerprint()
    with BeanstalkdProcess() as server, _workdir(args, scenario) as workdir:
        env = environment_info(server.binary)
        for concurrency in concurrencies:
            jobs = args.jobs or scenario.jobs_for(concurrency)
            for run_no in range(1, args.runs + 1):
                for system in systems:  # interleaved: A B C D, A B C D, …
                    run = _Run(
                        scenario,
                        system,
                        concurrency,
                        run_no,
                        jobs,
                        args.poll_ms / 1000,
                        args.max_window,
                    )
                    sample = _one_run(server, run, workdir)
                    if code_fingerprint() != fingerprint:
                        raise BenchError(
                            "the daemon's source changed during the benchmark (worker/ is "
                            "installed editable): the runs would mix two versions; run again"
                        )
                    samples.setdefault((system, concurrency), []).append(sample)
                    print(
                        f"c={concurrency:<5} run {run_no}/{args.runs}  {system:<19}"
                        f"{sample.jobs_per_s:>9,.0f} jobs/s  "
                        f"({sample.elapsed:.2f} s, startup {sample.extra['startup_s']:.2f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    rows = [Row.of(runs) for runs in samples.values()]
    table = _table(scenario, rows, args.runs)
    print(table)
    path = write_json(
        args.json_dir,
        scenario.name,
        {
            "scenario": scenario.name,
            "environment": {**env, "rlimit_nofile": rlimit, "code_fingerprint": fingerprint},
            "parameters": {
                "runs": args.runs,
                "jobs_per_run": {str(c): args.jobs or scenario.jobs_for(c) for c in concurrencies},
                "body_bytes": BODY_SIZE,
                "handler": asdict(scenario.handler),
                "concurrencies": concurrencies,
                "systems": systems,
                "peers": list(PEERS),
                "poll_ms": args.poll_ms,
                "timing": "pause-gated: t0 at pause-tube 0 with every connection waiting; "
                "t1 at the first poll showing the tube empty and cmd-delete == N",
            },
            "summary": [asdict(r) for r in rows],
            "runs": sample_records({f"{s}@{c}": v for (s, c), v in samples.items()}),
            "table": table,
        },
    )
    print(f"\nwrote {path}")
    return 0
