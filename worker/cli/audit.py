"""``tubeworker audit [--since 1h] [--server ...] [--json]``: the audit trail kept in
beanstalkd (tube ``tubeworker.audit``): who changed what, from where, and what came of it."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial

from tubeworker.admin_ops import admin_client, parse_duration
from tubeworker.audit import AuditRecord, read_audit
from tubeworker.beanstalk.client import Address
from tubeworker.cli.admin import EX_OK, EXPECTED, _server_option, fail, run_admin, server_list

__all__ = ["add_audit_command", "audit"]


def add_audit_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "audit",
        help="list the audit trail: who changed what, from where",
        description="Every change made through the admin commands and the dashboard (kick, "
        "delete, put, pause, move, flush, schedule trigger/pause/resume...) is kept as a "
        "record in the server's tubeworker.audit tube (the newest 10,000): when, who (the "
        "OS user, or the dashboard's token), from where, what, on what, and the result.",
    )
    parser.add_argument("--since", metavar="DURATION", help="only the last DURATION (1h, 30m)")
    parser.add_argument("--json", action="store_true", help="one JSON object per record")
    _server_option(parser, repeatable=True)


async def _list(addresses: list[Address], since: float, as_json: bool) -> int:
    rows: list[tuple[str, AuditRecord]] = []
    for address in addresses:
        async with admin_client(address) as client:
            rows += [(str(address), entry) for entry in await read_audit(client, since=since)]
    rows.sort(key=lambda row: row[1].at)
    for server, entry in rows:
        if as_json:
            print(json.dumps({"server": server, **asdict(entry)}))
            continue
        when = datetime.fromtimestamp(entry.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{when}  {entry.who} from {entry.where}  {entry.what}  {entry.target}  "
              f"-> {entry.result}  [{server}]")  # fmt: skip
    if not rows and not as_json:
        print("no audit records" + (" in that time" if since else ""))
    return EX_OK


def audit(args: argparse.Namespace) -> int:
    try:
        addresses = server_list(args)
        since = time.time() - parse_duration(args.since, "--since") if args.since else 0.0
    except EXPECTED as exc:
        return fail(exc)
    return run_admin(partial(_list, addresses, since, args.json))
