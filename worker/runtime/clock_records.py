"""What a tick's holder reads before it fires, and writes after: the schedule's pause and
its last run, each one delayed job in a tube of its own beside the tick's
(tubeworker.schedule-pause.NAME, tubeworker.schedule-run.NAME; see tubeworker.schedule).

Kept apart from the tick so that nobody has to hold the tick to change them (an operator
pauses a schedule whose tick a daemon holds nearly all the time, as with ``every = "1s"``),
and so that the tick's own write stays the one write that makes a fire exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import greenstalk

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client
from tubeworker.config_model import ScheduleConfig
from tubeworker.schedule import (
    RECORD_DELAY,
    TICK_TTR,
    decode_pause,
    decode_run,
    encode_run,
    pause_tube,
    run_tube,
)

__all__ = ["PLAN_TUBE", "HolderState", "claim_plan", "note_run", "read_state", "unfinished"]

PLAN_TUBE = "tubeworker.schedules"  # the one plan job: who holds it alone may make ticks
_RECORD_TTR = 1


@dataclass(frozen=True, slots=True)
class HolderState:
    paused_until: float | None = None
    last_job: int | None = None  # the last fire's job (overlap = "skip" only)
    run_record: int | None = None  # the record that says so


async def read_state(client: Client, schedule: ScheduleConfig) -> HolderState:
    """The schedule's pause, and with ``overlap = "skip"`` its last run: one write."""
    commands: list[p.Command] = [p.Use(pause_tube(schedule.name)), p.PeekDelayed()]
    if schedule.overlap == "skip":
        commands += [p.Use(run_tube(schedule.name)), p.PeekDelayed()]
    replies = await client.pipeline(commands)
    paused = replies[1]
    until = decode_pause(paused.body) if isinstance(paused, p.Found) else None
    if schedule.overlap != "skip":
        return HolderState(until)
    run = replies[3]
    if not isinstance(run, p.Found):
        return HolderState(until)
    return HolderState(until, decode_run(run.body), run.id)


async def unfinished(client: Client, job_id: int | None, tube: str) -> bool:
    """Whether a schedule's last fire (job ``job_id``) is still queued or running: ready,
    delayed or reserved in its tube. Deleted, buried, or an id now on another tube (a
    server restarted without its binlog reuses ids): finished."""
    if job_id is None:
        return False
    try:
        stats = await client.stats_job(job_id)
    except greenstalk.NotFoundError:
        return False
    return stats.tube == tube and stats.state in ("ready", "delayed", "reserved")


async def note_run(
    client: Client, schedule: ScheduleConfig, fire: float, job_id: int, state: HolderState
) -> None:
    """Record ``job_id`` as the last run and drop the previous record: a write after the
    fire's (the id is known only then), so losing it with this process costs one overlap
    at most, never a fire."""
    commands: list[p.Command] = [
        p.Use(run_tube(schedule.name)),
        p.Put(encode_run(schedule.name, fire, job_id), 0, RECORD_DELAY, _RECORD_TTR),
    ]
    if state.run_record is not None:
        commands.append(p.Delete(state.run_record))
    await client.pipeline(commands)


async def claim_plan(client: Client) -> int | None:
    """The plan job, reserved and held alone; None when another daemon holds one."""
    await client.use(PLAN_TUBE)
    try:
        plan = await client.reserve(0)
    except greenstalk.TimedOutError:
        try:
            held = (await client.stats_tube(PLAN_TUBE)).current_jobs_reserved
        except greenstalk.NotFoundError:
            held = 0
        if held:
            return None
        await client.put(b"plan", ttr=TICK_TTR)
        try:
            plan = await client.reserve(0)
        except greenstalk.TimedOutError:
            return None
    # Racing daemons may each have put a plan: delete those waiting; if another is held
    # at the same time, step back (and let a later round, with jitter, settle it).
    while True:
        try:
            extra = await client.peek_ready()
        except greenstalk.NotFoundError:
            break
        await client.delete(extra.id)
    if (await client.stats_tube(PLAN_TUBE)).current_jobs_reserved > 1:
        await client.release(plan.id, delay=1)
        return None
    return plan.id
