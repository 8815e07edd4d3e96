"""The clock's sections: ``[[schedule]]`` and ``[[heartbeat]]`` (read by
:func:`~tubeworker.config_sections.build`)."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from tubeworker.beanstalk.protocol import MAX_INT, validate_tube_name
from tubeworker.config_model import HeartbeatConfig, ScheduleConfig
from tubeworker.config_reader import Reader
from tubeworker.errors import LocalProtocolError
from tubeworker.schedule import HEARTBEAT_NAME_ROOM, check_cron, zone

__all__ = ["heartbeats", "schedules"]

_D_SCHEDULE: Final = ScheduleConfig("", "")
_D_HEARTBEAT: Final = HeartbeatConfig("")
_OVERLAPS: Final = ("allow", "skip")

_SCHEDULE_KEYS: Final = (
    "name",
    "cron",
    "every",
    "timezone",
    "tube",
    "task",
    "payload",
    "body",
    "priority",
    "ttr",
    "delay",
    "misfire",
    "catch_up_window",
    "catch_up_max",
    "jitter",
    "overlap",
)
# A schedule's name is part of its tick tube's name and of its fires' ids (no colon).
_SCHEDULE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,150}$")


def _schedule_when(reader: Reader) -> tuple[str | None, float | None]:
    cron = reader.text("cron")
    every = reader.seconds("every", 0.0, low=0, high=MAX_INT) or None
    if cron is not None and every is not None:
        return reader.bad("every", "give cron or every, not both", (cron, None))
    if cron is None and every is None:
        if "cron" not in reader.table and "every" not in reader.table:
            reader.report("cron", "a schedule needs cron (five fields) or every (e.g. '5m')")
        return None, None
    if every is not None and every < 1:
        return reader.bad("every", f"must be at least 1 second, got {every:g}", (None, None))
    if cron is not None:
        problem = check_cron(cron)
        if problem is not None:
            return reader.bad("cron", problem, (None, None))
    return cron, every


def _schedule(reader: Reader, index: int) -> ScheduleConfig:
    reader.check_unknown(_SCHEDULE_KEYS)
    name = reader.text("name")
    if name is None:
        name = reader.bad("name", "a schedule needs a name", f"schedule{index}")
    elif not _SCHEDULE_NAME.match(name):
        problem = f"must be letters, digits, '_', '.' or '-' (no ':'), got {name!r}"
        name = reader.bad("name", problem, f"schedule{index}")
    cron, every = _schedule_when(reader)
    timezone = reader.text("timezone") or _D_SCHEDULE.timezone
    try:
        zone(timezone)
    except ValueError as exc:
        timezone = reader.bad("timezone", f"{exc} (an IANA name like 'Europe/Berlin')", "UTC")
    tube = _tube(reader, "tube", "a schedule needs the tube its jobs go to")
    task, body = reader.text("task"), reader.get("body")
    if body is not None and not isinstance(body, str):
        body = reader.bad("body", f"must be a string, got {body!r}", None)
    if (task is None) == (body is None):
        reader.report("task", "give task (an envelope, with payload) or body (raw), not both")
    payload = reader.get("payload")
    if payload is not None and task is None:
        reader.report("payload", "payload goes with task (a raw body has none)")
    misfire = reader.choice("misfire", _D_SCHEDULE.misfire, ("skip", "coalesce", "catch_up"))
    return ScheduleConfig(
        name=name,
        tube=tube,
        cron=cron,
        every=every,
        timezone=timezone,
        task=task,
        payload=payload,
        body=body,
        priority=reader.integer("priority", _D_SCHEDULE.priority),
        ttr=reader.integer("ttr", _D_SCHEDULE.ttr, low=1),
        delay=reader.integer("delay", _D_SCHEDULE.delay),
        misfire="skip"
        if misfire == "skip"
        else "catch_up"
        if misfire == "catch_up"
        else "coalesce",
        catch_up_window=reader.seconds("catch_up_window", _D_SCHEDULE.catch_up_window),
        catch_up_max=reader.integer("catch_up_max", _D_SCHEDULE.catch_up_max, high=100_000),
        jitter=reader.seconds("jitter", _D_SCHEDULE.jitter, high=86_400),
        overlap="skip" if reader.choice("overlap", "allow", _OVERLAPS) == "skip" else "allow",
    )


def schedules(top: Reader) -> tuple[ScheduleConfig, ...]:
    raw = top.get("schedule") or []
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        return top.bad("schedule", "must be an array of tables ([[schedule]])", ())
    given = [t.get("name") for t in raw]
    # Problems name the schedule (schedule.NAME.cron) where its name is its own.
    paths = [
        f"schedule.{name}" if isinstance(name, str) and given.count(name) == 1 else f"schedule[{i}]"
        for i, name in enumerate(given)
    ]
    schedules = tuple(_schedule(top.reader(t, paths[i]), i) for i, t in enumerate(raw))
    names = [s.name for s in schedules]
    for i, name in enumerate(names):
        if name in names[:i]:
            top.report(f"{paths[i]}.name", f"two schedules are named {name!r}")
    return schedules


_HEARTBEAT_KEYS: Final = ("tube", "every", "ping_url", "priority", "ttr")


def _tube(reader: Reader, name: str, problem: str) -> str:
    tube = reader.text(name)
    if tube is None:
        return reader.bad(name, problem, "")
    try:
        validate_tube_name(tube, name)
    except LocalProtocolError as exc:
        return reader.bad(name, str(exc), "")
    return tube


def _heartbeat(reader: Reader) -> HeartbeatConfig:
    reader.check_unknown(_HEARTBEAT_KEYS)
    tube = _tube(reader, "tube", 'a heartbeat needs the tube it proves (tube = "emails")')
    if len(tube) > HEARTBEAT_NAME_ROOM:
        tube = reader.bad(
            "tube", f"at most {HEARTBEAT_NAME_ROOM} characters for a heartbeat's tube", ""
        )
    every = reader.seconds("every", _D_HEARTBEAT.every, low=1, high=86_400)
    ping_url = reader.get("ping_url") or None  # "" (as in the docs' example): no ping
    if ping_url is not None and not isinstance(ping_url, str):
        ping_url = reader.bad("ping_url", f"must be a URL string, got {ping_url!r}", None)
    if ping_url is not None:
        parts = urlsplit(ping_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            ping_url = reader.bad("ping_url", f"must be an http(s) URL, got {ping_url!r}", None)
    return HeartbeatConfig(
        tube=tube,
        every=every,
        ping_url=ping_url,
        priority=reader.integer("priority", _D_HEARTBEAT.priority),
        ttr=reader.integer("ttr", _D_HEARTBEAT.ttr, low=1),
    )


def heartbeats(top: Reader) -> tuple[HeartbeatConfig, ...]:
    raw = top.get("heartbeat") or []
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        return top.bad("heartbeat", "must be an array of tables ([[heartbeat]])", ())
    found = tuple(_heartbeat(top.reader(t, f"heartbeat[{i}]")) for i, t in enumerate(raw))
    tubes = [h.tube for h in found]
    for i, tube in enumerate(tubes):
        if tube and tube in tubes[:i]:
            top.report(f"heartbeat[{i}].tube", f"two heartbeats prove the tube {tube!r}")
    return found
