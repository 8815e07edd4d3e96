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
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import greenstalk
import structlog
import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.config import Config, ScheduleConfig
from tubeworker.envelope import encode_envelope
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.observe.counters import Histogram
from tubeworker.runtime.clock_moves import Marker, carry_forward, leave_marker, read_marker
from tubeworker.runtime.clock_records import (
    PLAN_TUBE,
    claim_plan,
    note_run,
    read_state,
    unfinished,
)
from tubeworker.runtime.heartbeats import HeartbeatSeen, read_heartbeats
from tubeworker.schedule import (
    LEAD,
    TICK_TTR,
    FirePlan,
    Tick,
    clock_schedules,
    definition_hash,
    early,
    fire_id,
    job_delay,
    next_fire,
    plan_fires,
    schedule_tube,
    tick_priority,
    with_overlap,
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

_RESERVE_WAIT = 1  # seconds a reserve blocks before the loop looks around
_RECONCILE_EVERY = 5.0
_PROBE_EVERY = 5.0  # a daemon on a later server checks this often whether an earlier is back
_FAULTS = (ConnectionLostError, ProtocolError, trio.TooSlowError, OSError, greenstalk.Error)
_SWEEP_MAX = 100  # heartbeat records taken per sweep (a few are left between two sweeps)


# Seconds from a fire time to its put being answered (on time: a few ms; 1 s: a misfire).
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0)


@dataclass
class ScheduleCounts:
    """One schedule's fires put by this process, its misfires and their lateness."""

    fires: int = 0
    misfires: int = 0  # skipped or coalesced
    paused: int = 0  # fires skipped while paused
    overlapped: int = 0  # fires skipped while the previous run was unfinished
    last_fire: float | None = None
    lateness: Histogram = field(default_factory=lambda: Histogram(LATENESS_BUCKETS))


@dataclass
class ClockStatistics:
    """What the clock did in this process (metrics and tests read it)."""

    fires: int = 0
    skipped: int = 0
    coalesced: int = 0
    server: str | None = None  # where the ticks are, as this daemon sees it
    schedules: dict[str, ScheduleCounts] = field(default_factory=dict)
    definitions: tuple[ScheduleConfig, ...] = ()  # the config's, for the next fire times
    heartbeats: dict[str, HeartbeatSeen] = field(default_factory=dict)  # by tube

    def of(self, name: str) -> ScheduleCounts:
        counts = self.schedules.get(name)
        if counts is None:
            counts = self.schedules[name] = ScheduleCounts()
        return counts


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


class _Earlier(Exception):
    """An earlier server of the list answers again: the ticks go back there. ``hand_over``:
    this daemon noticed first (its probe), so it carries the ticks over; else a marker
    left by the daemon that did sent it."""

    def __init__(self, address: Address, *, hand_over: bool) -> None:
        super().__init__(str(address))
        self.address = address
        self.hand_over = hand_over


class _Clock:
    def __init__(self, config: Config, stats: ClockStatistics, now: Callable[[], float]):
        self.config = config
        self.stats = stats
        self.now = now
        self.definitions = {s.name: s for s in stats.definitions}
        self.schedules = {schedule_tube(s.name): s for s in stats.definitions}
        self.hashes = {s.name: definition_hash(s) for s in stats.definitions}
        self.rng = random.Random()
        self.earlier: Sequence[Address] = ()  # servers before the one served, in order

    async def _connect(self, address: Address) -> Client:
        return await connect(
            address,
            connect_timeout=self.config.connect_timeout,
            reply_timeout=self.config.reply_timeout,
            keepalive=self.config.keepalive,
        )

    async def serve(self, address: Address, earlier: Sequence[Address]) -> None:
        """Keep the ticks on ``address`` until it is lost (raises) or an earlier is back."""
        try:
            holder = await self._connect(address)
        except _FAULTS as exc:
            raise _Unreachable(str(exc)) from exc
        try:
            planner = await self._connect(address)
        except BaseException:
            await holder.aclose()
            raise
        self.stats.server = str(address)
        self.earlier = earlier
        log.info("schedules served", server=str(address), schedules=len(self.schedules))
        moved: _Earlier | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reconcile_loop, planner)
                if self.stats.heartbeats:
                    nursery.start_soon(self._read_heartbeats, address)
                if earlier:
                    nursery.start_soon(self._probe, earlier)
                await self._hold_loop(holder)
        except* _Earlier as group:
            found = group.exceptions[0]
            assert isinstance(found, _Earlier)
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
                client = await self._connect(earlier)
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
                client = await self._connect(later)
                try:
                    await leave_marker(client, Marker(str(earlier), first))
                finally:
                    await client.aclose()
        except _FAULTS as exc:
            log.warning("schedules not handed over", server=str(earlier), error=str(exc))

    async def _read_heartbeats(self, address: Address) -> None:
        client = await self._connect(address)
        try:
            await read_heartbeats(
                client, self.stats.heartbeats, lambda: self._connect(address), self.rng
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
                client = await self._connect(address)
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
                    client = await self._connect(address)
                except _FAULTS:
                    continue
                await client.aclose()
                raise _Earlier(address, hand_over=True)

    # ---- holding ticks

    async def _hold_loop(self, client: Client) -> None:
        for tube in self.schedules:
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
        schedule = None if tick is None else self.definitions.get(tick.name)
        if tick is None or schedule is None:
            log.warning("schedule tick unreadable, deleted", job_id=reserved.id)
            await client.delete(reserved.id)
            return
        mine = self.hashes[schedule.name]
        if tick.hash != mine:
            # Another definition planned it: the holder's definition decides from here.
            fire = next_fire(schedule, tick.fire - 1e-3)
            log.info("schedule re-planned", schedule=schedule.name, fire=fire_id("", fire)[10:])
            await self._replace(client, reserved.id, schedule, tick, fire, ())
            return
        wait = tick.fire - self.now()
        if wait > LEAD + 2:  # taken before its time (re-planned, clock skew): not ours yet
            delay = early(tick.fire, self.now(), LEAD)
            await client.release(reserved.id, priority=tick_priority(tick.fire), delay=delay)
            return
        state = await read_state(client, schedule)  # while there is time before the fire
        if wait > 0:
            await trio.sleep(wait)
        if trio.current_time() - since > TICK_TTR - 2:
            # Held too long (this process was stopped or starved): beanstalkd may have given
            # the tick to another daemon. Act on nothing; the connection is given up.
            raise ConnectionLostError("a schedule tick was held too long; given up")
        if self.earlier:
            await self._unless_moved(client, reserved.id, tick)
        plan = plan_fires(schedule, tick.fire, self.now(), paused_until=state.paused_until)
        if schedule.overlap == "skip" and plan.fire:
            running = await unfinished(client, state.last_job, schedule.tube)
            plan = with_overlap(schedule, plan, running=running)
        self._log_misfires(schedule, plan)
        put = await self._replace(client, reserved.id, schedule, tick, plan.next, plan.fire)
        if schedule.overlap == "skip" and put:
            await note_run(client, schedule, plan.fire[-1], put[-1], state)
        counts = self.stats.of(schedule.name)
        for fire in plan.fire:
            lateness = self.now() - fire
            self.stats.fires += 1
            counts.fires += 1
            counts.last_fire = fire if counts.last_fire is None else max(fire, counts.last_fire)
            counts.lateness.observe(max(0.0, lateness))
            log.info(
                "schedule fired",
                schedule=schedule.name,
                id=fire_id(schedule.name, fire),
                lateness_ms=round(lateness * 1000, 1),
            )

    async def _unless_moved(self, client: Client, tick_id: int, tick: Tick) -> None:
        """On a later server: when a marker says this fire is an earlier server's now (the
        ticks moved back there), delete the tick unfired and move (raises _Earlier)."""
        marker = await read_marker(client)
        if marker is None or tick.fire < marker.first.get(tick.name, math.inf):
            return
        address = next((a for a in self.earlier if str(a) == marker.to), None)
        if address is None:
            return
        try:
            with trio.fail_after(self.config.connect_timeout):
                await (await self._connect(address)).aclose()
        except _FAULTS:
            return  # not back (any more): this server's ticks stand
        await client.delete(tick_id)
        raise _Earlier(address, hand_over=False)

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
        tick = Tick(schedule.name, following, self.hashes[schedule.name], last)
        commands += [
            p.Use(schedule_tube(schedule.name)),
            p.Put(
                tick.encode(),
                tick_priority(following),
                early(following, self.now(), LEAD),
                TICK_TTR,
            ),
            p.Delete(tick_id),
        ]
        replies = await client.pipeline(commands)
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(command, p.Put) and not isinstance(reply, p.Inserted):
                log.error("schedule put refused", schedule=schedule.name, reply=repr(reply))
        return [r.id for r in replies[: len(fires) + 1] if isinstance(r, p.Inserted)]

    def _job(self, schedule: ScheduleConfig, fire: float) -> p.Put:
        if schedule.body is not None:
            body = schedule.body.encode()
        else:
            assert schedule.task is not None
            body = encode_envelope(schedule.task, schedule.payload, id=fire_id(schedule.name, fire))
        return p.Put(body, schedule.priority, job_delay(schedule, self.rng), schedule.ttr)

    def _log_misfires(self, schedule: ScheduleConfig, plan: FirePlan) -> None:
        self.stats.of(schedule.name).misfires += (
            len(plan.skipped) + len(plan.coalesced) + plan.more_skipped
        )
        for fire in plan.skipped:
            self.stats.skipped += 1
            log.warning(
                "schedule fire skipped",
                schedule=schedule.name,
                id=fire_id(schedule.name, fire),
                misfire=schedule.misfire,
            )
        for fire in plan.coalesced:
            self.stats.coalesced += 1
            log.warning(
                "schedule fire coalesced",
                schedule=schedule.name,
                id=fire_id(schedule.name, fire),
                into=fire_id(schedule.name, plan.fire[-1]) if plan.fire else None,
            )
        counts = self.stats.of(schedule.name)
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
            self.stats.skipped += plan.more_skipped
            log.warning(
                "schedule fires skipped",
                schedule=schedule.name,
                count=plan.more_skipped,
                misfire=schedule.misfire,
            )

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
