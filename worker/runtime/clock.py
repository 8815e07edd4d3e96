"""The clock: puts each ``[[schedule]]``'s jobs, once per fire time across the fleet.

Every daemon with schedules runs :func:`run_clock`. The record of a schedule is one *tick*
job in its tube ``tubeworker.schedule.NAME`` (body: :class:`~tubeworker.schedule.Tick`,
the next fire time and the definition's hash), delayed until ``LEAD`` to ``LEAD + 1``
seconds before that fire. A daemon that reserves a due tick owns that fire alone (a
reservation is exclusive); it waits to the exact moment, then in one write puts the fire's
job(s) (envelope id ``schedule:NAME:FIRE_TIME``), puts the next tick and deletes its own.
If it dies meanwhile, beanstalkd returns the tick at once and another daemon's blocked
reserve takes it. So there is no leader: beanstalkd's ownership of a reservation is the lock.

A tick can be missing (a first start, a server restarted without its binlog). Creating one
is done only by the daemon holding the one *plan* job of ``tubeworker.schedules`` alone
(reserved, and no other plan reserved); plans put by racing daemons are deleted by the
next holder. A tick found with another definition's hash is re-planned (its next fire by
the holder's definition), not duplicated.

Ticks live on the first reachable server of ``[worker] servers`` (in configured order).
When it is lost every daemon moves to the next reachable one (where the plan holder
creates a tick for the next fire), and back when the first answers again; see
docs/schedules.md for what that costs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import greenstalk
import structlog
import trio

from tubeworker.beanstalk.client import Address, Client
from tubeworker.config import Config, ScheduleConfig
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.runtime.clock_fire import TickHolder
from tubeworker.runtime.clock_moves import (
    Marker,
    MovedBack,
    carry_forward,
    leave_marker,
    read_marker,
)
from tubeworker.runtime.clock_records import (
    PLAN_TUBE,
    claim_plan,
)
from tubeworker.runtime.clock_state import (
    LATENESS_BUCKETS,
    ClockContext,
    ClockStatistics,
    ScheduleCounts,
)
from tubeworker.runtime.heartbeats import HeartbeatSeen, read_heartbeats
from tubeworker.schedule import (
    LEAD,
    TICK_TTR,
    Tick,
    clock_schedules,
    early,
    next_fire,
    schedule_tube,
    tick_priority,
)

__all__ = [
    "LATENESS_BUCKETS",
    "PLAN_TUBE",
    "ClockStatistics",
    "HeartbeatSeen",
    "ScheduleCounts",
    "run_clock",
]

log = structlog.get_logger("tubeworker")

_RECONCILE_EVERY = 5.0
_PROBE_EVERY = 5.0  # a daemon on a later server checks this often whether an earlier is back
_FAULTS = (ConnectionLostError, ProtocolError, trio.TooSlowError, OSError, greenstalk.Error)


async def run_clock(
    config: Config,
    statistics: ClockStatistics | None = None,
    *,
    stop: trio.Event | None = None,
    now: Callable[[], float] = time.time,
) -> None:
    """Run until cancelled or ``stop`` is set (a drain): hold due ticks and fire them;
    keep exactly one tick each. A tick held when it stops returns to another daemon."""
    schedules = clock_schedules(config.schedules, config.heartbeats)
    if not schedules:
        return
    stats = statistics or ClockStatistics()
    stats.definitions = schedules
    for schedule in schedules:
        stats.of(schedule.name)  # every schedule has series from the start
    for heartbeat in config.heartbeats:
        stats.heartbeats.setdefault(heartbeat.tube, HeartbeatSeen(heartbeat))
    clock = _Clock(config, stats, now)
    async with trio.open_nursery() as nursery:
        if stop is not None:

            async def stopper() -> None:
                await stop.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stopper)
        await _run(config, clock)
        nursery.cancel_scope.cancel()


async def _run(config: Config, clock: _Clock) -> None:
    """Serve the first reachable server. After a loss (or moving back to an earlier one)
    start again from the first: a server that merely dropped a connection is taken up
    again, and only one that does not answer is passed over for the next."""
    while True:
        for index, address in enumerate(config.servers):
            outcome = await _serve(clock, address, config.servers[:index])
            if outcome != "unreachable":
                await trio.sleep(clock.rng.uniform(0.01, 0.1))  # no tight loop
                break
        else:
            await trio.sleep(1.0)  # no server answers: try again


async def _serve(clock: _Clock, address: Address, earlier: Sequence[Address]) -> str:
    """ "moved" (back to an earlier server), "lost" (after serving) or "unreachable"."""
    outcome = "moved"
    try:
        await clock.serve(address, earlier)
    except* _Unreachable:
        outcome = "unreachable"
    except* _FAULTS as group:
        outcome = "lost"
        error = "; ".join(str(e) for e in group.exceptions)
        log.warning("schedule server lost", server=str(address), error=error)
    return outcome


class _Unreachable(Exception):
    """The server does not take a connection."""


class _Clock(ClockContext):
    """Serving one server at a time: holding its ticks (TickHolder), keeping one tick per
    schedule there, reading heartbeats, and moving back to an earlier server."""

    def __init__(self, config: Config, stats: ClockStatistics, now: Callable[[], float]):
        super().__init__(config, stats, now)
        self.holder = TickHolder(self)

    async def serve(self, address: Address, earlier: Sequence[Address]) -> None:
        """Keep the ticks on ``address`` until it is lost (raises) or an earlier is back."""
        try:
            holder = await self.connect(address)
        except _FAULTS as exc:
            raise _Unreachable(str(exc)) from exc
        try:
            planner = await self.connect(address)
        except BaseException:
            await holder.aclose()
            raise
        self.stats.server = str(address)
        self.earlier = earlier
        log.info("schedules served", server=str(address), schedules=len(self.schedules))
        moved: MovedBack | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reconcile_loop, planner)
                if self.stats.heartbeats:
                    nursery.start_soon(self._read_heartbeats, address)
                if earlier:
                    nursery.start_soon(self._probe, earlier)
                await self.holder.hold_loop(holder)
        except* MovedBack as group:
            found = group.exceptions[0]
            assert isinstance(found, MovedBack)
            moved = found
            log.info("schedules move back", server=str(address), to=str(moved.address))
        finally:
            with trio.CancelScope(shield=True):
                await holder.aclose()
                await planner.aclose()
        if moved is not None:
            if moved.hand_over:
                await self._hand_over(address, moved.address)
            await self._clear(address)

    async def _hand_over(self, later: Address, earlier: Address) -> None:
        """Carry the ticks forward on ``earlier`` and leave a marker on ``later``
        (see tubeworker.runtime.clock_moves)."""
        first = {s.name: next_fire(s, self.now()) for s in self.schedules.values()}
        try:
            with trio.fail_after(self.config.reply_timeout * 4):
                client = await self.connect(earlier)
                try:
                    carried = await carry_forward(
                        client,
                        self.schedules,
                        first,
                        self.hashes,
                        self.now,
                    )
                finally:
                    await client.aclose()
            if not carried:
                return  # another daemon holds the plan there: it is handing over
            with trio.fail_after(self.config.reply_timeout * 2):
                client = await self.connect(later)
                try:
                    await leave_marker(client, Marker(str(earlier), first))
                finally:
                    await client.aclose()
        except _FAULTS as exc:
            log.warning("schedules not handed over", server=str(earlier), error=str(exc))

    async def _read_heartbeats(self, address: Address) -> None:
        client = await self.connect(address)
        try:
            await read_heartbeats(
                client, self.stats.heartbeats, lambda: self.connect(address), self.rng
            )
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()

    async def _clear(self, address: Address) -> None:
        """Delete the ticks left waiting on a server the ticks moved away from, so that
        none of them fires old fires when the daemons come back to it. (Ticks still held
        there by a daemon yet to move are left to it.)"""
        try:
            with trio.fail_after(self.config.reply_timeout):
                client = await self.connect(address)
                try:
                    for tube in self.schedules:
                        await client.use(tube)
                        for peek in (client.peek_delayed, client.peek_ready):
                            while True:
                                try:
                                    found = await peek()
                                except greenstalk.NotFoundError:
                                    break
                                with contextlib.suppress(greenstalk.NotFoundError):
                                    await client.delete(found.id)
                finally:
                    await client.aclose()
        except _FAULTS as exc:
            log.warning("schedule ticks not cleared", server=str(address), error=str(exc))

    async def _probe(self, earlier: Sequence[Address]) -> None:
        while True:
            await trio.sleep(_PROBE_EVERY)
            for address in earlier:
                try:
                    client = await self.connect(address)
                except _FAULTS:
                    continue
                await client.aclose()
                raise MovedBack(address, hand_over=True)

    # ---- keeping exactly one tick per schedule

    async def _reconcile_loop(self, client: Client) -> None:
        await client.watch(PLAN_TUBE)
        await client.ignore("default")
        while True:
            await self._reconcile(client)
            await trio.sleep(_RECONCILE_EVERY * self.rng.uniform(0.8, 1.2))

    async def _missing(self, client: Client) -> list[ScheduleConfig]:
        missing = []
        for tube, schedule in self.schedules.items():
            try:
                stats = await client.stats_tube(tube)
            except greenstalk.NotFoundError:
                missing.append(schedule)
                continue
            jobs = (
                stats.current_jobs_ready
                + stats.current_jobs_reserved
                + stats.current_jobs_delayed
                + stats.current_jobs_buried
            )
            if jobs == 0:
                missing.append(schedule)
        return missing

    async def _reconcile(self, client: Client) -> None:
        if not await self._missing(client):
            return
        if self.earlier and await read_marker(client) is not None:
            return  # the ticks moved back to an earlier server: none are made here
        plan_id = await claim_plan(client)
        if plan_id is None:
            return  # another daemon is planning; look again next round
        try:
            for schedule in await self._missing(client):  # again, now alone
                fire = next_fire(schedule, self.now())
                tick = Tick(schedule.name, fire, self.hashes[schedule.name])
                await client.use(schedule_tube(schedule.name))
                await client.put(
                    tick.encode(),
                    priority=tick_priority(fire),
                    delay=early(fire, self.now(), LEAD),
                    ttr=TICK_TTR,
                )
                log.info("schedule tick made", schedule=schedule.name, fire=fire)
        finally:
            await client.release(plan_id)
