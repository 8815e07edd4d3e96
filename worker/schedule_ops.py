"""The schedule operations on beanstalkd, below every front end (``tubeworker schedules``,
``tubeworker schedule trigger|pause|resume``, the dashboard's Schedules view): read each
schedule's tick, put one fire now, pause or resume a schedule by rewriting its tick.

They talk to the tick server (the first reachable of the config's servers, as the daemons'
clocks do), never to a daemon. A pause is kept in the tick itself, so every daemon's clock
honours it, across restarts, with nothing else to store.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Final

import greenstalk
import trio

from tubeworker.admin_ops import EX_TEMPFAIL, AdminError, admin_client
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client
from tubeworker.config_model import ScheduleConfig
from tubeworker.envelope import encode_envelope
from tubeworker.schedule import LEAD, TICK_TTR, Tick, early, fire_id, schedule_tube, tick_priority

__all__ = [
    "ScheduleRow",
    "pause_schedule",
    "read_rows",
    "tick_server",
    "trigger",
]

# A daemon holds a tick from about two seconds before its fire until it is put (the
# clock's LEAD + 1 s): a pause waits that long for it to be free.
_HELD_WAIT: Final = 5.0


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
    if tick is None:
        return ScheduleRow(schedule.name, state)
    return ScheduleRow(schedule.name, state, tick.fire, tick.last, tick.paused_until)


async def read_rows(
    address: Address, schedules: tuple[ScheduleConfig, ...]
) -> tuple[ScheduleRow, ...]:
    async with admin_client(address) as client:
        return tuple([await _row(client, s) for s in schedules])


async def trigger(address: Address, schedule: ScheduleConfig) -> tuple[int, str]:
    """Put one fire of ``schedule`` now, outside its plan: the job id and the fire's id."""
    key = fire_id(schedule.name, math.floor(time.time()))
    if schedule.body is not None:
        body = schedule.body.encode()
    else:
        assert schedule.task is not None
        body = encode_envelope(schedule.task, schedule.payload, id=key)
    async with admin_client(address) as client:
        await client.use(schedule.tube)
        job_id = await client.put(
            body, priority=schedule.priority, delay=schedule.delay, ttr=schedule.ttr
        )
    return job_id, key


async def pause_schedule(
    address: Address, schedule: ScheduleConfig, until: float | None
) -> ScheduleRow:
    """Pause ``schedule`` until ``until`` (Unix seconds; None resumes it): its tick is
    reserved by id, and a copy carrying the pause put in its place in one write. Fires due
    while paused are skipped (a log line each), not caught up. A tick held by a daemon
    about to fire is waited for (a few seconds at most); :class:`AdminError` if it stays
    held or there is no tick yet."""
    async with admin_client(address) as client:
        with trio.move_on_after(_HELD_WAIT):
            while True:
                peeked = await _peek_tick(client, schedule)
                if peeked is None:
                    raise AdminError(
                        f"schedule {schedule.name!r} has no waiting tick on {address} yet "
                        "(a running daemon with this schedule makes it)",
                        EX_TEMPFAIL,
                    )
                tick_id, tick = peeked
                try:
                    await client.reserve_job(tick_id)
                except greenstalk.NotFoundError:
                    await trio.sleep(0.1)  # a daemon holds it to fire: it puts the next soon
                    continue
                changed = replace(tick, paused_until=until)
                delay = early(changed.fire, time.time(), LEAD)
                put = p.Put(changed.encode(), tick_priority(changed.fire), delay, TICK_TTR)
                await client.pipeline([put, p.Delete(tick_id)])
                return await _row(client, schedule)
    raise AdminError(
        f"schedule {schedule.name!r}: its tick stayed held by a daemon; try again", EX_TEMPFAIL
    )
