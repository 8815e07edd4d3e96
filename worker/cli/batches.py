"""``tubeworker batches [--server ...] [--json]``: the batches each server keeps, their
state and counts; ``tubeworker batch ID [--server ...] [--json]``: one batch in full
(its callbacks, fired or waiting). Read only (see tubeworker.batch_ops)."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from tubeworker.admin_ops import admin_client
from tubeworker.batch_ops import BatchRow, batch_row, list_batches
from tubeworker.beanstalk.client import Address
from tubeworker.cli.admin import (
    EX_NOINPUT,
    EX_OK,
    EXPECTED,
    _server_option,
    fail,
    render_table,
    run_admin,
    server_list,
)

__all__ = ["add_batch_commands", "batch", "batches"]


def add_batch_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = commands.add_parser(
        "batches",
        help="list the batches each server keeps: state, pending, succeeded, buried",
        description="A batch (docs/workflows.md#batches) is open until its maker closes it, "
        "running while jobs are pending, then complete (some buried) or succeeded. Kept "
        "until its retention passes (7 days by default).",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per batch")
    _server_option(listing, repeatable=True)
    one = commands.add_parser("batch", help="one batch: its counts and each callback")
    one.add_argument("id", metavar="ID", help="the batch's id (printed by the producer)")
    one.add_argument("--json", action="store_true", help="one JSON document")
    _server_option(one, repeatable=True)


def _age(row: BatchRow) -> str:
    age = row.age
    if age is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age / size:.0f}{unit}"
    return f"{age:.0f}s"


def _fired(row: BatchRow) -> str:
    shown = [
        f"{kind}:{'fired' if entry['fired'] else 'waiting'}"
        for kind, entry in row.callbacks.items()
    ]
    return " ".join(shown) or "-"


async def _list(addresses: list[Address], as_json: bool) -> int:
    rows: list[BatchRow] = []
    for address in addresses:
        async with admin_client(address) as client:
            rows += await list_batches(client, address)
    if as_json:
        for row in rows:
            print(json.dumps(row.as_json()))
        return EX_OK
    if not rows:
        print("no batches")
        return EX_OK
    table = [
        [
            row.id,
            row.state,
            str(row.pending),
            str(row.succeeded),
            str(row.buried),
            _age(row),
            _fired(row),
            row.server,
        ]
        for row in rows
    ]
    headers = ["BATCH", "STATE", "PENDING", "SUCCEEDED", "BURIED", "AGE", "CALLBACKS", "SERVER"]
    print(render_table(headers, table, left=frozenset({0, 1, 6, 7})))
    return EX_OK


async def _one(addresses: list[Address], batch_id: str, as_json: bool) -> int:
    for address in addresses:
        async with admin_client(address) as client:
            row = await batch_row(client, address, batch_id)
        if row is None:
            continue
        if as_json:
            print(json.dumps(row.as_json()))
            return EX_OK
        print(f"batch {row.id} on {row.server}: {row.state}")
        if row.description:
            print(f"  {row.description}")
        print(f"  pending {row.pending}, succeeded {row.succeeded}, buried {row.buried}, "
              f"age {_age(row)}")  # fmt: skip
        if row.abandoned:
            print(f"  {row.abandoned} jobs whose maker died while adding them (not counted)")
        for kind, entry in row.callbacks.items():
            state = "fired" if entry["fired"] else "waiting"
            print(f"  on_{kind}: {state} (job {entry['job']}, {entry['task']} in "
                  f"{entry['tube']})")  # fmt: skip
        return EX_OK
    where = ", ".join(str(a) for a in addresses)
    print(f"tubeworker: no batch {batch_id!r} on {where}", file=sys.stderr)
    return EX_NOINPUT


def batches(args: argparse.Namespace) -> int:
    try:
        addresses = server_list(args)
    except EXPECTED as exc:
        return fail(exc)
    return run_admin(partial(_list, addresses, args.json))


def batch(args: argparse.Namespace) -> int:
    try:
        addresses = server_list(args)
    except EXPECTED as exc:
        return fail(exc)
    return run_admin(partial(_one, addresses, args.id, args.json))
