"""``tubeworker peek ID`` and ``tubeworker peek TUBE ready|delayed|buried``: a job's stats,
why it was buried (for a buried job: its latest burial record, traceback included), and its
body shown safely, or with ``--raw`` the body's exact bytes (but for the payload fields
``TUBEWORKER_REDACT`` masks, in this as in every body shown)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

from tubeworker.admin_ops import burial_of, peek_job, redacting, task_of
from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import MAX_INT, JobStats
from tubeworker.burials import BurialRecord
from tubeworker.cli.admin import (
    EX_OK,
    EX_USAGE,
    AdminError,
    fail,
    format_duration,
    parse_int,
    render_body,
    run_admin,
    single_server,
)
from tubeworker.cli.buried import indented, one_line
from tubeworker.redact import redact_body

__all__ = ["peek", "render_job"]


def _timing(stats: JobStats) -> list[str]:
    delay = f"delay: {format_duration(stats.delay)}"
    if stats.state == "delayed":
        delay += f" (ready in {format_duration(stats.time_left)})"
    ttr = f"ttr: {format_duration(stats.ttr)}"
    if stats.state == "reserved":
        ttr += f" (runs out in {format_duration(stats.time_left)})"
    return [f"age: {format_duration(stats.age)}", delay, ttr]


def _burial(record: BurialRecord | None, now: float) -> list[str]:
    """Why a buried job was buried, from its record (safe for a terminal)."""
    if record is None:
        return [
            "burial: no recorded reason (buried by another client, or before tubeworker "
            "kept reasons)"
        ]
    ago = format_duration(max(0, int(now - record.buried_at)))
    lines = [
        f"burial: {one_line(record.cause)}, attempt {record.attempt}, {ago} ago",
        f"reason: {one_line(record.reason)}",
    ]
    if record.traceback:
        lines += ["traceback:", indented(record.traceback)]
    return lines


def render_job(
    job_id: int,
    stats: JobStats | None,
    body: bytes,
    limit: int,
    burial: BurialRecord | None = None,
    *,
    now: float | None = None,
) -> str:
    """The job's facts (for a buried job, why: ``burial``), then its body, safe for a
    terminal."""
    lines = [f"id: {job_id}"]
    if stats is None:
        lines.append("(its stats are gone: the job was deleted meanwhile)")
    else:
        urgency = "urgent" if stats.pri < 1024 else "not urgent"
        lines += [
            f"tube: {stats.tube}",
            f"state: {stats.state}",
            f"priority: {stats.pri} ({urgency})",
            *_timing(stats),
            f"counters: reserves {stats.reserves}, timeouts {stats.timeouts}, releases "
            f"{stats.releases}, buries {stats.buries}, kicks {stats.kicks}",
        ]
        if stats.state == "buried":
            lines += _burial(burial, time.time() if now is None else now)
    task = task_of(body)
    if task is not None:
        lines.append(f"task: {json.dumps(task, ensure_ascii=True)}")
    shown = render_body(body, limit)
    lines.append(f"body: {len(body)} bytes, {shown.kind}")
    if shown.text:
        lines.append(shown.text)
    if shown.note:
        lines.append(f"({shown.note})")
    return "\n".join(lines)


async def _peek(address: Address, target: str, state: str | None, raw: bool, limit: int) -> int:
    found, stats = await peek_job(address, target, state)
    if raw:
        sys.stdout.buffer.write(redact_body(found.body, redacting()))  # TUBEWORKER_REDACT
        sys.stdout.buffer.flush()
        return EX_OK
    burial = None
    if stats is not None and stats.state == "buried":
        burial = await burial_of(address, found.id, stats)
    print(render_job(found.id, stats, found.body, limit, burial), flush=True)
    return EX_OK


def peek(args: argparse.Namespace) -> int:
    try:
        address = single_server(args)
        limit = parse_int(args.limit, "--limit", 0, MAX_INT)
        if args.state is None and not args.target.isdigit():
            raise AdminError(
                f"peek {args.target}: give a job id, or a tube and a state: "
                f"peek {args.target} ready|delayed|buried",
                EX_USAGE,
            )
    except AdminError as exc:
        return fail(exc)
    return run_admin(partial(_peek, address, args.target, args.state, args.raw, limit))
