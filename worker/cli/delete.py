"""``tubeworker delete ID...`` and ``tubeworker delete --buried TUBE`` (every buried job of a
tube, on every server, after a confirmation; ``--yes`` for scripts).

There is no ``bury``: only the connection that reserved a job may bury it (and a job
reserved by a worker cannot be deleted by anyone else either: docs/beanstalkd.md#who-may-delete).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial

import trio

from tubeworker.admin_ops import count_buried, delete_buried, delete_job
from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import validate_tube_name
from tubeworker.cli.admin import (
    EX_NOINPUT,
    EX_OK,
    EX_USAGE,
    EXPECTED,
    AdminError,
    admin_client,
    confirmed,
    fail,
    parse_job_id,
    plural,
    run_admin,
    server_list,
)

__all__ = ["delete"]

EX_DECLINED = 1  # the user answered no: nothing was deleted


async def _delete_ids(address: Address, ids: Sequence[int]) -> int:
    code = EX_OK
    async with admin_client(address) as client:
        for job_id in ids:
            if not await delete_job(client, job_id):
                print(
                    f"tubeworker: job {job_id} not found (or reserved by a worker: only "
                    "its connection may delete it)",
                    file=sys.stderr,
                    flush=True,
                )
                code = EX_NOINPUT
            else:
                print(f"deleted job {job_id}", flush=True)
    return code


async def _count_buried(addresses: Sequence[Address], tube: str) -> list[tuple[Address, int]]:
    """(server, buried jobs) for each server that has the tube."""
    counts: list[tuple[Address, int]] = []
    for address in addresses:
        count = await count_buried(address, tube)
        if count is not None:
            counts.append((address, count))
    if not counts:
        raise AdminError(f"tube {tube!r} not found", EX_NOINPUT)
    return counts


async def _delete_buried(counts: Sequence[tuple[Address, int]], tube: str) -> int:
    """Delete from the head of each server's buried list as many jobs as were confirmed:
    jobs buried after the question are not part of the answer."""
    total = 0
    for address, count in counts:
        deleted = await delete_buried(address, tube, count)
        if len(counts) > 1:
            print(f"{address}: deleted {plural(deleted, 'job')}", flush=True)
        total += deleted
    print(f"deleted {plural(total, 'buried job')} of tube {tube!r}")
    return EX_OK


def _delete_buried_command(args: argparse.Namespace, addresses: list[Address]) -> int:
    tube: str = args.buried
    validate_tube_name(tube)
    counts = trio.run(_count_buried, addresses, tube)
    total = sum(count for _, count in counts)
    if total == 0:
        print(f"tube {tube!r} has no buried job: nothing to delete")
        return EX_OK
    where = "" if len(addresses) == 1 else f" on {plural(len(counts), 'server')}"
    question = f"delete {plural(total, 'buried job')} of tube {tube!r}{where}?"
    if not confirmed(question, yes=args.yes):
        print("nothing deleted", file=sys.stderr)
        return EX_DECLINED
    return run_admin(partial(_delete_buried, counts, tube))


def delete(args: argparse.Namespace) -> int:
    try:
        addresses = server_list(args)
        if args.buried is not None:
            if args.ids:
                raise AdminError("give job ids or --buried TUBE, not both", EX_USAGE)
            return _delete_buried_command(args, addresses)
        if not args.ids:
            raise AdminError("give job ids to delete, or --buried TUBE", EX_USAGE)
        if len(addresses) > 1:
            raise AdminError(
                "job ids belong to one server: name it with a single --server", EX_USAGE
            )
        ids = [parse_job_id(text) for text in args.ids]
    except EXPECTED as exc:
        return fail(exc)
    return run_admin(partial(_delete_ids, addresses[0], ids))
