"""Scenario ``outage`` (docs/benchmarks.md): jobs whose handler calls an API that is down for a
while, with flow control's tracking on and off.

    python -m tests.bench --scenario outage --runs 3 [--jobs 2000] [--outage-seconds 20]

The API is tests/bench/local_api.py, served from this process on loopback. Every job of a
fresh tube calls it once through ``job.http`` (tests/bench/flow_handlers.py: 5xx →
``Retry``, the pool's backoff). The API answers 503 from the moment the gate opens (t0)
until t0 + ``--outage-seconds``, then 200. Two systems, the SAME daemon and config but for
one table, run one after the other on one beanstalkd, interleaved over ``--runs``:

- ``tubeworker-tracked``: with ``[api.partner]`` (``hosts = ["127.0.0.1"]``, the tube
  bound with ``tubes``, ``pause_tubes = true``, ``consecutive_failures``, ``cooldown`` and
  ``cooldown_cap`` from the flags; the other breaker keys at their defaults).
- ``tubeworker-untracked``: no ``[api]`` table, so each failure is a release with the
  pool's exponential backoff with full jitter, which is what every peer does. (The daemon
  still counts the calls under an API named after the host, ``127.0.0.1``, whose breaker
  opens with the default settings; no job is bound to it, so no job waits: its "breaker
  opens" in the table are that, and change nothing.)

Fairness of the untracked baseline (the flags change all of it):

- ``max_attempts`` is 1000 for both, far more than the outage can use (a release waits at
  least 1 s), so the untracked daemon buries nothing and the comparison is about calls
  and time, not about jobs lost.
- Its backoff is ``backoff_base = 1 s`` capped at the breaker's ``cooldown_cap``: each job
  then retries at least once per cap, so after recovery it waits at most one cap, the same
  bound as the breaker's next probe. A larger cap would make fewer calls to the dead API
  and a slower recovery (every job waits out its own delay); a smaller one the reverse.
- Both have the same pool (``--outage-concurrency``), TTR 60 s, JSON logs with one line per
  job, everything else at the daemon's defaults.

Measured per run (the figures the issue asks for):

- calls to the dead API: requests the API answered with 503 (all during the outage);
- attempts burned: beanstalkd's ``cmd-release`` over the run (only this daemon runs; a
  deferral is a put + delete, never a release), cross-checked with the daemon's
  ``job released`` lines; jobs buried (``cmd-bury``, the tube's buried count);
- backlog done after recovery: from the API's switch to 200 until the tube has no ready,
  delayed or reserved job left (polled every ``--outage-poll-ms``), with the first success
  after recovery beside it; worker CPU over the whole run.

Checks: every job not buried succeeded at least once at the API (a job done twice is
reported as a duplicate, not an error: at-least-once), no TTR expired, the daemon exits 0
after SIGTERM. A run that has not finished ``--outage-max-after`` seconds after recovery
fails. The targets are printed under the table: the tracked daemon's calls
≤ 1 % of the untracked one's, 0 attempts burned, the backlog done within one cool-down cap.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.common import (
    BenchError,
    SyncBeanstalk,
    environment_info,
    format_table,
    positive_int,
    process_cpu_seconds,
    unique_tube,
    write_json,
)
from tests.bench.flow import (
    HANDLER_NAME,
    HANDLER_TARGET,
    TTR,
    FlowDaemon,
    fingerprint,
    open_gate,
    prefill_calls,
    server_counters,
    wait_started,
    workdir,
)
from tests.bench.local_api import Call, LocalApi, per_second
from tests.support.beanstalkd import BeanstalkdProcess

NAME = "outage"
DEFAULT_JOBS = 2000
TRACKED = "tubeworker-tracked"
UNTRACKED = "tubeworker-untracked"
SYSTEMS = (TRACKED, UNTRACKED)
_API = "partner"
_STALL_LIMIT = 60.0  # after recovery: seconds without a delete before the run is stuck
_STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Params:
    jobs: int
    outage: float
    concurrency: int
    failures: int
    cooldown: float
    cooldown_cap: float
    max_attempts: int
    backoff_base: float
    backoff_cap: float
    poll: float
    max_after: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scenario outage (an API down for a while)")
    group.add_argument(
        "--outage-seconds", type=float, default=20.0, help="how long the API answers 503 (20)"
    )
    group.add_argument(
        "--outage-concurrency", type=positive_int, default=50, help="the pool's concurrency (50)"
    )
    group.add_argument(
        "--outage-failures",
        type=positive_int,
        default=5,
        help="tracked: [api] consecutive_failures (5)",
    )
    group.add_argument(
        "--outage-cooldown", type=float, default=2.0, help="tracked: [api] cooldown, s (2)"
    )
    group.add_argument(
        "--outage-cooldown-cap",
        type=float,
        default=8.0,
        help="tracked: [api] cooldown_cap, s (8); also the untracked backoff_cap by default",
    )
    group.add_argument(
        "--outage-max-attempts",
        type=positive_int,
        default=1000,
        help="[pool.retry] max_attempts of both (1000: nothing is buried for lack of attempts)",
    )
    group.add_argument(
        "--outage-backoff-base",
        type=float,
        default=1.0,
        help="[pool.retry] backoff_base of both, s (1)",
    )
    group.add_argument(
        "--outage-backoff-cap",
        type=float,
        default=None,
        help="[pool.retry] backoff_cap of both, s (default: --outage-cooldown-cap)",
    )
    group.add_argument(
        "--outage-systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset, in run order (default: {','.join(SYSTEMS)})",
    )
    group.add_argument(
        "--outage-poll-ms",
        type=float,
        default=20.0,
        help="stats-tube polling that detects the end of the backlog (20 ms)",
    )
    group.add_argument(
        "--outage-max-after",
        type=float,
        default=120.0,
        help="fail a run whose backlog is not done this long after recovery (120 s)",
    )


def _params(args: argparse.Namespace) -> Params:
    params = Params(
        jobs=args.jobs,
        outage=args.outage_seconds,
        concurrency=args.outage_concurrency,
        failures=args.outage_failures,
        cooldown=args.outage_cooldown,
        cooldown_cap=args.outage_cooldown_cap,
        max_attempts=args.outage_max_attempts,
        backoff_base=args.outage_backoff_base,
        backoff_cap=args.outage_backoff_cap or args.outage_cooldown_cap,
        poll=args.outage_poll_ms / 1000,
        max_after=args.outage_max_after,
    )
    if params.outage <= 0 or params.poll <= 0 or params.max_after <= 0:
        raise SystemExit("--outage-seconds, --outage-poll-ms and --outage-max-after must be > 0")
    if not 0 < params.cooldown <= params.cooldown_cap:
        raise SystemExit("need 0 < --outage-cooldown <= --outage-cooldown-cap")
    if params.backoff_cap < max(1.0, params.backoff_base):
        raise SystemExit("--outage-backoff-cap must be >= --outage-backoff-base and >= 1")
    return params


def _systems(args: argparse.Namespace) -> list[str]:
    systems = [s.strip() for s in args.outage_systems.split(",") if s.strip()]
    if not systems or any(s not in SYSTEMS for s in systems):
        raise SystemExit(f"--outage-systems: choose from {', '.join(SYSTEMS)}, got {systems}")
    return systems


def config_text(address: str, tube: str, params: Params, *, tracked: bool) -> str:
    """The daemon's config; the untracked one is the same without the ``[api]`` table."""
    api_table = (
        f"[api.{_API}]\n"
        'hosts = ["127.0.0.1"]\n'
        f'tubes = ["{tube}"]\n'
        "pause_tubes = true\n"
        f"consecutive_failures = {params.failures}\n"
        f"cooldown = {params.cooldown:g}\n"
        f"cooldown_cap = {params.cooldown_cap:g}\n"
    )
    return (
        "[worker]\n"
        f'servers = ["{address}"]\n'
        "drain_timeout = 5\n"
        "[logging]\n"
        'format = "json"\n'
        'level = "info"\n'
        "job_lines = true\n"
        "[handlers]\n"
        f'"{HANDLER_NAME}" = "{HANDLER_TARGET}"\n' + (api_table if tracked else "") + "[[pool]]\n"
        'name = "bench"\n'
        f'tubes = ["{tube}"]\n'
        f"concurrency = {params.concurrency}\n"
        f'handler = "{HANDLER_NAME}"\n'
        "[pool.retry]\n"
        f"max_attempts = {params.max_attempts}\n"
        f"backoff_base = {params.backoff_base:g}\n"
        f"backoff_cap = {params.backoff_cap:g}\n"
    )


# --------------------------------------------------------------------------- one run


@dataclass
class Watched:
    """What the harness saw while the run went on (times relative to t0)."""

    recovered_at: float  # the API switched to 200
    done_at: float  # the first poll that saw no ready, delayed or reserved job
    timeline: list[dict[str, Any]] = field(default_factory=list)  # one sample per second
    worker_cpu: float = 0.0  # filled in after the watch
    buried_left: int = 0
    moved: dict[str, int] = field(default_factory=dict)  # beanstalkd's counters over the run


def _watch(
    admin: SyncBeanstalk, daemon: FlowDaemon, api: LocalApi, tube: str, t0: float, params: Params
) -> Watched:
    """Switch the API back on at t0 + outage, then poll until the backlog is done."""
    recover_at = t0 + params.outage
    recovered = 0.0
    timeline: list[dict[str, Any]] = []
    next_sample = t0
    last_deleted, last_progress = -1, t0
    while True:
        now = time.monotonic()
        time.sleep(params.poll if recovered else max(0.0, min(params.poll, recover_at - now)))
        now = time.monotonic()
        if not recovered and now >= recover_at:
            api.down = False
            recovered = time.monotonic()
            last_progress = recovered
        stats = admin.tube_stats(tube)
        now = time.monotonic()
        busy = stats.current_jobs_ready + stats.current_jobs_delayed + stats.current_jobs_reserved
        if now >= next_sample:
            next_sample += 1.0
            timeline.append(
                {
                    "t": round(now - t0, 2),
                    "ready": stats.current_jobs_ready,
                    "delayed": stats.current_jobs_delayed,
                    "reserved": stats.current_jobs_reserved,
                    "buried": stats.current_jobs_buried,
                    "pause_time_left": stats.pause_time_left,
                    "deleted": stats.cmd_delete,
                    "api_calls": api.count,
                }
            )
        if recovered and busy == 0:
            return Watched(recovered - t0, now - t0, timeline)
        if stats.cmd_delete != last_deleted:
            last_deleted, last_progress = stats.cmd_delete, now
        elif recovered and now - last_progress > _STALL_LIMIT:
            raise BenchError(
                f"no delete for {_STALL_LIMIT:.0f} s after recovery on {tube}: {stats}"
            )
        if recovered and now - recovered > params.max_after:
            raise BenchError(
                f"backlog of {tube} not done {params.max_after:.0f} s after recovery: {stats}"
            )
        daemon.child.check_alive("consuming")


@dataclass
class Sample:
    system: str
    run: int
    jobs: int
    dead_calls: int  # answered 503
    dead_calls_first_second: int  # of which in the outage's first second
    successes: int  # answered 200
    distinct_done: int  # jobs (by n) that got a 200
    releases: int  # beanstalkd cmd-release over the run: attempts burned
    buried: int
    deferred: int  # the daemon's 'job deferred' lines
    breaker_opens: int
    recovered_at: float
    first_success_after: float | None  # seconds from recovery to the first 200
    backlog_after: float  # seconds from recovery until the tube had nothing left to do
    worker_cpu: float
    extra: dict[str, Any] = field(default_factory=dict)


def _one_run(
    server: BeanstalkdProcess,
    api: LocalApi,
    system: str,
    run_no: int,
    params: Params,
    work: Path,
) -> Sample:
    tube = unique_tube(f"outage.{system}", run_no)
    text = config_text(server.address, tube, params, tracked=system == TRACKED)
    with SyncBeanstalk(server.host, server.port) as admin:
        api.down = True  # down before anything can call it
        prefill_calls(admin, tube, api.url, params.jobs)
        before = server_counters(admin)
        daemon = FlowDaemon(text, work, tube, params.concurrency)
        try:
            wait_started(admin, tube, [daemon], params.jobs)
            api.reset()
            cpu0 = process_cpu_seconds(daemon.pid)
            t0 = open_gate(admin, tube)
            watched = _watch(admin, daemon, api, tube, t0, params)
            watched.worker_cpu = process_cpu_seconds(daemon.pid) - cpu0
            daemon.child.stop(timeout=_STOP_TIMEOUT)
        finally:
            daemon.close()
        after = server_counters(admin)
        watched.buried_left = admin.tube_stats(tube).current_jobs_buried
    watched.moved = {k: after[k] - before[k] for k in before}
    return _sample(system, run_no, params, t0, watched, api.snapshot(), daemon)


def _sample(
    system: str,
    run_no: int,
    params: Params,
    t0: float,
    watched: Watched,
    calls: Sequence[Call],
    daemon: FlowDaemon,
) -> Sample:
    log = daemon.log.summary()
    moved = watched.moved
    dead = [c for c in calls if c.status == 503]
    ok = [c for c in calls if c.status == 200]
    done = {c.n for c in ok}
    recovered = t0 + watched.recovered_at
    problems = []
    if len(done) != params.jobs - watched.buried_left:
        problems.append(f"{len(done)} jobs got a 200, expected {params.jobs - watched.buried_left}")
    if moved["job_timeouts"]:
        problems.append(f"{moved['job_timeouts']} TTR timeouts")
    if log["job_released"] != moved["cmd_release"]:
        problems.append(
            f"log says {log['job_released']} released, beanstalkd {moved['cmd_release']}"
        )
    if problems:
        raise BenchError(f"{system} run {run_no}: " + "; ".join(problems))
    return Sample(
        system=system,
        run=run_no,
        jobs=params.jobs,
        dead_calls=len(dead),
        dead_calls_first_second=sum(1 for c in dead if c.at < t0 + 1.0),
        successes=len(ok),
        distinct_done=len(done),
        releases=moved["cmd_release"],
        buried=watched.buried_left,
        deferred=log["job_deferred"],
        breaker_opens=log["breaker_open"],
        recovered_at=watched.recovered_at,
        first_success_after=(ok[0].at - recovered) if ok else None,
        backlog_after=watched.done_at - watched.recovered_at,
        worker_cpu=watched.worker_cpu,
        extra={
            "server_counters_moved": moved,
            "log": log,
            "duplicates": len(ok) - len(done),
            "dead_calls_per_second": per_second([c.at for c in dead], t0),
            "timeline": watched.timeline,
            "config": daemon.config.read_text(),
        },
    )


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Row:
    system: str
    runs: int
    dead_calls: float  # medians over runs
    dead_low: int
    dead_high: int
    releases: float
    releases_high: int
    buried: float
    deferred: float
    breaker_opens: float
    first_success_after: float | None
    backlog_after: float
    backlog_high: float
    worker_cpu: float

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Row:
        firsts = [s.first_success_after for s in samples if s.first_success_after is not None]
        return cls(
            system=samples[0].system,
            runs=len(samples),
            dead_calls=statistics.median(s.dead_calls for s in samples),
            dead_low=min(s.dead_calls for s in samples),
            dead_high=max(s.dead_calls for s in samples),
            releases=statistics.median(s.releases for s in samples),
            releases_high=max(s.releases for s in samples),
            buried=statistics.median(s.buried for s in samples),
            deferred=statistics.median(s.deferred for s in samples),
            breaker_opens=statistics.median(s.breaker_opens for s in samples),
            first_success_after=statistics.median(firsts) if firsts else None,
            backlog_after=statistics.median(s.backlog_after for s in samples),
            backlog_high=max(s.backlog_after for s in samples),
            worker_cpu=statistics.median(s.worker_cpu for s in samples),
        )


def _num(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _table(rows: Sequence[Row], params: Params) -> str:
    untracked = next((r for r in rows if r.system == UNTRACKED), None)
    headers = [
        "system",
        "runs",
        "calls to dead API",
        "min-max",
        "per job",
        "x untracked",
        "attempts burned",
        "buried",
        "deferred",
        "breaker opens",
        "1st success after recovery s",
        "backlog done after recovery s",
        "max",
        "worker CPU s",
    ]
    body = [
        [
            r.system,
            str(r.runs),
            _num(r.dead_calls),
            f"{r.dead_low:,}-{r.dead_high:,}",
            f"{r.dead_calls / params.jobs:.2f}",
            f"{100 * r.dead_calls / untracked.dead_calls:.2f}%"
            if untracked and untracked.dead_calls
            else "—",
            _num(r.releases),
            _num(r.buried),
            _num(r.deferred),
            _num(r.breaker_opens),
            "—" if r.first_success_after is None else f"{r.first_success_after:.2f}",
            f"{r.backlog_after:.2f}",
            f"{r.backlog_high:.2f}",
            f"{r.worker_cpu:.1f}",
        ]
        for r in rows
    ]
    title = (
        f"scenario outage: {params.jobs:,} jobs, API down (503) for {params.outage:g} s from "
        f"the first reserve, then up; concurrency {params.concurrency}; tracked: "
        f"consecutive_failures {params.failures}, cooldown {params.cooldown:g} s doubling to "
        f"{params.cooldown_cap:g} s, pause_tubes; both: max_attempts {params.max_attempts}, "
        f"backoff {params.backoff_base:g} s doubling to {params.backoff_cap:g} s (full "
        "jitter); medians over runs"
    )
    notes = []
    if untracked is not None and untracked.breaker_opens:
        notes.append(
            "untracked: its breaker opens are the implicit breaker of host 127.0.0.1 (no [api] "
            "table); no job is bound to it, so every job still retries on its own backoff"
        )
    return "\n".join([title, format_table(headers, body), *notes, *_targets(rows, params)])


def _targets(rows: Sequence[Row], params: Params) -> list[str]:
    tracked = next((r for r in rows if r.system == TRACKED), None)
    untracked = next((r for r in rows if r.system == UNTRACKED), None)
    if tracked is None:
        return []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = ["targets (API outage), tracked daemon:"]
    if untracked is not None and untracked.dead_calls:
        share = tracked.dead_calls / untracked.dead_calls
        lines.append(
            f"  calls to the dead API <= 1 % of untracked: {_num(tracked.dead_calls)} / "
            f"{_num(untracked.dead_calls)} = {100 * share:.2f} % (worst run "
            f"{tracked.dead_high:,}) -> {verdict(tracked.dead_high <= 0.01 * untracked.dead_calls)}"
        )
    lines.append(
        f"  0 attempts burned: median {_num(tracked.releases)}, worst run "
        f"{tracked.releases_high:,} -> {verdict(tracked.releases_high == 0)}"
    )
    lines.append(
        f"  backlog done within one cool-down cap ({params.cooldown_cap:g} s) of recovery: "
        f"median {tracked.backlog_after:.2f} s, worst run {tracked.backlog_high:.2f} s -> "
        f"{verdict(tracked.backlog_high <= params.cooldown_cap)}"
    )
    return lines


# --------------------------------------------------------------------------- the scenario


def run(args: argparse.Namespace) -> int:
    params = _params(args)
    systems = _systems(args)
    samples: dict[str, list[Sample]] = {s: [] for s in systems}
    code_changes: list[str] = []
    code = fingerprint()
    with BeanstalkdProcess() as server, LocalApi() as api, workdir(args, NAME) as work:
        env = environment_info(server.binary)
        for run_no in range(1, args.runs + 1):
            for system in systems:  # interleaved: A B, A B, ...
                sample = _one_run(server, api, system, run_no, params, work)
                now_code = fingerprint()
                if now_code != code:
                    code_changes.append(f"{system} run {run_no}: {code} -> {now_code}")
                    print(
                        f"warning: the daemon's sources changed during {system} run {run_no}",
                        file=sys.stderr,
                    )
                    code = now_code
                sample.extra["code_fingerprint_after"] = now_code
                samples[system].append(sample)
                print(
                    f"run {run_no}/{args.runs}  {system:<21} dead calls {sample.dead_calls:>7,}  "
                    f"burned {sample.releases:>6,}  buried {sample.buried}  "
                    f"backlog {sample.backlog_after:.2f} s after recovery",
                    file=sys.stderr,
                    flush=True,
                )
    rows = [Row.of(v) for v in samples.values() if v]
    table = _table(rows, params)
    notes = [f"note: the daemon's sources changed: {c}" for c in code_changes]
    print("\n".join([table, *notes]))
    path = write_json(
        args.json_dir,
        NAME,
        {
            "scenario": NAME,
            "environment": {**env, "code_fingerprint": fingerprint(), "code_changes": code_changes},
            "parameters": {**asdict(params), "runs": args.runs, "systems": systems, "ttr": TTR},
            "summary": [asdict(r) for r in rows],
            "runs": {k: [asdict(s) for s in v] for k, v in samples.items()},
            "table": table,
        },
    )
    print(f"\nwrote {path}")
    return 0
