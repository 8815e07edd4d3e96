"""``tubeworker buried TUBE``: each buried job with its age, attempts and why it was buried
(the latest of the records the daemon keeps in beanstalkd: ``tubeworker.burials``), with
``--verbose`` the traceback of each job a handler error buried; ``tubeworker kick TUBE
--reason TEXT`` kicks only the jobs whose latest burial was for a reason that contains
TEXT."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from functools import partial

from tubeworker.admin_ops import attempts, buried_records
from tubeworker.admin_ops import kick_by_reason as kick_by_reason_op
from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import JobStats
from tubeworker.burials import BurialRecord
from tubeworker.cli.admin import (
    EX_OK,
    AdminError,
    escape_text,
    fail,
    format_duration,
    render_table,
    run_admin,
    server_list,
)

__all__ = ["buried", "indented", "kick_by_reason", "one_line"]

Listing = tuple[Address, int, list[tuple[BurialRecord, JobStats]]]


def one_line(text: str) -> str:
    """``text`` safe in a table cell: control characters escaped, newlines and tabs too."""
    return escape_text(text).replace("\n", "\\n").replace("\t", "\\t")


def indented(text: str, prefix: str = "  ") -> str:
    """A traceback safe on a terminal (control characters escaped), each line indented."""
    return "\n".join(prefix + line for line in escape_text(text).rstrip("\n").split("\n"))


def _document(everything: Sequence[Listing]) -> str:
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
                    "attempt": record.attempt,
                    "buried_at": record.buried_at,
                    "traceback": record.traceback or None,
                    "id_key": record.id_key,
                }
                for record, stats in records
            ],
        }
        for address, count, records in everything
    ]
    return json.dumps(document, indent=2)


def _listing(
    tube: str,
    address: Address,
    count: int,
    records: list[tuple[BurialRecord, JobStats]],
    verbose: bool,
) -> str:
    records = sorted(records, key=lambda pair: pair[0].job_id)
    lines = [f"{address}: {count} buried in {tube!r}"]
    rows = [
        [
            str(r.job_id),
            format_duration(s.age),
            str(attempts(s)),
            one_line(r.cause),
            one_line(r.reason),
        ]
        for r, s in records
    ]
    if rows:
        lines.append(
            render_table(
                ["ID", "AGE", "ATTEMPTS", "CAUSE", "REASON"], rows, left=frozenset({0, 3, 4})
            )
        )
    if count > len(records):
        lines.append(
            f"({count - len(records)} buried with no recorded reason: by another "
            "client, or before tubeworker kept reasons)"
        )
    if verbose:
        for record, _ in records:
            if record.traceback:
                heading = f"job {record.job_id}, attempt {record.attempt}, {record.cause}:"
                lines += ["", one_line(heading), indented(record.traceback)]
    return "\n".join(lines)


async def _buried(addresses: Sequence[Address], tube: str, as_json: bool, verbose: bool) -> int:
    everything: list[Listing] = []
    for address in addresses:
        count, records = await buried_records(address, tube)
        everything.append((address, count, records))
    if as_json:
        print(_document(everything))
        return EX_OK
    for address, count, records in everything:
        print(_listing(tube, address, count, records, verbose))
    return EX_OK


def buried(args: argparse.Namespace) -> int:
    try:
        addresses = server_list(args)
    except AdminError as exc:
        return fail(exc)
    return run_admin(partial(_buried, addresses, args.tube, args.json, args.verbose))


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
