"""Schedules, pure: when a ``[[schedule]]`` fires, what runs after a misfire, and the
records the clock keeps in beanstalkd (ticks) and puts (fire ids). No I/O, no clock of its
own: every function takes the time it is asked about.

- Cron expressions are read by cronsim, which follows Debian cron's DST rules: a
  fixed-time job (``30 2 * * *``) runs once in a repeated hour and right after a skipped
  one; wildcard-hour jobs keep their spacing in real time.
- ``every`` schedules fire at the multiples of their interval since the Unix epoch, so
  every daemon computes the same fire times without talking to the others.
- A fire's id is ``schedule:NAME:2026-12-03T01:30:00Z`` (UTC, whole seconds; fractions
  only for sub-second ``every``), carried in the envelope as ``id``; ``job.schedule``
  reads it back.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from tubeworker.config_model import HeartbeatConfig, ScheduleConfig
from tubeworker.envelope import encode_envelope

__all__ = [
    "GRACE",
    "HEARTBEAT_BODY_START",
    "HEARTBEAT_NAME_ROOM",
    "HEARTBEAT_TASK",
    "ID_PREFIX",
    "LEAD",
    "RECORD_DELAY",
    "TICK_TTR",
    "FirePlan",
    "HeartbeatRecord",
    "ScheduleRef",
    "Tick",
    "as_utc",
    "check_cron",
    "clock_schedules",
    "decode_pause",
    "decode_run",
    "definition_hash",
    "early",
    "encode_pause",
    "encode_run",
    "fire_body",
    "fire_id",
    "fires_between",
    "heartbeat_schedule",
    "in_zone",
    "job_delay",
    "next_fire",
    "parse_fire_id",
    "pause_tube",
    "plan_fires",
    "record_tube",
    "run_tube",
    "schedule_tube",
    "tick_priority",
    "with_overlap",
    "zone",
]

ID_PREFIX: Final = "schedule:"
TUBE_PREFIX: Final = "tubeworker.schedule."
# Heartbeats are schedules of the clock's own: ``heartbeat.TUBE`` puts the built-in task
# into TUBE; each run leaves its record in ``tubeworker.heartbeat.TUBE``.
HEARTBEAT_TASK: Final = "tubeworker.heartbeat"
HEARTBEAT_PREFIX: Final = "heartbeat."
RECORD_PREFIX: Final = "tubeworker.heartbeat."
LEAD: Final = 1.0  # a tick is ready LEAD to LEAD + 1 s before its fire (whole-second delays)
# A holder waits at most LEAD + 2 s before it acts on its tick; a stopped holder's tick
# goes to another daemon this long after it was reserved.
TICK_TTR: Final = 10
# A fire put at most this late (seconds) is on time; later, it was missed (the misfire
# policy decides whether it runs).
GRACE: Final = 1.0
# Fires looked at after a long downtime (each skipped one is a log line); past this many
# the rest are counted in one line.
MAX_LISTED: Final = 1000


@dataclass(frozen=True, slots=True)
class ScheduleRef:
    """What ``job.schedule`` tells a handler: the schedule and the fire time it stands for."""

    name: str
    fire_time: datetime  # aware, UTC


def zone(name: str) -> ZoneInfo:
    """The IANA zone (KeyError-free: ValueError naming it when unknown)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def check_cron(expr: str) -> str | None:
    """None when ``expr`` is a valid five-field cron expression, else why not."""
    if len(expr.split()) != 5:
        return f"must have five fields (minute hour day month weekday), got {expr!r}"
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        return f"bad cron expression {expr!r}: {exc}"
    return None


def schedule_tube(name: str) -> str:
    return TUBE_PREFIX + name


def heartbeat_schedule(heartbeat: HeartbeatConfig) -> ScheduleConfig:
    """The schedule that puts a heartbeat's jobs: one pending at a time (a stalled tube
    does not fill up with heartbeats), missed ones coalesced."""
    return ScheduleConfig(
        name=HEARTBEAT_PREFIX + heartbeat.tube,
        tube=heartbeat.tube,
        every=heartbeat.every,
        task=HEARTBEAT_TASK,
        payload={"tube": heartbeat.tube, "every": heartbeat.every, "ping_url": heartbeat.ping_url},
        priority=heartbeat.priority,
        ttr=heartbeat.ttr,
        misfire="coalesce",
        overlap="skip",
    )


def clock_schedules(
    schedules: tuple[ScheduleConfig, ...], heartbeats: tuple[HeartbeatConfig, ...]
) -> tuple[ScheduleConfig, ...]:
    """Everything the clock puts: the ``[[schedule]]`` tables, then the heartbeats'."""
    return schedules + tuple(heartbeat_schedule(h) for h in heartbeats)


def record_tube(tube: str) -> str:
    """Where the runs of ``tube``'s heartbeat are recorded."""
    return RECORD_PREFIX + tube


# How every heartbeat job's body starts (encode_envelope writes the task first): a pool
# bound to one handler's raw bodies still knows a heartbeat from it.
HEARTBEAT_BODY_START: Final = b'{"task":"%s",' % HEARTBEAT_TASK.encode()
_MAX_PRIORITY: Final = 2**32 - 1


@dataclass(frozen=True, slots=True)
class HeartbeatRecord:
    """A heartbeat's run, kept as a job in :func:`record_tube`: ``ran`` (Unix seconds),
    the fire it answered and who ran it. Its priority falls as ``ran`` grows, so the
    newest record is the first ready one (``peek-ready`` reads it)."""

    tube: str
    ran: float
    fire: str | None = None  # the heartbeat job's id (schedule:heartbeat.TUBE:TIME)
    by: str | None = None  # host:pid of the daemon that ran it

    @property
    def priority(self) -> int:
        return max(0, _MAX_PRIORITY - math.floor(self.ran))

    def encode(self) -> bytes:
        data = {"tube": self.tube, "ran": self.ran, "fire": self.fire, "by": self.by}
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes) -> HeartbeatRecord | None:
        try:
            data = json.loads(body)
            fire, by = data.get("fire"), data.get("by")
            return cls(
                str(data["tube"]),
                float(data["ran"]),
                None if fire is None else str(fire),
                None if by is None else str(by),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def next_fire(schedule: ScheduleConfig, after: float) -> float:
    """The first fire time strictly after ``after`` (Unix seconds)."""
    if schedule.every is not None:
        every = schedule.every
        return (math.floor(after / every) + 1) * every
    assert schedule.cron is not None
    tz = zone(schedule.timezone)
    start = datetime.fromtimestamp(math.floor(after), tz)
    return next(iter(CronSim(schedule.cron, start))).timestamp()


def fires_between(schedule: ScheduleConfig, first: float, until: float, limit: int) -> list[float]:
    """Fire times from ``first`` (itself a fire time) up to ``until`` inclusive, at most
    ``limit`` of them."""
    fires: list[float] = []
    fire = first
    while fire <= until and len(fires) < limit:
        fires.append(fire)
        fire = next_fire(schedule, fire)
    return fires


def fire_id(name: str, fire: float) -> str:
    return f"{ID_PREFIX}{name}:{_iso(fire)}"


def _iso(fire: float) -> str:
    moment = datetime.fromtimestamp(fire, UTC)
    if fire == math.floor(fire):
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_fire_id(id_key: str | None) -> ScheduleRef | None:
    """The schedule and fire time of a fire's id; None for any other id."""
    if not id_key or not id_key.startswith(ID_PREFIX):
        return None
    # the time holds colons too: split at the name's end (names have no colon)
    name, sep, when = id_key[len(ID_PREFIX) :].partition(":")
    if not sep or not name or not when.endswith("Z"):
        return None
    try:
        moment = datetime.fromisoformat(when[:-1]).replace(tzinfo=UTC)
    except ValueError:
        return None
    return ScheduleRef(name, moment)


def definition_hash(schedule: ScheduleConfig) -> str:
    """A short hash of every field: a tick planned by another definition is re-planned."""
    text = json.dumps(asdict(schedule), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Tick:
    """A tick job's body: the next fire of a schedule, under which definition."""

    name: str
    fire: float
    hash: str
    last: float | None = None  # the last fire put (for `tubeworker schedules`)

    def encode(self) -> bytes:
        data = {"schedule": self.name, "fire": self.fire, "hash": self.hash, "last": self.last}
        return json.dumps(data).encode()

    @classmethod
    def decode(cls, body: bytes) -> Tick | None:
        try:
            data = json.loads(body)
            last = data.get("last")
            return cls(
                str(data["schedule"]),
                float(data["fire"]),
                str(data["hash"]),
                None if last is None else float(last),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


# Beside each tick, two records a holder reads before it fires, each one delayed job in a
# tube of its own that nobody reserves: a pause (delayed until the pause ends, so it lapses
# by itself) and the last run (for overlap = "skip": that fire's job id).
PAUSE_PREFIX: Final = "tubeworker.schedule-pause."
RUN_PREFIX: Final = "tubeworker.schedule-run."
RECORD_DELAY: Final = 2**31 - 1  # seconds: a run record is never ready


# beanstalkd's tube names are at most 200 bytes; a pause record's tube has the longest
# prefix (a heartbeat's schedule name is its tube's with HEARTBEAT_PREFIX).
HEARTBEAT_NAME_ROOM: Final = 200 - len(PAUSE_PREFIX + HEARTBEAT_PREFIX)


def pause_tube(name: str) -> str:
    return PAUSE_PREFIX + name


def run_tube(name: str) -> str:
    return RUN_PREFIX + name


def encode_pause(name: str, until: float) -> bytes:
    return json.dumps({"schedule": name, "until": until}).encode()


def decode_pause(body: bytes) -> float | None:
    """The end of a pause record's pause (Unix seconds), None if unreadable."""
    try:
        return float(json.loads(body)["until"])
    except (ValueError, KeyError, TypeError):
        return None


def encode_run(name: str, fire: float, job_id: int) -> bytes:
    return json.dumps({"schedule": name, "fire": fire, "job": job_id}).encode()


def decode_run(body: bytes) -> int | None:
    """The job id of a run record's fire, None if unreadable."""
    try:
        return int(json.loads(body)["job"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What a tick holder does at ``now`` for a tick of fire time ``first``: put the jobs of
    ``fire`` (fire times; the id of each), log the ``skipped`` and ``coalesced`` ones, and
    plan the next tick for ``next``."""

    fire: tuple[float, ...]
    skipped: tuple[float, ...]
    coalesced: tuple[float, ...]
    next: float
    more_skipped: int = 0  # missed fires beyond MAX_LISTED, counted not listed
    paused: tuple[float, ...] = ()  # due while the schedule was paused: not run
    overlapped: tuple[float, ...] = ()  # not run: the previous run had not finished


def plan_fires(
    schedule: ScheduleConfig, first: float, now: float, *, paused_until: float | None = None
) -> FirePlan:
    """The fires due by ``now`` from the tick's ``first``: those at most GRACE late always
    run; older ones (missed) as the misfire policy says; none due before ``paused_until``
    (a pause skips its fires: nothing is caught up after it)."""
    plan = _plan_fires(schedule, first, now)
    if paused_until is None or not any(f < paused_until for f in plan.fire):
        return plan
    kept = tuple(f for f in plan.fire if f >= paused_until)
    paused = tuple(f for f in plan.fire if f < paused_until)
    return replace(plan, fire=kept, paused=paused)


def with_overlap(schedule: ScheduleConfig, plan: FirePlan, *, running: bool) -> FirePlan:
    """With ``overlap = "skip"``: one run at a time. None while the previous run is
    unfinished (``running``); else only the latest of several due fires (a catch-up must
    not start runs side by side)."""
    if schedule.overlap != "skip" or not plan.fire:
        return plan
    if running:
        return replace(plan, fire=(), overlapped=plan.fire)
    return replace(plan, fire=plan.fire[-1:], overlapped=plan.fire[:-1])


def _plan_fires(schedule: ScheduleConfig, first: float, now: float) -> FirePlan:
    due = fires_between(schedule, first, now, MAX_LISTED)
    more = 0
    if not due:
        following = first
    else:
        following = next_fire(schedule, due[-1])
        if following <= now:  # a long downtime: count what was not listed, plan from now
            more = _count_between(schedule, following, now)
            following = next_fire(schedule, now)
    on_time = tuple(f for f in due if now - f <= GRACE)
    missed = tuple(f for f in due if now - f > GRACE)
    if not missed:
        return FirePlan(on_time, (), (), following, more)
    if schedule.misfire == "skip":
        return FirePlan(on_time, missed, (), following, more)
    if schedule.misfire == "coalesce":
        if on_time:
            return FirePlan(on_time, (), missed, following, more)
        return FirePlan((missed[-1],), (), missed[:-1], following, more)
    window = tuple(f for f in missed if now - f <= schedule.catch_up_window)
    kept = window[-schedule.catch_up_max :] if schedule.catch_up_max else ()
    skipped = tuple(f for f in missed if f not in kept)
    return FirePlan(kept + on_time, skipped, (), following, more)


def _count_between(schedule: ScheduleConfig, first: float, until: float) -> int:
    if schedule.every is not None:
        return math.floor((until - first) / schedule.every) + 1
    count = 0
    fire = first
    while fire <= until:  # cron: at most one fire a minute, and downtimes are bounded
        count += 1
        fire = next_fire(schedule, fire)
    return count


def tick_priority(fire: float) -> int:
    """Ticks are ready earliest fire first: the priority is the fire's Unix second."""
    return min(max(0, math.floor(fire)), _MAX_PRIORITY)


def fire_body(schedule: ScheduleConfig, fire: float) -> bytes:
    """The job a fire puts: the raw ``body``, or the envelope of ``task`` and ``payload``
    with the fire's id."""
    if schedule.body is not None:
        return schedule.body.encode()
    assert schedule.task is not None
    return encode_envelope(schedule.task, schedule.payload, id=fire_id(schedule.name, fire))


def job_delay(schedule: ScheduleConfig, rng: random.Random) -> int:
    """A fire's job delay: the schedule's ``delay`` plus a whole-second jitter drawn from
    [0, jitter] (beanstalkd's delays are whole seconds), so fleets of schedules that fire
    together do not all become ready in the same second."""
    if not schedule.jitter:
        return schedule.delay
    return schedule.delay + math.floor(rng.uniform(0, math.floor(schedule.jitter) + 1 - 1e-9))


def early(fire: float, now: float, lead: float) -> int:
    """The whole-second delay of a tick for ``fire`` so that it is ready ``lead`` to
    ``lead + 1`` seconds before it (beanstalkd's delays are whole seconds)."""
    return max(0, math.floor(fire - now - lead))


def as_utc(fire: float) -> datetime:
    return datetime.fromtimestamp(fire, UTC)


def in_zone(fire: float, name: str) -> datetime:
    return datetime.fromtimestamp(fire, zone(name))
