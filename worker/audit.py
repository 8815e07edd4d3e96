"""The audit trail: every change made through the admin commands, the control plane or the
dashboard, as a record kept in beanstalkd (tube ``tubeworker.audit`` on the server acted
on; the newest ``MAX_AUDIT`` are kept) and, in the daemon, one ``audit`` log line.

A record: ``{"at": wall time, "who", "where", "what", "target", "result"}``. Who: the
dashboard's or control plane's role and token id (``operator token 1a2b3c4d``: see
control/access.py), or, for a command, the OS user; where: the peer's address or the
host's name. ``tubeworker audit`` lists them. A record that cannot be written (the server
is down) is said in one line and never fails the action it describes.

The commands have no daemon log: with ``TUBEWORKER_AUDIT_LOG`` set (a file, or ``-`` for
standard error) each of their records is also appended there as one JSON line, the same
fields as the daemon's ``audit`` log line.

Bounded: after each write the tube keeps its newest ``MAX_AUDIT`` records (the oldest are
deleted), so the trail costs a server at most that many small jobs.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from tubeworker.admin_ops import EXPECTED, admin_client
from tubeworker.beanstalk.client import Address, Client

__all__ = [
    "AUDIT_LOG_ENV",
    "AUDIT_TUBE",
    "MAX_AUDIT",
    "AuditRecord",
    "append_audit_line",
    "command_actor",
    "read_audit",
    "record",
]

AUDIT_TUBE: Final = "tubeworker.audit"
AUDIT_LOG_ENV: Final = "TUBEWORKER_AUDIT_LOG"
MAX_AUDIT: Final = 10_000
_MAX_FIELD: Final = 2_000

log = structlog.get_logger("tubeworker")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: float
    who: str
    where: str
    what: str
    target: str
    result: str

    def to_body(self) -> bytes:
        data = {key: (value[:_MAX_FIELD] if isinstance(value, str) else value)
                for key, value in asdict(self).items()}  # fmt: skip
        return json.dumps(data, separators=(",", ":")).encode()


def command_actor() -> tuple[str, str]:
    """Who and from where, for a command run on this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user} (command line)", socket.gethostname()


async def write_audit(client: Client, entry: AuditRecord) -> int:
    """Put the record; keep the tube within MAX_AUDIT by deleting its oldest."""
    await client.use(AUDIT_TUBE)
    record_id = await client.put(entry.to_body(), priority=2**31, ttr=60)
    stats = await client.stats_tube(AUDIT_TUBE)
    for _ in range(max(0, stats.current_jobs_ready - MAX_AUDIT)):
        oldest = await client.peek_ready()
        await client.delete(oldest.id)
    return record_id


async def record(
    address: Address,
    *,
    who: str,
    where: str,
    what: str,
    target: str,
    result: str,
    log_line: bool = True,
) -> str | None:
    """One audit record (and, in a daemon, its log line); why it could not be written (it
    never raises for a server that cannot take it), else None."""
    entry = AuditRecord(round(time.time(), 3), who, where, what, target, result)
    if log_line:
        log.info(
            "audit",
            who=who,
            where=where,
            what=what,
            server=str(address),
            target=target,
            result=result,
        )
    try:
        async with admin_client(address) as client:
            await write_audit(client, entry)
    except EXPECTED as exc:
        if log_line:
            log.warning("audit record not written", server=str(address), error=str(exc))
        return str(exc)
    return None


def append_audit_line(destination: str, entry: AuditRecord, server: str) -> str | None:
    """The record as one JSON ``audit`` line, appended to ``destination`` (a file; ``-``:
    standard error); why it could not be, else None."""
    stamp = datetime.fromtimestamp(entry.at, UTC).isoformat().replace("+00:00", "Z")
    line = json.dumps({"event": "audit", "timestamp": stamp, "server": server, **asdict(entry)})
    if destination == "-":
        print(line, file=sys.stderr)
        return None
    try:
        with open(destination, "a", encoding="utf-8") as out:
            out.write(line + "\n")
    except OSError as exc:
        return f"{AUDIT_LOG_ENV}: cannot append to {destination}: {exc.strerror or exc}"
    return None


async def read_audit(client: Client, *, since: float = 0.0) -> list[AuditRecord]:
    """The records kept on the client's server at or after ``since`` (wall time), oldest
    first, read without taking them (peek by id)."""
    from tubeworker.browse_ops import list_jobs

    found: list[AuditRecord] = []
    start = 1
    while True:
        page = await list_jobs(client, AUDIT_TUBE, ("ready",), start=start, limit=500)
        for job in page.jobs:
            entry = _decode(job.body)
            if entry is not None and entry.at >= since:
                found.append(entry)
        if not page.next_from:
            break
        start = page.next_from
    return found


def _decode(body: bytes) -> AuditRecord | None:
    try:
        data: Any = json.loads(body)
        return AuditRecord(
            float(data["at"]),
            str(data["who"]),
            str(data["where"]),
            str(data["what"]),
            str(data["target"]),
            str(data["result"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
