"""Holding ticks and firing them: a daemon blocks in a reserve on its schedules' tick
tubes; the one that reserves a due tick owns that fire alone, waits to its exact second,
then puts the fire's job(s), the next tick and the delete of its own in one write."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import greenstalk
import structlog
import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client
from tubeworker.config import ScheduleConfig
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.runtime.clock_moves import MovedBack, read_marker
from tubeworker.runtime.clock_records import note_run, read_state, unfinished
from tubeworker.runtime.clock_state import ClockContext
from tubeworker.schedule import (
    LEAD,
    TICK_TTR,
    FirePlan,
    Tick,
    early,
    fire_body,
    fire_id,
    job_delay,
    next_fire,
    plan_fires,
    schedule_tube,
    tick_priority,
    with_overlap,
)

__all__ = ["TickHolder"]

log = structlog.get_logger("tubeworker")

_RESERVE_WAIT = 1  # seconds a reserve blocks before the loop looks around
_FAULTS = (ConnectionLostError, ProtocolError, trio.TooSlowError, OSError, greenstalk.Error)


class TickHolder:
    """One daemon's holding of due ticks on the server it serves."""

    def __init__(self, ctx: ClockContext) -> None:
        self.ctx = ctx

    async def hold_loop(self, client: Client) -> None:
        for tube in self.ctx.schedules:
            await client.watch(tube)
        await client.ignore("default")
        while True:
            try:
                reserved = await client.reserve(_RESERVE_WAIT)
            except (greenstalk.TimedOutError, greenstalk.DeadlineSoonError):
                continue
            await self._hold(client, reserved, trio.current_time())

    async def _hold(self, client: Client, reserved: p.Reserved, since: float) -> None:
        tick = Tick.decode(reserved.body)
        schedule = None if tick is None else self.ctx.definitions.get(tick.name)
        if tick is None or schedule is None:
            log.warning("schedule tick unreadable, deleted", job_id=reserved.id)
            await client.delete(reserved.id)
            return
        mine = self.ctx.hashes[schedule.name]
        if tick.hash != mine:
            # Another definition planned it: the holder's definition decides from here.
            fire = next_fire(schedule, tick.fire - 1e-3)
            log.info("schedule re-planned", schedule=schedule.name, fire=fire_id("", fire)[10:])
            await self._replace(client, reserved.id, schedule, tick, fire, ())
            return
        wait = tick.fire - self.ctx.now()
        if wait > LEAD + 2:  # taken before its time (re-planned, clock skew): not ours yet
            delay = early(tick.fire, self.ctx.now(), LEAD)
            await client.release(reserved.id, priority=tick_priority(tick.fire), delay=delay)
            return
        state = await read_state(client, schedule)  # while there is time before the fire
        if wait > 0:
            await trio.sleep(wait)
        await self._still_ours(client, reserved.id, since)
        if self.ctx.earlier:
            await self._unless_moved(client, reserved.id, tick)
        plan = plan_fires(schedule, tick.fire, self.ctx.now(), paused_until=state.paused_until)
        if schedule.overlap == "skip" and plan.fire:
            running = await unfinished(client, state.last_job, schedule.tube)
            plan = with_overlap(schedule, plan, running=running)
        self._log_misfires(schedule, plan)
        put = await self._replace(client, reserved.id, schedule, tick, plan.next, plan.fire)
        if schedule.overlap == "skip" and put:
            await note_run(client, schedule, plan.fire[-1], put[-1], state)
        counts = self.ctx.stats.of(schedule.name)
        for fire in plan.fire:
            lateness = self.ctx.now() - fire
            self.ctx.stats.fires += 1
            counts.fires += 1
            counts.last_fire = fire if counts.last_fire is None else max(fire, counts.last_fire)
            counts.lateness.observe(max(0.0, lateness))
            log.info(
                "schedule fired",
                schedule=schedule.name,
                id=fire_id(schedule.name, fire),
                lateness_ms=round(lateness * 1000, 1),
            )

    @staticmethod
    async def _still_ours(client: Client, tick_id: int, since: float) -> None:
        """Raise (the connection is given up, nothing fired) unless the tick is still
        reserved by this connection."""
        if trio.current_time() - since > TICK_TTR - 2:
            # Held too long (this process was stopped or starved): beanstalkd may have given
            # the tick to another daemon.
            raise ConnectionLostError("a schedule tick was held too long; given up")
        try:
            # A process stopped while its reserve was answered reads the reply (and starts
            # ``since``) only when it runs again, maybe after the tick's TTR gave it to
            # another daemon. A touch says whether it is still ours (and renews the TTR).
            await client.touch(tick_id)
        except greenstalk.NotFoundError:
            raise ConnectionLostError("a schedule tick was taken back; given up") from None

    async def _unless_moved(self, client: Client, tick_id: int, tick: Tick) -> None:
        """On a later server: when a marker says this fire is an earlier server's now (the
        ticks moved back there), delete the tick unfired and move (raises _Earlier)."""
        marker = await read_marker(client)
        if marker is None or tick.fire < marker.first.get(tick.name, math.inf):
            return
        address = next((a for a in self.ctx.earlier if str(a) == marker.to), None)
        if address is None:
            return
        try:
            with trio.fail_after(self.ctx.config.connect_timeout):
                await (await self.ctx.connect(address)).aclose()
        except _FAULTS:
            return  # not back (any more): this server's ticks stand
        await client.delete(tick_id)
        raise MovedBack(address, hand_over=False)

    async def _replace(
        self,
        client: Client,
        tick_id: int,
        schedule: ScheduleConfig,
        held: Tick,
        following: float,
        fires: Sequence[float],
    ) -> list[int]:
        """In one write: the fires' jobs, the next tick, and the delete of this one
        (``held``); the ids of the fires' jobs."""
        commands: list[p.Command] = []
        if fires:
            commands.append(p.Use(schedule.tube))
            commands += [self._job(schedule, fire) for fire in fires]
        last = max(fires) if fires else held.last
        tick = Tick(schedule.name, following, self.ctx.hashes[schedule.name], last)
        commands += [
            p.Use(schedule_tube(schedule.name)),
            p.Put(
                tick.encode(),
                tick_priority(following),
                early(following, self.ctx.now(), LEAD),
                TICK_TTR,
            ),
            p.Delete(tick_id),
        ]
        replies = await client.pipeline(commands)
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(command, p.Put) and not isinstance(reply, p.Inserted):
                log.error("schedule put refused", schedule=schedule.name, reply=repr(reply))
        new_tick, deleted = replies[-2], replies[-1]
        if not isinstance(deleted, p.Deleted) and isinstance(new_tick, p.Inserted):
            # The held tick was not ours any more (another daemon holds or fired it): the
            # tick just put would make two. Take it back; the fires above may be repeats.
            with contextlib.suppress(greenstalk.NotFoundError):
                await client.delete(new_tick.id)
            log.error(
                "schedule tick was taken back while held: fires may repeat",
                schedule=schedule.name,
                ids=[fire_id(schedule.name, f) for f in fires],
            )
        return [r.id for r in replies[: len(fires) + 1] if isinstance(r, p.Inserted)]

    def _job(self, schedule: ScheduleConfig, fire: float) -> p.Put:
        body = fire_body(schedule, fire)
        return p.Put(body, schedule.priority, job_delay(schedule, self.ctx.rng), schedule.ttr)

    def _log_misfires(self, schedule: ScheduleConfig, plan: FirePlan) -> None:
        self.ctx.stats.of(schedule.name).misfires += (
            len(plan.skipped) + len(plan.coalesced) + plan.more_skipped
        )
        for fire in plan.skipped:
            self.ctx.stats.skipped += 1
            log.warning(
                "schedule fire skipped",
                schedule=schedule.name,
                id=fire_id(schedule.name, fire),
                misfire=schedule.misfire,
            )
        for fire in plan.coalesced:
            self.ctx.stats.coalesced += 1
            log.warning(
                "schedule fire coalesced",
                schedule=schedule.name,
                id=fire_id(schedule.name, fire),
                into=fire_id(schedule.name, plan.fire[-1]) if plan.fire else None,
            )
        counts = self.ctx.stats.of(schedule.name)
        for fire in plan.paused:
            counts.paused += 1
            log.info(
                "schedule fire skipped: paused",
                schedule=schedule.name,
                id=fire_id(schedule.name, fire),
            )
        for fire in plan.overlapped:
            counts.overlapped += 1
            log.warning(
                "schedule fire skipped: the previous run is unfinished",
                schedule=schedule.name,
                id=fire_id(schedule.name, fire),
                overlap=schedule.overlap,
            )
        if plan.more_skipped:
            self.ctx.stats.skipped += plan.more_skipped
            log.warning(
                "schedule fires skipped",
                schedule=schedule.name,
                count=plan.more_skipped,
                misfire=schedule.misfire,
            )
