"""``tubeworker pause TUBE DURATION`` (``0`` resumes) on every server, and
``tubeworker pause --list``: the tubes with pause time left (tubeworker's own tubes only
with ``--all``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial

import greenstalk

from tubeworker.admin_ops import pause_tube
from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import validate_tube_name
from tubeworker.cli.admin import (
    EX_NOINPUT,
    EX_OK,
    EX_USAGE,
    EXPECTED,
    AdminError,
    admin_client,
    fail,
    format_duration,
    parse_duration,
    render_table,
    run_admin,
    server_list,
)
from tubeworker.tubes import is_internal

__all__ = ["pause"]


async def _pause(addresses: Sequence[Address], tube: str, seconds: int) -> int:
    done: list[Address] = []
    for address in addresses:
        if not await pause_tube(address, tube, seconds):
            if len(addresses) > 1:
                print(f"{address}: no tube {tube!r}", file=sys.stderr, flush=True)
            continue
        done.append(address)
    if not done:
        raise AdminError(
            f"tube {tube!r} not found (a tube exists while it has jobs, users or watchers)",
            EX_NOINPUT,
        )
    where = "" if len(addresses) == 1 else f" on {', '.join(str(a) for a in done)}"
    if seconds == 0:
        print(f"resumed tube {tube!r}{where}")
    else:
        print(f"paused tube {tube!r} for {format_duration(seconds)} ({seconds} s){where}")
    return EX_OK


async def _paused_rows(address: Address, with_server: bool, show_all: bool) -> list[list[str]]:
    rows: list[list[str]] = []
    async with admin_client(address) as client:
        for name in await client.list_tubes():
            if is_internal(name) and not show_all:
                continue
            try:
                stats = await client.stats_tube(name)
            except greenstalk.NotFoundError:
                continue  # freed meanwhile
            if stats.pause_time_left > 0:
                row = [name, format_duration(stats.pause), format_duration(stats.pause_time_left)]
                rows.append([*row, str(address)] if with_server else row)
    return rows


async def _list(addresses: Sequence[Address], show_all: bool) -> int:
    with_server = len(addresses) > 1
    rows: list[list[str]] = []
    for address in addresses:
        rows += await _paused_rows(address, with_server, show_all)
    if not rows:
        print("no paused tubes")
        return EX_OK
    headers = ["TUBE", "PAUSED FOR", "TIME LEFT", *(["SERVER"] if with_server else [])]
    print(render_table(headers, sorted(rows), left=frozenset({0, 3})))
    return EX_OK


def pause(args: argparse.Namespace) -> int:
    try:
        addresses = server_list(args)
        if args.all and not args.list:
            raise AdminError("--all goes with --list", EX_USAGE)
        if args.list:
            if args.tube is not None:
                raise AdminError("pause --list takes no TUBE", EX_USAGE)
            return run_admin(partial(_list, addresses, args.all))
        if args.tube is None or args.duration is None:
            raise AdminError("give TUBE and DURATION (0 resumes), or --list", EX_USAGE)
        validate_tube_name(args.tube)
        seconds = parse_duration(args.duration, "DURATION")
    except EXPECTED as exc:
        return fail(exc)
    return run_admin(partial(_pause, addresses, args.tube, seconds))
