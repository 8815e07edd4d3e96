"""Browsing and bulk operations on beanstalkd's jobs, below the CLI (``tubeworker jobs``,
``move``, ``flush``, ``tail``) and the dashboard.

beanstalkd cannot list a tube's jobs; it answers ``stats-job`` for any id. So a listing
scans ids, CHUNK at a time in one pipelined write each, keeps those of the tube and state
asked for, and peeks their bodies (one more write). Ids are handed out in order from 1,
so the scan runs from ``start`` to the highest id in use: ``total-jobs`` since the server
started, or beyond it while ids still answer (a server restarted on its binlog goes on
from its highest id). The cost is one ``stats-job`` per id scanned, whatever the tube:
about 10,000 ids in a few tens of milliseconds on loopback, a million in seconds.

A move puts each job into the other tube (same priority, what is left of its delay, same
TTR; a buried one is buried again there, unless ``kick``) and only then deletes the
original, job by job: interrupted at any point, a job is in one tube, or (the one in
flight) in both, never in neither.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Final

import greenstalk

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client
from tubeworker.burials import read_record
from tubeworker.tubes import is_internal

__all__ = [
    "CHUNK",
    "STATES",
    "FlushCount",
    "ListedJob",
    "MoveResult",
    "Page",
    "flush_tubes",
    "list_jobs",
    "move_jobs",
    "scan_jobs",
]

CHUNK: Final = 500  # stats-job commands per write
STATES: Final = ("ready", "delayed", "buried", "reserved")


@dataclass(frozen=True, slots=True)
class ListedJob:
    stats: p.JobStats
    body: bytes

    @property
    def id(self) -> int:
        return self.stats.id


@dataclass(frozen=True, slots=True)
class Page:
    jobs: tuple[ListedJob, ...]
    next_from: int | None  # where the next page starts; None: the scan reached the end
    scanned: int  # ids asked about


async def _highest_id(client: Client) -> int:
    return (await client.stats()).total_jobs


async def scan_jobs(
    client: Client, tube: str, states: Collection[str], start: int = 1
) -> AsyncIterator[tuple[int, p.JobStats]]:
    """(id, stats) of every job of ``tube`` in ``states`` from id ``start`` up, in id
    order."""
    highest = await _highest_id(client)
    current = max(1, start)
    while True:
        ids = range(current, current + CHUNK)
        replies = await client.pipeline([p.StatsJob(i) for i in ids])
        found_any = False
        for job_id, reply in zip(ids, replies, strict=True):
            if isinstance(reply, p.JobStats):
                found_any = True
                if reply.tube == tube and reply.state in states:
                    yield job_id, reply
        current += CHUNK
        if current > highest and not found_any:
            return


async def list_jobs(
    client: Client,
    tube: str,
    states: Collection[str],
    *,
    start: int = 1,
    limit: int = 50,
    grep: str | None = None,
) -> Page:
    """One page of ``tube``'s jobs in ``states`` (id order, from ``start``), with their
    bodies; ``grep``: only those whose body contains it."""
    found: list[ListedJob] = []
    scanned_to = start - 1
    batch: list[p.JobStats] = []

    async def bodies() -> None:
        replies = await client.pipeline([p.Peek(s.id) for s in batch])
        for stats, reply in zip(batch, replies, strict=True):
            if isinstance(reply, p.Found) and (grep is None or grep.encode() in reply.body):
                found.append(ListedJob(stats, reply.body))
        batch.clear()

    async for job_id, stats in scan_jobs(client, tube, states, start):
        scanned_to = job_id
        batch.append(stats)
        if len(batch) >= CHUNK:
            await bodies()
        if len(found) + len(batch) >= limit and grep is None:
            break
        if len(found) >= limit:
            break
    else:
        if batch:
            await bodies()
        return Page(tuple(found[:limit]), None, max(0, scanned_to - start + 1))
    if batch:
        await bodies()
    more = found[limit:]
    next_from = more[0].id if more else scanned_to + 1
    return Page(tuple(found[:limit]), next_from, max(0, scanned_to - start + 1))


@dataclass
class MoveResult:
    moved: list[tuple[int, int]] = field(default_factory=list)  # (old id, new id)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (id, why)
    matched: int = 0  # with dry_run: what would move


async def move_jobs(
    client: Client,
    tube: str,
    to: str,
    *,
    states: Collection[str] = ("ready", "delayed", "buried"),
    reason: str | None = None,
    copy: bool = False,
    kick: bool = False,
    dry_run: bool = False,
    limit: int | None = None,
    reader: Client | None = None,
) -> MoveResult:
    """Move (or ``copy``) ``tube``'s jobs in ``states`` to ``to``; with ``reason``, only
    buried jobs whose burial reason contains it (``reader``: a second connection that
    reads the burial records). A job reserved meanwhile (a worker took it) is skipped."""
    result = MoveResult()
    async for job_id, stats in scan_jobs(client, tube, states):
        if limit is not None and result.matched >= limit:
            break
        if reason is not None:
            record = await read_record(reader or client, job_id, stats)
            if record is None or (reason not in record.reason and reason != record.cause):
                continue
        result.matched += 1
        if dry_run:
            continue
        await _move_one(client, stats, to, copy=copy, kick=kick, result=result)
    return result


async def _move_one(
    client: Client, stats: p.JobStats, to: str, *, copy: bool, kick: bool, result: MoveResult
) -> None:
    try:
        reserved = await client.reserve_job(stats.id)
    except greenstalk.NotFoundError:
        result.skipped.append((stats.id, "reserved by a worker, or gone"))
        return
    delay = stats.time_left if stats.state == "delayed" else 0
    commands: list[p.Command] = [p.Use(to), p.Put(reserved.body, stats.pri, delay, stats.ttr)]
    replies = await client.pipeline(commands)
    put = replies[1]
    if not isinstance(put, p.Inserted):
        await _give_back(client, stats, delay)
        result.skipped.append((stats.id, f"not stored in {to!r}: {put!r}"))
        return
    if stats.state == "buried" and not kick:
        # buried there as here: reserve the copy by id and bury it
        with contextlib.suppress(greenstalk.NotFoundError):
            await client.reserve_job(put.id)
            await client.bury(put.id, priority=stats.pri)
    if copy:
        await _give_back(client, stats, delay)
    else:
        await client.delete(stats.id)
    result.moved.append((stats.id, put.id))


async def _give_back(client: Client, stats: p.JobStats, delay: int) -> None:
    """The original, reserved by id here, back as it was: buried again, or released with
    what was left of its delay."""
    if stats.state == "buried":
        await client.bury(stats.id, priority=stats.pri)
    else:
        await client.release(stats.id, priority=stats.pri, delay=delay)


@dataclass(frozen=True, slots=True)
class FlushCount:
    tube: str
    jobs: int


async def flush_tubes(
    client: Client,
    pattern: str,
    states: Collection[str],
    *,
    dry_run: bool = False,
    include_internal: bool = False,
) -> list[FlushCount]:
    """Delete the jobs in ``states`` (ready, delayed, buried) of every tube matching the
    glob ``pattern``; per tube, how many (with ``dry_run``, how many would be). tubeworker's
    own tubes only when ``include_internal`` (or named by the pattern itself)."""
    own = include_internal or pattern.startswith("tubeworker.")
    tubes = [
        t for t in await client.list_tubes() if fnmatch.fnmatchcase(t, pattern)
        and (own or not is_internal(t))
    ]  # fmt: skip
    counts: list[FlushCount] = []
    for tube in sorted(tubes):
        try:
            stats = await client.stats_tube(tube)
        except greenstalk.NotFoundError:
            continue
        wanted = {
            "ready": stats.current_jobs_ready,
            "delayed": stats.current_jobs_delayed,
            "buried": stats.current_jobs_buried,
        }
        if dry_run:
            counts.append(FlushCount(tube, sum(wanted[s] for s in states if s in wanted)))
            continue
        counts.append(FlushCount(tube, await _flush_tube(client, tube, states)))
    return counts


async def _flush_tube(client: Client, tube: str, states: Collection[str]) -> int:
    await client.use(tube)
    peeks = {
        "ready": client.peek_ready,
        "delayed": client.peek_delayed,
        "buried": client.peek_buried,
    }
    deleted = 0
    for state in ("ready", "delayed", "buried"):
        if state not in states:
            continue
        while True:
            try:
                found = await peeks[state]()
            except greenstalk.NotFoundError:
                break
            with contextlib.suppress(greenstalk.NotFoundError):
                await client.delete(found.id)
                deleted += 1
    return deleted
