"""The job browser on the command line: ``tubeworker jobs`` (a tube's jobs by state, a
page at a time, with their bodies), ``move`` (to another tube), ``flush`` (tubes by
pattern) and ``tail`` (jobs as they arrive, without taking them). See
tubeworker.browse_ops for how a listing scans ids, and what a move guarantees."""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from typing import Any

import greenstalk
import trio

from tubeworker.admin_ops import redacting
from tubeworker.browse_ops import CHUNK, STATES, flush_tubes, list_jobs, move_jobs
from tubeworker.cli.admin import (
    EX_NOINPUT,
    EX_OK,
    EXPECTED,
    admin_client,
    confirmed,
    fail,
    format_duration,
    plural,
    render_body,
    render_table,
    run_admin,
    single_server,
)
from tubeworker.redact import redact_text

__all__ = ["add_browse_commands", "flush", "jobs", "move", "tail"]

EX_DECLINED = 1
_SERVER_HELP = (
    "beanstalkd address (default: the first of $TUBEWORKER_SERVERS, else 127.0.0.1:11300)"
)


def _common(parser: argparse.ArgumentParser, *, states: tuple[str, ...]) -> None:
    parser.add_argument("--server", metavar="HOST:PORT", help=_SERVER_HELP)
    parser.add_argument(
        "--state",
        action="append",
        choices=STATES,
        help=f"which jobs (repeatable; default: {', '.join(states)})",
    )


def add_browse_commands(commands: Any) -> None:
    jobs = commands.add_parser(
        "jobs",
        help="list a tube's jobs (by id scan: one stats-job per id, "
        f"{CHUNK} per round trip), with their stats and bodies",
    )
    jobs.add_argument("tube", metavar="TUBE")
    _common(jobs, states=("ready", "delayed", "buried"))
    jobs.add_argument("--from", dest="start", type=int, default=1, metavar="ID")
    jobs.add_argument("--limit", type=int, default=50, metavar="N", help="jobs per page")
    jobs.add_argument("--grep", metavar="TEXT", help="only jobs whose body contains TEXT")
    jobs.add_argument("--json", action="store_true", help="one JSON document")
    move = commands.add_parser(
        "move", help="move (or --copy) a tube's jobs to another tube, keeping pri/delay/ttr"
    )
    move.add_argument("tube", metavar="TUBE")
    move.add_argument("--to", required=True, metavar="TUBE")
    _common(move, states=("ready", "delayed", "buried"))
    move.add_argument("--reason", metavar="TEXT", help="only buried jobs buried for this")
    move.add_argument("--copy", action="store_true", help="leave the originals")
    move.add_argument("--kick", action="store_true", help="buried jobs arrive ready")
    move.add_argument("--limit", type=int, metavar="N", help="at most N jobs")
    move.add_argument("--dry-run", action="store_true", help="count, move nothing")
    move.add_argument("-y", "--yes", action="store_true", help="do not ask (scripts)")
    flush = commands.add_parser(
        "flush", help="delete the jobs of every tube matching a pattern ('tenant-*')"
    )
    flush.add_argument("pattern", metavar="PATTERN")
    _common(flush, states=("buried",))
    flush.add_argument("--all", action="store_true", help="tubeworker's own tubes too")
    flush.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    flush.add_argument("-y", "--yes", action="store_true", help="do not ask (scripts)")
    tail = commands.add_parser(
        "tail", help="print a tube's jobs as they arrive, without taking them (--take: do)"
    )
    tail.add_argument("tube", metavar="TUBE")
    tail.add_argument("--server", metavar="HOST:PORT", help=_SERVER_HELP)
    tail.add_argument("--take", action="store_true", help="reserve and delete what is shown")
    tail.add_argument("--interval", type=float, default=0.2, metavar="SECONDS")
    tail.add_argument("--count", type=int, metavar="N", help="stop after N jobs")


def _states(args: argparse.Namespace, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(args.state) if args.state else default


def _snippet(body: bytes, width: int = 60) -> str:
    rendered = render_body(body, 400)
    text = " ".join(rendered.text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def jobs(args: argparse.Namespace) -> int:
    try:
        address = single_server(args)
    except EXPECTED as exc:
        return fail(exc)
    states = _states(args, ("ready", "delayed", "buried"))

    async def main() -> int:
        started = time.monotonic()
        async with admin_client(address) as client:
            page = await list_jobs(
                client, args.tube, states, start=args.start, limit=args.limit, grep=args.grep
            )
        took = time.monotonic() - started
        if args.json:
            masked = redacting()  # TUBEWORKER_REDACT
            document = {
                "server": str(address),
                "jobs": [
                    {
                        "id": j.id,
                        "state": j.stats.state,
                        "priority": j.stats.pri,
                        "age": j.stats.age,
                        "time_left": j.stats.time_left,
                        "ttr": j.stats.ttr,
                        "reserves": j.stats.reserves,
                        "body": redact_text(j.body.decode("utf-8", errors="replace"), masked),
                    }
                    for j in page.jobs
                ],
                "next_from": page.next_from,
                "scanned": page.scanned,
            }
            print(json.dumps(document))
            return EX_OK
        rows = [
            [
                str(j.id),
                j.stats.state,
                str(j.stats.pri),
                format_duration(j.stats.age),
                format_duration(j.stats.time_left) if j.stats.state == "delayed" else "-",
                str(j.stats.reserves),
                _snippet(j.body),
            ]
            for j in page.jobs
        ]
        if rows:
            headers = ["ID", "STATE", "PRI", "AGE", "DELAY LEFT", "RESERVES", "BODY"]
            print(render_table(headers, rows, left=frozenset({1, 6})))
        found = plural(len(rows), "job")
        print(f"{found} of {args.tube!r} ({', '.join(states)}); {page.scanned} ids scanned "
              f"in {took:.2f} s", file=sys.stderr)  # fmt: skip
        if page.next_from is not None:
            print(f"more: --from {page.next_from}", file=sys.stderr)
        return EX_OK

    return run_admin(main)


def move(args: argparse.Namespace) -> int:
    try:
        address = single_server(args)
    except EXPECTED as exc:
        return fail(exc)
    states = _states(args, ("ready", "delayed", "buried"))
    if args.reason is not None:
        states = ("buried",)
    run = partial(_move, address, args, states)
    counted = trio.run(run, True)
    if counted == 0:
        print(f"no job of {args.tube!r} to move ({', '.join(states)})")
        return EX_OK
    if args.dry_run:
        print(f"would move {plural(counted, 'job')} of {args.tube!r} to {args.to!r}")
        return EX_OK
    verb = "copy" if args.copy else "move"
    question = f"{verb} {plural(counted, 'job')} of {args.tube!r} to {args.to!r}?"
    try:
        if not confirmed(question, yes=args.yes):
            print("nothing moved", file=sys.stderr)
            return EX_DECLINED
    except EXPECTED as exc:
        return fail(exc)
    return run_admin(partial(run, False))


async def _move(address: Any, args: argparse.Namespace, states: tuple[str, ...], dry: bool) -> int:
    async with admin_client(address) as client, admin_client(address) as reader:
        result = await move_jobs(
            client, args.tube, args.to, states=states, reason=args.reason, copy=args.copy,
            kick=args.kick, dry_run=dry, limit=args.limit, reader=reader,
        )  # fmt: skip
    if dry:
        return result.matched
    verb = "copied" if args.copy else "moved"
    print(f"{verb} {plural(len(result.moved), 'job')} of {args.tube!r} to {args.to!r}")
    for job_id, why in result.skipped:
        print(f"  skipped job {job_id}: {why}", file=sys.stderr)
    return EX_OK


def flush(args: argparse.Namespace) -> int:
    try:
        address = single_server(args)
    except EXPECTED as exc:
        return fail(exc)
    states = _states(args, ("buried",))

    async def count() -> list[tuple[str, int]]:
        async with admin_client(address) as client:
            found = await flush_tubes(
                client, args.pattern, states, dry_run=True, include_internal=args.all
            )
        return [(c.tube, c.jobs) for c in found if c.jobs]

    counts = trio.run(count)
    total = sum(n for _, n in counts)
    for tube, n in counts:
        print(f"  {tube}: {plural(n, 'job')}")
    if not total:
        print(f"no {'/'.join(states)} job in tubes matching {args.pattern!r}")
        return EX_OK if counts or args.dry_run else EX_NOINPUT
    question = (
        f"delete {plural(total, 'job')} ({'/'.join(states)}) from "
        f"{plural(len(counts), 'tube')} matching {args.pattern!r}?"
    )
    if args.dry_run:
        print(f"would {question[:-1]}")
        return EX_OK
    try:
        if not confirmed(question, yes=args.yes):
            print("nothing deleted", file=sys.stderr)
            return EX_DECLINED
    except EXPECTED as exc:
        return fail(exc)

    async def delete() -> int:
        async with admin_client(address) as client:
            done = await flush_tubes(client, args.pattern, states, include_internal=args.all)
        deleted = sum(c.jobs for c in done)
        print(f"deleted {plural(deleted, 'job')} from {plural(len(done), 'tube')}")
        return EX_OK

    return run_admin(delete)


def tail(args: argparse.Namespace) -> int:
    try:
        address = single_server(args)
    except EXPECTED as exc:
        return fail(exc)

    async def main() -> int:
        shown = 0
        async with admin_client(address) as client:
            if args.take:
                await client.watch(args.tube)
                await client.ignore("default")
                print(f"taking the jobs of {args.tube!r} (reserved and DELETED)", file=sys.stderr)
                while args.count is None or shown < args.count:
                    try:
                        job = await client.reserve(1)
                    except (greenstalk.TimedOutError, greenstalk.DeadlineSoonError):
                        continue  # nothing yet
                    print(f"{job.id}\t{_snippet(job.body, 200)}", flush=True)
                    await client.delete(job.id)
                    shown += 1
                return EX_OK
            start = (await client.stats()).total_jobs + 1  # jobs put from now on
            print(f"watching {args.tube!r} from job {start} (nothing is taken)", file=sys.stderr)
            while args.count is None or shown < args.count:
                page = await list_jobs(client, args.tube, STATES, start=start, limit=100)
                for found in page.jobs:
                    print(f"{found.id}\t{found.stats.state}\t{_snippet(found.body, 200)}",
                          flush=True)  # fmt: skip
                    shown += 1
                    start = found.id + 1
                    if args.count is not None and shown >= args.count:
                        break
                if not page.jobs:
                    await trio.sleep(args.interval)
        return EX_OK

    return run_admin(main)
