"""``tubeworker buried TUBE``: each buried job with its age, attempts and why it was buried
(the records the daemon keeps in beanstalkd: ``tubeworker.burials``); ``tubeworker kick
TUBE --reason TEXT`` kicks only the jobs buried for a reason that contains TEXT."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from functools import partial

from tubeworker.admin_ops import attempts, buried_records
from tubeworker.admin_ops import kick_by_reason as kick_by_reason_op
from tubeworker.beanstalk.client import Address
from tubeworker.cli.admin import (
    EX_OK,
    AdminError,
    fail,
    format_duration,
    render_table,
    run_admin,
    server_list,
)

__all__ = ["buried", "kick_by_reason"]


async def _buried(addresses: Sequence[Address], tube: str, as_json: bool) -> int:
    everything = []
    for address in addresses:
        count, records = await buried_records(address, tube)
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
                        "attempts": attempts(stats),
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
            [str(r.job_id), format_duration(s.age), str(attempts(s)), r.cause, r.reason]
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
        kicked += await kick_by_reason_op(address, tube, text)
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
