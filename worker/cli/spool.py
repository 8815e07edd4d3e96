"""``tubeworker spool status PATH`` and ``tubeworker spool flush PATH [--server ...]``: a
producer's durable spool (jobs no server stored when they were enqueued), read and
delivered from the command line: on a host where no producer runs any more, or after a
crash."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tubeworker.admin_ops import format_duration
from tubeworker.cli.admin import EX_NOINPUT, EX_OK, EX_UNAVAILABLE, server_list

if TYPE_CHECKING:
    from tubeworker.producing.spool import Spool

__all__ = ["add_spool_command", "spool"]


def add_spool_command(commands: Any) -> None:
    parser = commands.add_parser(
        "spool", help="a producer's spool: status PATH | flush PATH [--server ...]"
    )
    parser.add_argument("action", choices=("status", "flush"))
    parser.add_argument("path", metavar="PATH", help="the spool file (Producer(spool=...))")
    parser.add_argument("--json", action="store_true", help="status: one JSON document")
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="flush: where to deliver (default: $TUBEWORKER_SERVERS, else 127.0.0.1:11300); "
        "repeatable: failover in this order",
    )


def spool(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        print(f"tubeworker: no spool at {path}", file=sys.stderr)
        return EX_NOINPUT
    from tubeworker.producing.spool import Spool  # (only this command pays for it)

    store = Spool(path)
    try:
        if args.action == "status":
            return _status(store, as_json=args.json)
        return _flush(store, args)
    finally:
        store.close()


def _status(store: Spool, *, as_json: bool) -> int:
    status = store.status()
    age = status.oldest_age()
    if as_json:
        document = {
            "path": status.path,
            "jobs": status.jobs,
            "bytes": status.bytes,
            "max_bytes": status.max_bytes,
            "oldest_age": None if age is None else round(age, 3),
            "refused": [{"spool_id": i, "reason": r} for i, r in status.refused],
        }
        print(json.dumps(document))
        return EX_OK
    oldest = "-" if age is None else f"{format_duration(int(age))} ago"
    print(
        f"spool {status.path}: {status.jobs} jobs waiting, {status.bytes} of "
        f"{status.max_bytes} bytes; oldest spooled {oldest}"
    )
    for spool_id, reason in status.refused:
        print(f"  kept, never delivered: spool job {spool_id}: {reason}")
    return EX_OK


def _flush(store: Spool, args: argparse.Namespace) -> int:
    from tubeworker.producing.sync_io import Producer

    started = time.monotonic()
    with Producer(server_list(args)) as producer:
        result = store.flush(lambda request: producer.put(
            request.tube, request.body, priority=request.priority, delay=request.delay,
            ttr=request.ttr,
        ))  # fmt: skip
    took = time.monotonic() - started
    print(f"delivered {result.delivered} jobs in {took:.2f} s; {result.left} left")
    if result.error is not None:
        print(f"tubeworker: stopped: {result.error}", file=sys.stderr)
        return EX_UNAVAILABLE
    return EX_OK
