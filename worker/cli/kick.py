"""``tubeworker kick TUBE [N]``: buried jobs back to ready (all of them by default), on every
server; ``tubeworker kick-job ID``: one buried or delayed job."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial

from tubeworker.admin_ops import kick_buried
from tubeworker.admin_ops import kick_job as kick_job_op
from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import MAX_INT
from tubeworker.cli.admin import (
    EX_NOINPUT,
    EX_OK,
    AdminError,
    fail,
    parse_int,
    parse_job_id,
    run_admin,
    server_list,
    single_server,
)

__all__ = ["kick", "kick_job"]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


async def _kick(addresses: Sequence[Address], tube: str, bound: int) -> int:
    total, found = 0, False
    for address in addresses:
        kicked = await kick_buried(address, tube, bound - total)
        if kicked is None:
            continue
        found = True
        total += kicked
        if len(addresses) > 1:
            print(f"{address}: kicked {_plural(kicked, 'job')}", flush=True)
        if total >= bound:
            break
    if not found:
        raise AdminError(f"tube {tube!r} not found", EX_NOINPUT)
    if total == 0:
        print(f"kicked 0 jobs: tube {tube!r} has no buried job")
    else:
        print(f"kicked {_plural(total, 'buried job')} of tube {tube!r}")
    return EX_OK


def kick(args: argparse.Namespace) -> int:
    try:
        addresses = server_list(args)
        bound = MAX_INT if args.count is None else parse_int(args.count, "N", 1, MAX_INT)
    except AdminError as exc:
        return fail(exc)
    return run_admin(partial(_kick, addresses, args.tube, bound))


async def _kick_job(address: Address, job_id: int) -> int:
    await kick_job_op(address, job_id)
    print(f"kicked job {job_id}")
    return EX_OK


def kick_job(args: argparse.Namespace) -> int:
    try:
        address = single_server(args)
        job_id = parse_job_id(args.id)
    except AdminError as exc:
        return fail(exc)
    return run_admin(partial(_kick_job, address, job_id))
