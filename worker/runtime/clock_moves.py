"""Moving the ticks back to an earlier server that answers again, with at most one
duplicate fire per schedule and none lost.

While the first server of ``[worker] servers`` was lost the fleet fired on a later one.
When it answers again, the first daemon to notice (its probe) *hands over*:

1. On the earlier server, holding its plan job alone, it carries each schedule forward to
   ``first``, the next fire from now: ticks left there from before the loss (a restart on
   its binlog brings them back, fire times in the past) are deleted rather than caught
   up, and a tick for ``first`` is put where none is left.
2. On the later server it leaves a *marker* (a job delayed for MARK_SECONDS in
   ``tubeworker.schedules.moved``): ``first`` per schedule and where the ticks went.
3. Every daemon still on the later server reads the marker just before it fires: a fire
   at or after ``first`` is the earlier server's now, so it deletes its tick unfired and
   moves; earlier fires it still puts. So the later server puts nothing the earlier one
   will, except a fire whose holder had read no marker yet when it was written: at most
   one per schedule.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import greenstalk
import trio

from tubeworker.beanstalk.client import Address, Client
from tubeworker.config_model import ScheduleConfig
from tubeworker.runtime.clock_records import PLAN_TUBE, claim_plan
from tubeworker.schedule import LEAD, TICK_TTR, Tick, early, tick_priority

__all__ = [
    "MARK_SECONDS",
    "MOVED_TUBE",
    "Marker",
    "MovedBack",
    "carry_forward",
    "leave_marker",
    "read_marker",
]

MOVED_TUBE = "tubeworker.schedules.moved"
MARK_SECONDS = 30  # a marker outlives every daemon's probe (5 s) and a held tick (10 s)
_CLAIM_TRIES = 20  # a plan held by another daemon is retried this often, this far apart
_CLAIM_WAIT = 0.05


class MovedBack(Exception):
    """An earlier server of the list answers again: the ticks go back there. ``hand_over``:
    this daemon noticed first (its probe), so it carries the ticks over; else a marker
    left by the daemon that did sent it."""

    def __init__(self, address: Address, *, hand_over: bool) -> None:
        super().__init__(str(address))
        self.address = address
        self.hand_over = hand_over


@dataclass(frozen=True, slots=True)
class Marker:
    """Left on the server the ticks moved away from: where they went, and from which fire
    time on (per schedule) the fires are the new server's."""

    to: str
    first: Mapping[str, float]

    def encode(self) -> bytes:
        return json.dumps({"to": self.to, "first": dict(self.first)}).encode()

    @classmethod
    def decode(cls, body: bytes) -> Marker | None:
        try:
            data = json.loads(body)
            first = {str(k): float(v) for k, v in data["first"].items()}
            return cls(str(data["to"]), first)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


async def carry_forward(
    client: Client,
    schedules: Mapping[str, ScheduleConfig],
    first: Mapping[str, float],
    hashes: Mapping[str, str],
    now: Callable[[], float],
) -> bool:
    """Step 1 on the earlier server (``client`` there, watching nothing yet): every
    schedule's ticks before ``first[name]`` deleted, one tick at ``first[name]`` or later
    kept or put. False when the plan job stayed held by another daemon (it hands over)."""
    await client.watch(PLAN_TUBE)
    await client.ignore("default")
    plan_id = None
    for _ in range(_CLAIM_TRIES):
        plan_id = await claim_plan(client)
        if plan_id is not None:
            break
        await trio.sleep(_CLAIM_WAIT)
    if plan_id is None:
        return False
    try:
        for tube, schedule in schedules.items():
            await _carry(client, tube, schedule, first[schedule.name], hashes, now)
    finally:
        with contextlib.suppress(greenstalk.NotFoundError):
            await client.release(plan_id)
    return True


async def _carry(
    client: Client,
    tube: str,
    schedule: ScheduleConfig,
    first: float,
    hashes: Mapping[str, str],
    now: Callable[[], float],
) -> None:
    await client.use(tube)
    kept = False
    for peek in (client.peek_ready, client.peek_delayed):
        while True:
            try:
                found = await peek()
            except greenstalk.NotFoundError:
                break
            tick = Tick.decode(found.body)
            if tick is not None and tick.fire >= first:
                kept = True  # the earliest waiting tick is current: the rest are later
                break
            with contextlib.suppress(greenstalk.NotFoundError):
                await client.delete(found.id)  # an old fire: the later server put it
    if kept or (await client.stats_tube(tube)).current_jobs_reserved:
        return  # (a held tick belongs to a daemon that moved here already)
    tick = Tick(schedule.name, first, hashes[schedule.name])
    await client.put(
        tick.encode(),
        priority=tick_priority(first),
        delay=early(first, now(), LEAD),
        ttr=TICK_TTR,
    )


async def leave_marker(client: Client, marker: Marker) -> None:
    """Step 2, on the later server."""
    await client.use(MOVED_TUBE)
    await client.put(marker.encode(), priority=0, delay=MARK_SECONDS, ttr=1)


async def read_marker(client: Client) -> Marker | None:
    """Step 3: the newest marker on this server, if one was left in the last MARK_SECONDS."""
    await client.use(MOVED_TUBE)
    try:
        found = await client.peek_delayed()
    except greenstalk.NotFoundError:
        return None
    return Marker.decode(found.body)
