"""``tubeworker stats [TUBE...]``: each server's summary and a table of its tubes; ``--json``;
``--watch [SECONDS]`` redraws in place on a terminal (plain repeated tables otherwise)
until Ctrl-C.

tubeworker's own tubes (``tubeworker.buried.*`` burial records, ``tubeworker.limit.*``
tokens: :func:`tubeworker.tubes.is_internal`) are not work: they are left out of the table
and their jobs out of the summary's counts, unless named or ``--all``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import greenstalk
import trio

from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import ServerStats, TubeStats
from tubeworker.cli.admin import (
    EX_NOINPUT,
    EX_OK,
    AdminError,
    admin_client,
    error_line,
    fail,
    format_duration,
    parse_interval,
    plural,
    render_table,
    run_admin,
    server_list,
)
from tubeworker.tubes import is_internal

__all__ = ["ServerReport", "render_report", "stats"]

_CLEAR: Final = "\x1b[H\x1b[2J"  # cursor home, clear the screen
_HEADERS: Final = (
    "TUBE",
    "READY",
    "RESERVED",
    "DELAYED",
    "BURIED",
    "URGENT",
    "WAITING",
    "PAUSED",
    "TOTAL",
)


@dataclass(slots=True)
class ServerReport:
    address: str
    server: ServerStats | None = None
    tubes: list[TubeStats] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    # tubeworker's own tubes, left out of ``tubes`` and of ``server``'s job counts
    hidden: list[TubeStats] = field(default_factory=list)
    named: bool = False  # tubes were named: only those are in ``tubes``
    error: str | None = None
    code: int = EX_OK

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "server": dataclasses.asdict(self.server) if self.server else None,
            "tubes": [dataclasses.asdict(t) for t in self.tubes],
            "hidden_tubes": [t.name for t in self.hidden],
            "missing": self.missing,
            "error": self.error,
        }


async def gather(address: Address, names: Sequence[str], *, show_all: bool = False) -> ServerReport:
    """One server's stats; a failure is kept in the report (the others are still shown).

    Unless ``show_all``, tubeworker's own tubes are left out of the table (when not named)
    and their jobs are taken out of the server's counts, so that the summary counts work.
    """
    report = ServerReport(str(address), named=bool(names))
    try:
        async with admin_client(address) as client:
            server = await client.stats()
            listed = await client.list_tubes()
            internal = [] if show_all else [t for t in listed if is_internal(t)]
            wanted = names or [t for t in listed if t not in internal]
            for name in wanted:
                try:
                    report.tubes.append(await client.stats_tube(name))
                except greenstalk.NotFoundError:
                    if names:  # a listed tube freed meanwhile is simply gone
                        report.missing.append(name)
            for name in internal:
                with contextlib.suppress(greenstalk.NotFoundError):  # freed meanwhile
                    report.hidden.append(await client.stats_tube(name))
            report.server = _without(server, report.hidden)
    except (AdminError, greenstalk.Error) as exc:
        report.error, report.code = error_line(exc)
    if report.missing and report.code == EX_OK:
        report.code = EX_NOINPUT
    return report


def _without(server: ServerStats, tubes: Sequence[TubeStats]) -> ServerStats:
    """The server's job counts without those of ``tubes`` (read a moment later: never
    below 0). Jobs put into tubes since freed cannot be taken out of ``total_jobs``."""

    def less(count: int, of_tube: Callable[[TubeStats], int]) -> int:
        return max(0, count - sum(of_tube(t) for t in tubes))

    return dataclasses.replace(
        server,
        current_jobs_urgent=less(server.current_jobs_urgent, lambda t: t.current_jobs_urgent),
        current_jobs_ready=less(server.current_jobs_ready, lambda t: t.current_jobs_ready),
        current_jobs_reserved=less(server.current_jobs_reserved, lambda t: t.current_jobs_reserved),
        current_jobs_delayed=less(server.current_jobs_delayed, lambda t: t.current_jobs_delayed),
        current_jobs_buried=less(server.current_jobs_buried, lambda t: t.current_jobs_buried),
        total_jobs=less(server.total_jobs, lambda t: t.total_jobs),
    )


def _tube_row(tube: TubeStats) -> list[str]:
    paused = f"{format_duration(tube.pause_time_left)} left" if tube.pause_time_left else "-"
    counts = (
        tube.current_jobs_ready,
        tube.current_jobs_reserved,
        tube.current_jobs_delayed,
        tube.current_jobs_buried,
        tube.current_jobs_urgent,
        tube.current_waiting,
    )
    return [tube.name, *(str(c) for c in counts), paused, str(tube.total_jobs)]


def render_report(report: ServerReport) -> str:
    """The summary lines and the tube table of one server (no errors: they go to stderr)."""
    s = report.server
    if s is None:
        return f"server {report.address}: unavailable"
    draining = "; DRAINING (no new jobs)" if s.draining else ""
    lines = [
        f"server {report.address}: beanstalkd {s.version or '?'}, up "
        f"{format_duration(s.uptime)}, pid {s.pid}{draining}",
        f"  jobs: {s.current_jobs_ready} ready ({s.current_jobs_urgent} urgent), "
        f"{s.current_jobs_reserved} reserved, {s.current_jobs_delayed} delayed, "
        f"{s.current_jobs_buried} buried; {s.total_jobs} put since start; "
        f"max job size {s.max_job_size} bytes",
        f"  connections: {s.current_connections} ({plural(s.current_producers, 'producer')}, "
        f"{plural(s.current_workers, 'worker')}, {s.current_waiting} waiting)",
        f"  {_binlog(s)}",
        f"  {plural(s.job_timeouts, 'job timeout')} (TTRs run out) since start; CPU "
        f"{s.rusage_utime:.1f} s user, {s.rusage_stime:.1f} s system; host "
        f"{s.hostname or '?'}, id {s.id or '?'}",
    ]
    if report.hidden:
        jobs = sum(_jobs(t) for t in report.hidden)
        lines.append(
            f"  not counted above: tubeworker's own {plural(len(report.hidden), 'tube')} "
            f"({plural(jobs, 'job')}; --all counts and shows them)"
        )
    rows = [_tube_row(t) for t in sorted(report.tubes, key=lambda t: t.name)]
    if rows:
        lines += ["", render_table(_HEADERS, rows, left=frozenset({0, 7}))]
    return "\n".join(lines)


def _binlog(s: ServerStats) -> str:
    if not s.binlog_current_index:
        return "binlog: off (jobs live in memory only: a restart loses them)"
    kept = s.binlog_current_index - s.binlog_oldest_index + 1
    return (
        f"binlog: files {s.binlog_oldest_index}..{s.binlog_current_index} "
        f"({plural(kept, 'file')} kept, {s.binlog_max_size} bytes each at most); "
        f"{s.binlog_records_written} records written, {s.binlog_records_migrated} migrated"
    )


def _jobs(tube: TubeStats) -> int:
    return (
        tube.current_jobs_ready
        + tube.current_jobs_reserved
        + tube.current_jobs_delayed
        + tube.current_jobs_buried
    )


def _shown(report: ServerReport) -> bool:
    """A server's block is shown unless tubes were named and it has none of them (the
    error says so: no summary and empty table before it)."""
    return not report.named or bool(report.tubes)


def _render_all(reports: Sequence[ServerReport]) -> str:
    return "\n\n".join(render_report(r) for r in reports if _shown(r))


def _json_document(reports: Sequence[ServerReport]) -> dict[str, Any]:
    return {"servers": [r.as_json() for r in reports]}


def _report_errors(reports: Sequence[ServerReport]) -> int:
    code = EX_OK
    for report in reports:
        messages = [report.error] if report.error else []
        messages += [f"tube {name!r} not found on {report.address}" for name in report.missing]
        for message in messages:
            print(f"tubeworker: {message}", file=sys.stderr)
        code = code or report.code
    return code


@dataclass(frozen=True, slots=True)
class _Query:
    addresses: Sequence[Address]
    names: Sequence[str]
    show_all: bool  # tubeworker's own tubes too, counted as the server counts them

    async def reports(self) -> list[ServerReport]:
        return [await gather(a, self.names, show_all=self.show_all) for a in self.addresses]


async def _once(query: _Query, as_json: bool) -> int:
    reports = await query.reports()
    if as_json:
        print(json.dumps(_json_document(reports), indent=2))
    else:
        text = _render_all([r for r in reports if r.server])
        if text:
            print(text)
    sys.stdout.flush()
    return _report_errors(reports)


def _frame(reports: Sequence[ServerReport], interval: float) -> str:
    stamp = time.strftime("%H:%M:%S")
    header = f"tubeworker stats: every {interval:g}s, {stamp} (Ctrl-C to stop)"
    body = _render_all(reports)
    problems = [f"error: {r.error}" for r in reports if r.error]
    problems += [f"tube {n!r} not found on {r.address}" for r in reports for n in r.missing]
    return "\n".join([header, "", body, *problems])


async def _watch(query: _Query, as_json: bool, interval: float) -> int:
    """Redraw until Ctrl-C; a server that goes away is shown as such and asked again."""
    tty = sys.stdout.isatty()
    while True:
        reports = await query.reports()
        if as_json:
            sys.stdout.write(json.dumps(_json_document(reports)) + "\n")
        elif tty:
            sys.stdout.write(_CLEAR + _frame(reports, interval) + "\n")
        else:
            sys.stdout.write(_frame(reports, interval) + "\n\n")
        sys.stdout.flush()
        await trio.sleep(interval)


def stats(args: argparse.Namespace) -> int:
    try:
        query = _Query(server_list(args), list(args.tubes), args.all)
        interval = None if args.watch is None else parse_interval(args.watch, "--watch")
    except AdminError as exc:
        return fail(exc)
    if interval is None:
        return run_admin(partial(_once, query, args.json))
    try:
        return run_admin(partial(_watch, query, args.json, interval))
    except KeyboardInterrupt:
        return EX_OK
