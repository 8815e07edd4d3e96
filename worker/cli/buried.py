"""``tubeworker buried TUBE``: each buried job with its age, attempts and why it was buried
(the records the daemon keeps in beanstalkd: ``tubeworker.burials``); ``tubeworker kick
TUBE --reason TEXT`` kicks only the jobs buried for a reason that contains TEXT."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from functools import partial

import greenstalk

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address
from tubeworker.burials import BurialRecord, read_records
from tubeworker.cli.admin import (
    EX_NOINPUT,
    EX_OK,
    AdminError,
    admin_client,
    fail,
    format_duration,
    render_table,
    run_admin,
    server_list,
)

__all__ = ["buried", "kick_by_reason"]


async def _records(
    address: Address, tube: str
) -> tuple[int, list[tuple[BurialRecord, p.JobStats]]]:
    """How many jobs of ``tube`` are buried on this server, and the records of those that
    have one."""
    async with admin_client(address) as client:
        try:
            count = (await client.stats_tube(tube)).current_jobs_buried
        except greenstalk.NotFoundError:
            raise AdminError(f"tube {tube!r} not found on {address}", EX_NOINPUT) from None
    async with admin_client(address) as reader:  # also cleans up stale records
        return count, await read_records(reader, tube)


def _attempts(stats: p.JobStats) -> int:
    return stats.releases + stats.timeouts + stats.buries


async def _buried(addresses: Sequence[Address], tube: str, as_json: bool) -> int:
    everything = []
    for address in addresses:
        count, records = await _records(address, tube)
        everything.append((address, count, records))
    if as_json:
        document = [
            {
                "server": str(address),
                "buried": count,
                "jobs": [
                    {
                        "id": record.job_id,
                        "age": stats.age,
                        "attempts": _attempts(stats),
                        "cause": record.cause,
                        "reason": record.reason,
                        "buried_at": record.buried_at,
                    }
                    for record, stats in records
                ],
            }
            for address, count, records in everything
        ]
        print(json.dumps(document, indent=2))
        return EX_OK
    for address, count, records in everything:
        rows = [
            [str(r.job_id), format_duration(s.age), str(_attempts(s)), r.cause, r.reason]
            for r, s in sorted(records, key=lambda pair: pair[0].job_id)
        ]
        print(f"{address}: {count} buried in {tube!r}")
        if rows:
            print(
                render_table(
                    ["ID", "AGE", "ATTEMPTS", "CAUSE", "REASON"], rows, left=frozenset({0, 3, 4})
                )
            )
        if count > len(records):
            print(
                f"({count - len(records)} buried with no recorded reason: by another "
                "client, or before tubeworker kept reasons)"
            )
    return EX_OK


def buried(args: argparse.Namespace) -> int:
    try:
        addresses = server_list(args)
    except AdminError as exc:
        return fail(exc)
    return run_admin(partial(_buried, addresses, args.tube, args.json))


async def _kick_by_reason(addresses: Sequence[Address], tube: str, text: str) -> int:
    kicked = 0
    for address in addresses:
        _, records = await _records(address, tube)
        matching = [r for r, _ in records if text in r.reason or text == r.cause]
        async with admin_client(address) as client:
            for record in matching:
                try:
                    await client.kick_job(record.job_id)
                except greenstalk.NotFoundError:
                    continue  # kicked or deleted meanwhile
                kicked += 1
                await client.delete(record.record_id)  # its reason is history now
    print(
        f"kicked {kicked} buried job{'s' if kicked != 1 else ''} of tube {tube!r} "
        f"whose reason matches {text!r}"
    )
    return EX_OK


def kick_by_reason(args: argparse.Namespace) -> int:
    try:
        addresses = server_list(args)
    except AdminError as exc:
        return fail(exc)
    return run_admin(partial(_kick_by_reason, addresses, args.tube, args.reason))
