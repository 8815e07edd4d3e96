"""Reading heartbeats back: how long ago each ``[[heartbeat]]`` tube last ran one.

The clock puts the heartbeat jobs (schedules ``heartbeat.TUBE``); whichever pool serves
the tube runs them, and the built-in handler (``tubeworker.heartbeat``) records
each run as a job in ``tubeworker.heartbeat.TUBE`` whose priority falls as time goes on,
so the newest record is the first ready one. Every daemon with the heartbeat in its
config reads the newest record from the tick server every few seconds (so the age is the
fleet's, not this process's), notes whether the tube is paused on the server, and trims
the records down to the newest.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import greenstalk
import structlog
import trio

from tubeworker.beanstalk.client import Client
from tubeworker.config_model import HeartbeatConfig
from tubeworker.schedule import HeartbeatRecord, record_tube

__all__ = ["READ_EVERY", "HeartbeatSeen", "read_heartbeats", "trim_records"]

log = structlog.get_logger("tubeworker")

READ_EVERY = 2.0  # seconds between two reads of every heartbeat's record
_TRIM_MAX = 100  # records taken per trim (more wait for the next one)


@dataclass
class HeartbeatSeen:
    """A heartbeat as the clock last read it from beanstalkd (every few seconds)."""

    heartbeat: HeartbeatConfig
    ran: float | None = None  # the newest recorded run (Unix seconds), fleet-wide
    by: str | None = None
    paused: bool = False  # its tube is paused on the server (a breaker or an operator)
    since: float = field(default_factory=time.time)  # no run seen: age counts from here

    def age(self, now: float) -> float:
        return max(0.0, now - (self.ran if self.ran is not None else self.since))


async def read_heartbeats(
    client: Client,
    seen: dict[str, HeartbeatSeen],
    connect: Callable[[], Awaitable[Client]],
    rng: random.Random,
) -> None:
    """Forever: read each heartbeat's newest record and its tube's pause into ``seen``,
    every READ_EVERY seconds or a quarter of the shortest ``every`` (an age read late by
    less than that: a heartbeat that runs on time never looks twice its interval old)."""
    period = min([READ_EVERY, *(h.heartbeat.every / 4 for h in seen.values())])
    while True:
        for tube, heartbeat in seen.items():
            records = record_tube(tube)
            await client.use(records)
            try:
                record = HeartbeatRecord.decode((await client.peek_ready()).body)
            except greenstalk.NotFoundError:
                record = None  # none yet, or all taken by a trim this instant: keep the last
            if record is not None and (heartbeat.ran is None or record.ran > heartbeat.ran):
                heartbeat.ran, heartbeat.by = record.ran, record.by
            try:
                heartbeat.paused = (await client.stats_tube(tube)).pause_time_left > 0
            except greenstalk.NotFoundError:
                heartbeat.paused = False
            with contextlib.suppress(greenstalk.NotFoundError):
                if (await client.stats_tube(records)).current_jobs_ready > 1:
                    await trim_records(await connect(), records)
        await trio.sleep(period * rng.uniform(0.8, 1.2))


async def trim_records(client: Client, tube: str) -> int:
    """Delete all but the newest ready record of ``tube`` (closing ``client``); how many
    were deleted. Records are reserved to be seen, and the kept one returns to ready when
    the connection closes (priority kept). Two daemons trimming at once may each keep one:
    the next trim takes the rest."""
    deleted = 0
    try:
        await client.watch(tube)
        await client.ignore("default")
        taken: list[tuple[float, int]] = []
        for _ in range(_TRIM_MAX):
            try:
                job = await client.reserve(0)
            except (greenstalk.TimedOutError, greenstalk.DeadlineSoonError):
                break
            record = HeartbeatRecord.decode(job.body)
            taken.append((record.ran if record is not None else float("-inf"), job.id))
        taken.sort()
        for _ran, job_id in taken[:-1]:
            await client.delete(job_id)
            deleted += 1
    finally:
        await client.aclose()
    return deleted
