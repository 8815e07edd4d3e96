"""``tubeworker stats [TUBE...]``: each server's summary and a table of its tubes; ``--json``;
``--watch [SECONDS]`` redraws in place on a terminal (plain repeated tables otherwise)
until Ctrl-C."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
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
    render_table,
    run_admin,
    server_list,
)

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
    error: str | None = None
    code: int = EX_OK

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "server": dataclasses.asdict(self.server) if self.server else None,
            "tubes": [dataclasses.asdict(t) for t in self.tubes],
            "missing": self.missing,
            "error": self.error,
        }


async def gather(address: Address, names: Sequence[str]) -> ServerReport:
    """One server's stats; a failure is kept in the report (the others are still shown)."""
    report = ServerReport(str(address))
    try:
        async with admin_client(address) as client:
            report.server = await client.stats()
            wanted = names or await client.list_tubes()
            for name in wanted:
                try:
                    report.tubes.append(await client.stats_tube(name))
                except greenstalk.NotFoundError:
                    if names:  # a listed tube freed meanwhile is simply gone
                        report.missing.append(name)
    except (AdminError, greenstalk.Error) as exc:
        report.error, report.code = error_line(exc)
    if report.missing and report.code == EX_OK:
        report.code = EX_NOINPUT
    return report


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
        f"  connections: {s.current_connections} ({s.current_producers} producers, "
        f"{s.current_workers} workers, {s.current_waiting} waiting)",
        "",
    ]
    rows = [_tube_row(t) for t in sorted(report.tubes, key=lambda t: t.name)]
    lines.append(render_table(_HEADERS, rows, left=frozenset({0, 7})))
    return "\n".join(lines)


def _render_all(reports: Sequence[ServerReport]) -> str:
    return "\n\n".join(render_report(r) for r in reports)


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


async def _once(addresses: Sequence[Address], names: Sequence[str], as_json: bool) -> int:
    reports = [await gather(address, names) for address in addresses]
    if as_json:
        print(json.dumps(_json_document(reports), indent=2))
    elif any(r.server for r in reports):
        print(_render_all([r for r in reports if r.server]))
    sys.stdout.flush()
    return _report_errors(reports)


def _frame(reports: Sequence[ServerReport], interval: float) -> str:
    stamp = time.strftime("%H:%M:%S")
    header = f"tubeworker stats: every {interval:g}s, {stamp} (Ctrl-C to stop)"
    body = _render_all(reports)
    problems = [f"error: {r.error}" for r in reports if r.error]
    problems += [f"tube {n!r} not found on {r.address}" for r in reports for n in r.missing]
    return "\n".join([header, "", body, *problems])


async def _watch(
    addresses: Sequence[Address], names: Sequence[str], as_json: bool, interval: float
) -> int:
    """Redraw until Ctrl-C; a server that goes away is shown as such and asked again."""
    tty = sys.stdout.isatty()
    while True:
        reports = [await gather(address, names) for address in addresses]
        if as_json:
            sys.stdout.write(json.dumps(_json_document(reports)) + "\n")
        elif tty:
            sys.stdout.write(_CLEAR + _frame(reports, interval) + "\n")
        else:
            sys.stdout.write(_frame(reports, interval) + "\n\n")
        sys.stdout.flush()
        await trio.sleep(interval)


def stats(args: argparse.Namespace) -> int:
    names: list[str] = list(args.tubes)
    try:
        addresses = server_list(args)
        interval = None if args.watch is None else parse_interval(args.watch, "--watch")
    except AdminError as exc:
        return fail(exc)
    if interval is None:
        return run_admin(partial(_once, addresses, names, args.json))
    try:
        return run_admin(partial(_watch, addresses, names, args.json, interval))
    except KeyboardInterrupt:
        return EX_OK
