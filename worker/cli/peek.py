"""``tubeworker peek ID`` and ``tubeworker peek TUBE ready|delayed|buried``: a job's stats
and its body shown safely, or with ``--raw`` the body's exact bytes."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

import greenstalk

from tubeworker.beanstalk.client import Address, Client
from tubeworker.beanstalk.protocol import MAX_INT, Found, JobStats
from tubeworker.cli.admin import (
    EX_NOINPUT,
    EX_OK,
    EX_USAGE,
    AdminError,
    admin_client,
    fail,
    format_duration,
    parse_int,
    parse_job_id,
    render_body,
    run_admin,
    single_server,
)

__all__ = ["peek", "render_job"]


def _task_of(body: bytes) -> str | None:
    """The envelope's task, when the body is one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    task = data.get("task") if isinstance(data, dict) else None
    return task if isinstance(task, str) else None


def _timing(stats: JobStats) -> list[str]:
    delay = f"delay: {format_duration(stats.delay)}"
    if stats.state == "delayed":
        delay += f" (ready in {format_duration(stats.time_left)})"
    ttr = f"ttr: {format_duration(stats.ttr)}"
    if stats.state == "reserved":
        ttr += f" (runs out in {format_duration(stats.time_left)})"
    return [f"age: {format_duration(stats.age)}", delay, ttr]


def render_job(job_id: int, stats: JobStats | None, body: bytes, limit: int) -> str:
    """The job's facts, then its body, safe for a terminal."""
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
    task = _task_of(body)
    if task is not None:
        lines.append(f"task: {json.dumps(task, ensure_ascii=True)}")
    shown = render_body(body, limit)
    lines.append(f"body: {len(body)} bytes, {shown.kind}")
    if shown.text:
        lines.append(shown.text)
    if shown.note:
        lines.append(f"({shown.note})")
    return "\n".join(lines)


async def _find(client: Client, target: str, state: str | None) -> Found:
    if state is None:
        job_id = parse_job_id(target)
        try:
            return await client.peek(job_id)
        except greenstalk.NotFoundError:
            raise AdminError(f"job {job_id} not found", EX_NOINPUT) from None
    try:
        await client.stats_tube(target)
    except greenstalk.NotFoundError:
        raise AdminError(f"tube {target!r} not found", EX_NOINPUT) from None
    await client.use(target)
    peeks = {"ready": client.peek_ready, "delayed": client.peek_delayed}
    try:
        return await peeks.get(state, client.peek_buried)()
    except greenstalk.NotFoundError:
        raise AdminError(f"no {state} job in tube {target!r}", EX_NOINPUT) from None


async def _peek(address: Address, target: str, state: str | None, raw: bool, limit: int) -> int:
    async with admin_client(address) as client:
        found = await _find(client, target, state)
        try:
            stats: JobStats | None = await client.stats_job(found.id)
        except greenstalk.NotFoundError:
            stats = None
    if raw:
        sys.stdout.buffer.write(found.body)
        sys.stdout.buffer.flush()
    else:
        print(render_job(found.id, stats, found.body, limit), flush=True)
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
