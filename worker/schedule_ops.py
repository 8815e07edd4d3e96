"""The schedule operations on beanstalkd, below every front end (``tubeworker schedules``,
``tubeworker schedule trigger|pause|resume``, the dashboard's Schedules view): read each
schedule's tick, put one fire now, pause or resume a schedule by rewriting its tick.

They talk to the tick server (the first reachable of the config's servers, as the daemons'
clocks do), never to a daemon. A pause is a record beside the tick that every daemon's
clock reads before it fires (see tubeworker.runtime.clock_records).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import greenstalk

from tubeworker.admin_ops import AdminError, admin_client
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client
from tubeworker.config_model import HeartbeatConfig, ScheduleConfig
from tubeworker.schedule import (
    HeartbeatRecord,
    Tick,
    decode_pause,
    encode_pause,
    fire_body,
    fire_id,
    next_fire,
    pause_tube,
    record_tube,
    schedule_tube,
)

__all__ = [
    "ScheduleRow",
    "heartbeat_rows",
    "pause_schedule",
    "read_rows",
    "tick_server",
    "trigger",
]


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One schedule as its tick tells it."""

    name: str
    state: str  # waiting | held | missing, with how many ticks if more than one
    next: float | None = None
    last: float | None = None
    paused_until: float | None = None

    def as_json(self, now: float) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "next": _iso(self.next),
            "last": _iso(self.last),
            "paused_until": _iso(self.paused_until) if self.paused(now) else None,
        }

    def paused(self, now: float) -> bool:
        return self.paused_until is not None and self.paused_until > now


def _iso(moment: float | None) -> str | None:
    return None if moment is None else fire_id("", moment)[len("schedule::") :]


async def tick_server(servers: tuple[Address, ...]) -> Address:
    """The first reachable server (where the daemons keep the ticks)."""
    last: AdminError | None = None
    for address in servers:
        try:
            async with admin_client(address):
                return address
        except AdminError as exc:
            last = exc
    assert last is not None
    raise last


async def _peek_tick(client: Client, schedule: ScheduleConfig) -> tuple[int, Tick] | None:
    await client.use(schedule_tube(schedule.name))
    for peek in (client.peek_delayed, client.peek_ready):
        try:
            found = await peek()
        except greenstalk.NotFoundError:
            continue
        tick = Tick.decode(found.body)
        if tick is not None:
            return found.id, tick
    return None


async def _row(client: Client, schedule: ScheduleConfig) -> ScheduleRow:
    try:
        stats = await client.stats_tube(schedule_tube(schedule.name))
    except greenstalk.NotFoundError:
        return ScheduleRow(schedule.name, "missing")
    peeked = await _peek_tick(client, schedule)
    tick = None if peeked is None else peeked[1]
    if stats.current_jobs_reserved:
        state = "held"
    elif tick is not None:
        state = "waiting"
    else:
        state = "missing"
    ticks = stats.current_jobs_ready + stats.current_jobs_delayed + stats.current_jobs_reserved
    if ticks > 1:
        state += f"; {ticks} ticks"
    paused = await _paused_until(client, schedule)
    if tick is None:
        # Held by a daemon about to fire it (with every = "1s", nearly always): a held job
        # cannot be peeked, so the next fire is the definition's.
        following = next_fire(schedule, time.time()) if stats.current_jobs_reserved else None
        return ScheduleRow(schedule.name, state, following, paused_until=paused)
    return ScheduleRow(schedule.name, state, tick.fire, tick.last, paused)


async def _paused_until(client: Client, schedule: ScheduleConfig) -> float | None:
    await client.use(pause_tube(schedule.name))
    try:
        return decode_pause((await client.peek_delayed()).body)
    except greenstalk.NotFoundError:
        return None


async def read_rows(
    address: Address, schedules: tuple[ScheduleConfig, ...]
) -> tuple[ScheduleRow, ...]:
    async with admin_client(address) as client:
        return tuple([await _row(client, s) for s in schedules])


async def heartbeat_rows(
    address: Address, heartbeats: tuple[HeartbeatConfig, ...], now: float
) -> list[dict[str, object]]:
    """Each heartbeat's last recorded run (its newest record), age and who ran it."""
    rows: list[dict[str, object]] = []
    async with admin_client(address) as client:
        for heartbeat in heartbeats:
            await client.use(record_tube(heartbeat.tube))
            try:
                record = HeartbeatRecord.decode((await client.peek_ready()).body)
            except greenstalk.NotFoundError:
                record = None
            ran = None if record is None else record.ran
            rows.append(
                {
                    "tube": heartbeat.tube,
                    "every": heartbeat.every,
                    "last_run": _iso(ran),
                    "age": None if ran is None else round(max(0.0, now - ran), 1),
                    "by": None if record is None else record.by,
                }
            )
    return rows


async def trigger(address: Address, schedule: ScheduleConfig) -> tuple[int, str]:
    """Put one fire of ``schedule`` now, outside its plan: the job id and the fire's id."""
    now = math.floor(time.time())
    key, body = fire_id(schedule.name, now), fire_body(schedule, now)
    async with admin_client(address) as client:
        await client.use(schedule.tube)
        job_id = await client.put(
            body, priority=schedule.priority, delay=schedule.delay, ttr=schedule.ttr
        )
    return job_id, key


async def pause_schedule(
    address: Address, schedule: ScheduleConfig, until: float | None
) -> ScheduleRow:
    """Pause ``schedule`` until ``until`` (Unix seconds; None resumes it). The pause is a
    record beside the schedule's tick (a job delayed until the pause ends, so it lapses by
    itself) that every tick holder reads before it fires: fires due while paused are
    skipped (a log line each), not caught up. It lives on the tick server: kept across
    daemon restarts (and beanstalkd restarts with a binlog); a move of the ticks to
    another server leaves it behind."""
    async with admin_client(address) as client:
        await client.use(pause_tube(schedule.name))
        for peek in (client.peek_delayed, client.peek_ready):  # the previous pause, if any
            while True:
                try:
                    found = await peek()
                except greenstalk.NotFoundError:
                    break
                with contextlib.suppress(greenstalk.NotFoundError):
                    await client.delete(found.id)
        if until is not None:
            until = math.ceil(until)  # whole seconds, as fire times are shown
            delay = min(max(1, math.ceil(until - time.time())), p.MAX_INT)
            await client.put(encode_pause(schedule.name, until), priority=0, delay=delay, ttr=1)
        return await _row(client, schedule)
