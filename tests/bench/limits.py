"""Scenario ``limits``: the highest per-second rate an API saw against the limit configured
for it, with one daemon and with two, sharing the limit (``fleet = true``) or not.

    python -m tests.bench --scenario limits --runs 3 [--jobs 1000] [--limit-rate 50]

The API is tests/bench/local_api.py, served from this process on loopback, always up, each
answer after ``--limit-latency-ms`` (20 ms); it timestamps every request on arrival. Every
job of a fresh tube calls it once through ``job.http`` (tests/bench/flow_handlers.py). The
daemon's config limits that API:

    [api.partner]
    hosts = ["127.0.0.1"]
    tubes = ["TUBE"]        # every job of the tube calls it: admitted under the limit
    rate = 50               # --limit-rate: jobs per second that call this API
    burst = 10              # --limit-burst: extra jobs at once after a quiet spell
    max_concurrent = 8      # --limit-max-concurrent: jobs calling it at once
    fleet = true            # shared by every daemon on the beanstalkd (token tubes)

or, with ``--limit-form limit``, the same caps as a general ``[[limit]]`` table
(``name = "partner"``, ``tubes = ["TUBE"]``, ``apis = ["partner"]``, the four keys above)
beside an ``[api.partner]`` with only ``hosts`` and ``tubes``.

Cases (``--limit-cases``, default ``1:fleet,2:fleet,2:local``): DAEMONS:MODE, where MODE is
``fleet`` (fleet = true), ``local`` (fleet = false: each daemon limits alone, so two of them
let the API see about twice the rate) or ``none`` (no limit at all: what the API would see
without one). Each case runs on a beanstalkd of its own (so no token tube, pause or counter
is left over from another case), with the pool's concurrency (``--limit-concurrency``, 50)
far above rate x latency, so only the limit holds the rate down.

Timing is gated as in the other daemon scenarios (tests/bench/flow.py): t0 when every
daemon is waiting and the tube's pause is lifted; the run ends at the first poll that sees
no ready, delayed or reserved job. Reported per case (medians over runs):

- the most requests in any 1-s sliding window, and the same over windows starting at least
  1 s after the first request (a full bucket allows ``burst`` at once at the start), against
  the bound a token bucket allows in one second: ``burst + rate`` per limiter; and the
  most in any 0.1-s window against ``burst + rate / 10`` (how bursty: what ``burst`` is
  for). Times are arrivals at the API, so the daemon's own jitter between admitting a job
  and its request reaching the API is included (a few requests over a 1-s bound);
- the mean rate (requests - 1) / (last - first), and its ratio to the configured rate, and
  the median count per whole second after the first request with the first and last
  second left out (the steady rate, without the start's burst or a slow tail);
- the most requests the API was answering at once, against ``max_concurrent``;
- time to finish from t0, beside the ideal (jobs - burst) / rate per limiter;
- jobs done by each daemon, and attempts burned (``job released``), deferrals and burials
  from the daemons' logs: a limit should burn none.

Before any run, ``tubeworker check -c`` must accept a generated config (every form used):
until the limits feature exists, the scenario says so and exits 2 (``--limit-check-only``
runs just that check).
"""

from __future__ import annotations

import argparse
import math
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
    FlowDaemon,
    check_config,
    fingerprint,
    open_gate,
    prefill_calls,
    wait_started,
    workdir,
)
from tests.bench.local_api import LocalApi, max_in_window, per_second
from tests.support.beanstalkd import BeanstalkdProcess, find_beanstalkd

NAME = "limits"
DEFAULT_JOBS = 1000
_API = "partner"
_MODES = ("fleet", "local", "none")
_STALL_LIMIT = 30.0  # seconds without a delete before a run is declared stuck
_STOP_TIMEOUT = 30.0
_START_GRACE = 3.0  # after every daemon is ready, go on even if not every lane waits


@dataclass(frozen=True)
class Case:
    daemons: int
    mode: str  # fleet | local | none

    @property
    def name(self) -> str:
        return f"{self.daemons}:{self.mode}"

    @property
    def limiters(self) -> int:
        """How many independent limiters the API faces (0: unlimited)."""
        return {"fleet": 1, "local": self.daemons, "none": 0}[self.mode]


@dataclass(frozen=True)
class Params:
    jobs: int
    rate: float
    burst: int  # 0: not set (the daemon's default)
    max_concurrent: int  # 0: not set
    concurrency: int
    latency: float
    form: str  # api | limit
    poll: float

    @property
    def bucket(self) -> int:
        """Jobs a full bucket lets start at once: ``burst``, by default ceil(rate)."""
        return self.burst or max(1, math.ceil(self.rate))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scenario limits (an API's rate limit, one or two daemons)")
    group.add_argument("--limit-rate", type=float, default=50.0, help="rate, jobs/s (50)")
    group.add_argument("--limit-burst", type=int, default=10, help="burst (10; 0 leaves it unset)")
    group.add_argument(
        "--limit-max-concurrent",
        type=int,
        default=8,
        help="max_concurrent (8; 0 leaves it unset)",
    )
    group.add_argument(
        "--limit-concurrency",
        type=positive_int,
        default=50,
        help="each daemon's pool concurrency (50)",
    )
    group.add_argument(
        "--limit-latency-ms",
        type=float,
        default=20.0,
        help="the API's answer time (20 ms)",
    )
    group.add_argument(
        "--limit-cases",
        default="1:fleet,2:fleet,2:local",
        help="DAEMONS:MODE,... with MODE fleet, local or none (default 1:fleet,2:fleet,2:local)",
    )
    group.add_argument(
        "--limit-form",
        choices=("api", "limit"),
        default="api",
        help="where the caps are written: the [api.partner] table (default) or a [[limit]]",
    )
    group.add_argument(
        "--limit-poll-ms", type=float, default=20.0, help="end-of-run polling (20 ms)"
    )
    group.add_argument(
        "--limit-check-only",
        action="store_true",
        help="only ask `tubeworker check` whether the limit configs are accepted",
    )


def _params(args: argparse.Namespace) -> Params:
    params = Params(
        jobs=args.jobs,
        rate=args.limit_rate,
        burst=args.limit_burst,
        max_concurrent=args.limit_max_concurrent,
        concurrency=args.limit_concurrency,
        latency=args.limit_latency_ms / 1000,
        form=args.limit_form,
        poll=args.limit_poll_ms / 1000,
    )
    if params.rate <= 0 or params.burst < 0 or params.max_concurrent < 0:
        raise SystemExit("--limit-rate must be > 0, --limit-burst and --limit-max-concurrent >= 0")
    if params.latency < 0 or params.poll <= 0:
        raise SystemExit("--limit-latency-ms must be >= 0 and --limit-poll-ms > 0")
    return params


def _cases(text: str) -> list[Case]:
    cases = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        daemons, _, mode = item.partition(":")
        if not daemons.isdigit() or int(daemons) < 1 or mode not in _MODES:
            raise SystemExit(f"--limit-cases: {item!r} is not DAEMONS:{'|'.join(_MODES)}")
        cases.append(Case(int(daemons), mode))
    if not cases:
        raise SystemExit("--limit-cases: no case given")
    return cases


def config_text(address: str, tube: str, params: Params, mode: str) -> str:
    """One daemon's config (every daemon of a case has the same)."""
    caps = f"rate = {params.rate:g}\n"
    if params.burst:
        caps += f"burst = {params.burst}\n"
    if params.max_concurrent:
        caps += f"max_concurrent = {params.max_concurrent}\n"
    caps += f"fleet = {'true' if mode == 'fleet' else 'false'}\n"
    api = f'[api.{_API}]\nhosts = ["127.0.0.1"]\ntubes = ["{tube}"]\n'
    if mode == "none":
        limit = ""
    elif params.form == "api":
        api += caps
        limit = ""
    else:
        limit = f'[[limit]]\nname = "{_API}"\ntubes = ["{tube}"]\napis = ["{_API}"]\n' + caps
    return (
        "[worker]\n"
        f'servers = ["{address}"]\n'
        "drain_timeout = 5\n"
        "[logging]\n"
        'format = "json"\n'
        'level = "info"\n'
        "job_lines = true\n"
        "[handlers]\n"
        f'"{HANDLER_NAME}" = "{HANDLER_TARGET}"\n' + api + limit + "[[pool]]\n"
        'name = "bench"\n'
        f'tubes = ["{tube}"]\n'
        f"concurrency = {params.concurrency}\n"
        f'handler = "{HANDLER_NAME}"\n'
    )


def check_configs(params: Params, cases: Sequence[Case], work: Path) -> list[str]:
    """``tubeworker check`` on one config per mode used; the complaints (empty: all fine)."""
    complaints = []
    for mode in sorted({c.mode for c in cases}):
        path = work / f"check-{mode}.toml"
        path.write_text(config_text("127.0.0.1:11300", "bench.limits.check", params, mode))
        accepted, output = check_config(path)
        if not accepted:
            complaints.append(f"mode {mode} ({path.name}):\n{output}")
    return complaints


# --------------------------------------------------------------------------- one run


@dataclass
class Sample:
    case: str
    run: int
    jobs: int
    requests: int
    max_1s: int
    max_1s_at: float  # the busiest window's start, seconds after t0
    max_1s_steady: int  # windows starting >= 1 s after the first request
    max_tenth: int  # the most in any 0.1-s window: how bursty
    mean_rate: float  # (requests - 1) / (last - first)
    middle_rate: float  # median count per whole second after the first request, first and
    # last second left out (nan with fewer than 3 seconds)
    max_in_flight: int
    finish: float  # t0 until the tube had nothing left to do
    per_daemon: list[int]  # 'job done' lines of each daemon
    released: int
    deferred: int
    buried: int
    worker_cpu: float  # all daemons
    startup_all_waiting: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _wait_done(
    admin: SyncBeanstalk, daemons: Sequence[FlowDaemon], tube: str, t0: float, poll: float
) -> float:
    last_deleted, last_progress = -1, t0
    while True:
        time.sleep(poll)
        stats = admin.tube_stats(tube)
        now = time.monotonic()
        if stats.current_jobs_ready + stats.current_jobs_delayed + stats.current_jobs_reserved == 0:
            return now
        if stats.cmd_delete != last_deleted:
            last_deleted, last_progress = stats.cmd_delete, now
        elif now - last_progress > _STALL_LIMIT:
            raise BenchError(f"no delete for {_STALL_LIMIT:.0f} s on {tube}: {stats}")
        for d in daemons:
            d.child.check_alive("consuming")


def _one_run(api: LocalApi, case: Case, run_no: int, params: Params, work: Path) -> Sample:
    tube = unique_tube(f"limits.{case.daemons}{case.mode}", run_no)
    # A beanstalkd per run: no token tube, pause or count survives from another case.
    with BeanstalkdProcess() as server, SyncBeanstalk(server.host, server.port) as admin:
        text = config_text(server.address, tube, params, case.mode)
        api.down = False
        api.latency = params.latency
        prefill_calls(admin, tube, api.url, params.jobs)
        daemons: list[FlowDaemon] = []
        try:
            for i in range(case.daemons):
                daemons.append(FlowDaemon(text, work, f"{tube}.d{i + 1}", params.concurrency))
            all_waiting = wait_started(admin, tube, daemons, params.jobs, grace=_START_GRACE)
            api.reset()
            cpu0 = sum(process_cpu_seconds(d.pid) for d in daemons)
            t0 = open_gate(admin, tube)
            done_at = _wait_done(admin, daemons, tube, t0, params.poll)
            worker_cpu = sum(process_cpu_seconds(d.pid) for d in daemons) - cpu0
            for d in daemons:
                d.child.stop(timeout=_STOP_TIMEOUT)
        finally:
            for d in daemons:
                d.close()
        buried = admin.tube_stats(tube).current_jobs_buried
    calls = api.snapshot()
    times = [c.at for c in calls]
    if not times:
        raise BenchError(f"{case.name} run {run_no}: the API saw no request")
    done = {c.n for c in calls if c.status == 200}
    if len(done) != params.jobs - buried:
        raise BenchError(
            f"{case.name} run {run_no}: {len(done)} jobs got a 200, expected {params.jobs - buried}"
        )
    logs = [d.log.summary() for d in daemons]
    best, best_at = max_in_window(times)
    steady = [t for t in times if t >= times[0] + 1.0]
    span = times[-1] - times[0]
    return Sample(
        case=case.name,
        run=run_no,
        jobs=params.jobs,
        requests=len(calls),
        max_1s=best,
        max_1s_at=best_at - t0,
        max_1s_steady=max_in_window(steady)[0] if steady else 0,
        max_tenth=max_in_window(times, 0.1)[0],
        mean_rate=(len(times) - 1) / span if span > 0 else float("nan"),
        middle_rate=_middle_rate(times),
        max_in_flight=api.max_in_flight,
        finish=done_at - t0,
        per_daemon=[log["job_done"] for log in logs],
        released=sum(log["job_released"] for log in logs),
        deferred=sum(log["job_deferred"] for log in logs),
        buried=buried,
        worker_cpu=worker_cpu,
        startup_all_waiting=all_waiting,
        extra={
            "per_second": per_second(times, t0),
            "first_request_after_t0": times[0] - t0,
            "duplicates": sum(1 for c in calls if c.status == 200) - len(done),
            "non_200": sum(1 for c in calls if c.status != 200),
            "logs": logs,
            "config": text,
        },
    )


def _middle_rate(times: Sequence[float]) -> float:
    """The median count per whole second after the first request, leaving out the first
    second (a full bucket's burst) and the last (cut short): the steady rate."""
    counts = per_second(times, times[0])[1:-1]
    return float(statistics.median(counts)) if counts else float("nan")


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Row:
    case: Case
    runs: int
    max_1s: float  # medians over runs
    max_1s_high: int
    max_1s_steady: float
    max_tenth: float
    mean_rate: float
    middle_rate: float
    max_in_flight: float
    finish: float
    per_daemon: list[float]
    released: float
    deferred: float
    buried: float

    @classmethod
    def of(cls, case: Case, samples: Sequence[Sample]) -> Row:
        return cls(
            case=case,
            runs=len(samples),
            max_1s=statistics.median(s.max_1s for s in samples),
            max_1s_high=max(s.max_1s for s in samples),
            max_1s_steady=statistics.median(s.max_1s_steady for s in samples),
            max_tenth=statistics.median(s.max_tenth for s in samples),
            mean_rate=statistics.median(s.mean_rate for s in samples),
            middle_rate=statistics.median(s.middle_rate for s in samples),
            max_in_flight=statistics.median(s.max_in_flight for s in samples),
            finish=statistics.median(s.finish for s in samples),
            per_daemon=[
                statistics.median(s.per_daemon[i] for s in samples) for i in range(case.daemons)
            ],
            released=statistics.median(s.released for s in samples),
            deferred=statistics.median(s.deferred for s in samples),
            buried=statistics.median(s.buried for s in samples),
        )


def _num(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _cells(r: Row, params: Params) -> list[str]:
    n = r.case.limiters
    bound = f"{n * (params.rate + params.bucket):g}" if n else "—"
    bound_tenth = f"{n * (params.rate / 10 + params.bucket):g}" if n else "—"
    ideal = (params.jobs - n * params.bucket) / (n * params.rate) if n else 0.0
    conc = f" (≤{n * params.max_concurrent})" if n and params.max_concurrent else ""
    return [
        r.case.name,
        str(r.runs),
        bound,
        _num(r.max_1s),
        f"{r.max_1s_high:,}",
        _num(r.max_1s_steady),
        bound_tenth,
        _num(r.max_tenth),
        f"{r.mean_rate:,.1f}",
        f"{r.mean_rate / params.rate:.2f}x",
        "—" if math.isnan(r.middle_rate) else _num(r.middle_rate),
        _num(r.max_in_flight) + conc,
        f"{r.finish:.1f}",
        f"{max(ideal, 0.0):.1f}" if n else "—",
        "/".join(_num(v) for v in r.per_daemon),
        _num(r.released),
        _num(r.deferred),
        _num(r.buried),
    ]


def _table(rows: Sequence[Row], params: Params) -> str:
    headers = [
        "case",
        "runs",
        "bound any 1 s",
        "max any 1 s",
        "worst",
        "max after 1st s",
        "bound any 0.1 s",
        "max any 0.1 s",
        "mean req/s",
        "x rate",
        "req/s middle",
        "max in flight",
        "finish s",
        "ideal s",
        "jobs per daemon",
        "released",
        "deferred",
        "buried",
    ]
    caps = f"rate {params.rate:g}/s, burst {params.burst or 'unset'}, max_concurrent " + (
        f"{params.max_concurrent}" if params.max_concurrent else "unset"
    )
    title = (
        f"scenario limits: {params.jobs:,} jobs, each one call to a local API answering in "
        f"{1000 * params.latency:g} ms; limit ({params.form} form) {caps}; pool concurrency "
        f"{params.concurrency} per daemon; medians over runs. Case DAEMONS:MODE (fleet: one "
        "limit shared through beanstalkd; local: each daemon limits alone; none: no limit). "
        "Bound: a token bucket's burst + rate x window per limiter; mean: (requests - 1) / "
        "(last - first request); middle: median count per whole second, first and last left "
        "out; ideal: (jobs - burst) / rate per limiter (finishing sooner means the limit let "
        "more through)"
    )
    return "\n".join([title, format_table(headers, [_cells(r, params) for r in rows])])


# --------------------------------------------------------------------------- the scenario


def _report_not_runnable(complaints: Sequence[str]) -> int:
    print(
        "scenario limits is not runnable yet: `tubeworker check` rejects the limit config "
        "(the limits feature is not in this tree yet?):\n\n" + "\n\n".join(complaints),
        file=sys.stderr,
    )
    return 2


def run(args: argparse.Namespace) -> int:
    params = _params(args)
    cases = _cases(args.limit_cases)
    samples: dict[Case, list[Sample]] = {c: [] for c in cases}
    code_changes: list[str] = []
    with workdir(args, NAME) as work:
        complaints = check_configs(params, cases, work)
        if complaints:
            return _report_not_runnable(complaints)
        if args.limit_check_only:
            print("tubeworker check accepts the limit configs: the scenario can run")
            return 0
        code = fingerprint()
        with LocalApi(latency=params.latency) as api:
            for run_no in range(1, args.runs + 1):
                for case in cases:  # interleaved: A B C, A B C, ...
                    sample = _one_run(api, case, run_no, params, work)
                    now_code = fingerprint()
                    if now_code != code:
                        code_changes.append(f"{case.name} run {run_no}: {code} -> {now_code}")
                        print(
                            f"warning: the daemon's sources changed during {case.name} "
                            f"run {run_no}",
                            file=sys.stderr,
                        )
                        code = now_code
                    samples[case].append(sample)
                    print(
                        f"run {run_no}/{args.runs}  {case.name:<8} max {sample.max_1s:>5} in 1 s, "
                        f"mean {sample.mean_rate:7.1f}/s, finished in {sample.finish:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
        env = environment_info(find_beanstalkd())
    rows = [Row.of(c, v) for c, v in samples.items() if v]
    table = _table(rows, params)
    print("\n".join([table, *(f"note: the daemon's sources changed: {c}" for c in code_changes)]))
    path = write_json(
        args.json_dir,
        NAME,
        {
            "scenario": NAME,
            "environment": {**env, "code_fingerprint": fingerprint(), "code_changes": code_changes},
            "parameters": {
                **asdict(params),
                "runs": args.runs,
                "cases": [c.name for c in cases],
            },
            "summary": [{**asdict(r), "case": r.case.name} for r in rows],
            "runs": {c.name: [asdict(s) for s in v] for c, v in samples.items()},
            "table": table,
        },
    )
    print(f"\nwrote {path}")
    return 0
