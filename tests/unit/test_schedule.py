"""Schedules, pure: fire times (cron across DST changes, every), misfire plans, ids, ticks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from tubeworker.config_model import ScheduleConfig
from tubeworker.schedule import (
    GRACE,
    ScheduleRef,
    Tick,
    check_cron,
    definition_hash,
    early,
    fire_id,
    fires_between,
    next_fire,
    parse_fire_id,
    plan_fires,
)

ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Australia/Adelaide",  # +9:30 / +10:30
    "Australia/Lord_Howe",  # a 30-minute DST shift
]


def _transitions(zone: str, year: int = 2026) -> list[tuple[datetime, timedelta, timedelta]]:
    """Each offset change of ``zone`` in ``year``: (instant UTC, offset before, after)."""
    tz = ZoneInfo(zone)
    found = []
    step = timedelta(minutes=15)
    t = datetime(year, 1, 1, tzinfo=UTC)
    before = t.astimezone(tz).utcoffset()
    while t.year == year:
        t += step
        after = t.astimezone(tz).utcoffset()
        if after != before:
            assert before is not None
            assert after is not None
            lo = t - step
            while (t - lo) > timedelta(minutes=1):  # to the minute
                mid = lo + (t - lo) / 2
                if mid.astimezone(tz).utcoffset() == before:
                    lo = mid
                else:
                    t = mid
            instant = t.replace(second=0, microsecond=0)
            if instant.astimezone(tz).utcoffset() == before:
                instant += timedelta(minutes=1)
            found.append((instant, before, after))
            before = after
    return found


def _cron(expr: str, zone: str) -> ScheduleConfig:
    return ScheduleConfig("s", "t", cron=expr, timezone=zone, task="x")


def _fires(schedule: ScheduleConfig, start: datetime, end: datetime) -> list[datetime]:
    out = []
    fire = next_fire(schedule, start.timestamp())
    while fire <= end.timestamp():
        out.append(datetime.fromtimestamp(fire, UTC))
        fire = next_fire(schedule, fire)
    return out


@pytest.mark.parametrize("zone", ZONES)
def test_given_a_fixed_time_in_the_skipped_hour_then_it_runs_once_right_after(zone: str) -> None:
    spring = [(t, b, a) for t, b, a in _transitions(zone) if a > b]
    assert spring, zone
    instant, before, after = spring[0]
    # a wall time in the middle of the gap (never shown on that day's clocks)
    wall = (instant + before).replace(tzinfo=None) + (after - before) / 2
    schedule = _cron(f"{wall.minute} {wall.hour} * * *", zone)
    fires = _fires(schedule, instant - timedelta(hours=12), instant + timedelta(hours=12))
    assert fires == [instant]  # once, at the moment the clocks jump


@pytest.mark.parametrize("zone", ZONES)
def test_given_a_fixed_time_in_the_repeated_hour_then_it_runs_once(zone: str) -> None:
    autumn = [(t, b, a) for t, b, a in _transitions(zone) if a < b]
    assert autumn, zone
    instant, before, after = autumn[0]
    wall = (instant + after).replace(tzinfo=None) + (before - after) / 2  # repeated
    schedule = _cron(f"{wall.minute} {wall.hour} * * *", zone)
    fires = _fires(schedule, instant - timedelta(hours=12), instant + timedelta(hours=12))
    assert len(fires) == 1
    assert fires[0].astimezone(ZoneInfo(zone)).replace(tzinfo=None) == wall


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Australia/Sydney"])
def test_given_an_hourly_wildcard_then_it_keeps_its_spacing_across_both_changes(
    zone: str,
) -> None:
    schedule = _cron("0 * * * *", zone)
    for instant, _before, _after in _transitions(zone):
        fires = _fires(schedule, instant - timedelta(hours=4), instant + timedelta(hours=4))
        gaps = {(b - a).total_seconds() for a, b in pairwise(fires)}
        assert gaps == {3600.0}, (zone, instant)


def test_given_every_then_fires_are_the_multiples_of_its_interval() -> None:
    schedule = ScheduleConfig("s", "t", every=300.0, task="x")
    assert next_fire(schedule, 1000.0) == 1200.0
    assert next_fire(schedule, 1200.0) == 1500.0  # strictly after
    assert fires_between(schedule, 1200.0, 2100.0, 10) == [1200.0, 1500.0, 1800.0, 2100.0]


def test_given_a_fire_then_its_id_is_iso_utc_and_reads_back() -> None:
    fire = datetime(2026, 12, 3, 1, 30, tzinfo=UTC).timestamp()
    assert fire_id("nightly-report", fire) == "schedule:nightly-report:2026-12-03T01:30:00Z"
    ref = parse_fire_id("schedule:nightly-report:2026-12-03T01:30:00Z")
    assert ref == ScheduleRef("nightly-report", datetime(2026, 12, 3, 1, 30, tzinfo=UTC))
    assert parse_fire_id("order-17") is None
    assert parse_fire_id("schedule:x:not-a-time") is None
    assert parse_fire_id(None) is None


def test_given_bad_crons_then_each_is_named() -> None:
    assert check_cron("30 2 * * *") is None
    assert "five fields" in (check_cron("30 2 * *") or "")
    assert "bad cron" in (check_cron("61 2 * * *") or "")


EVERY = ScheduleConfig(
    "s", "t", every=10.0, task="x", misfire="catch_up", catch_up_max=3, catch_up_window=60.0
)


def test_given_an_on_time_tick_then_it_fires_once_and_plans_the_next() -> None:
    plan = plan_fires(EVERY, 100.0, 100.2)
    assert (plan.fire, plan.skipped, plan.coalesced, plan.next) == ((100.0,), (), (), 110.0)


def test_given_a_fire_at_most_grace_late_then_it_is_on_time_under_every_policy() -> None:
    for misfire in ("skip", "coalesce", "catch_up"):
        plan = plan_fires(replace(EVERY, misfire=misfire), 100.0, 100.0 + GRACE)
        assert plan.fire == (100.0,)


def test_given_downtime_then_skip_runs_none_and_lists_each() -> None:
    plan = plan_fires(replace(EVERY, misfire="skip"), 100.0, 145.0)
    assert plan.fire == ()
    assert plan.skipped == (100.0, 110.0, 120.0, 130.0, 140.0)
    assert plan.next == 150.0


def test_given_downtime_then_coalesce_runs_the_latest_once() -> None:
    plan = plan_fires(replace(EVERY, misfire="coalesce"), 100.0, 145.0)
    assert plan.fire == (140.0,)
    assert plan.coalesced == (100.0, 110.0, 120.0, 130.0)
    # with an on-time fire among them, that one stands for all
    plan = plan_fires(replace(EVERY, misfire="coalesce"), 100.0, 140.5)
    assert plan.fire == (140.0,)
    assert plan.coalesced == (100.0, 110.0, 120.0, 130.0)


def test_given_downtime_then_catch_up_runs_each_within_window_and_cap() -> None:
    plan = plan_fires(replace(EVERY, misfire="catch_up", catch_up_max=100), 100.0, 145.0)
    assert plan.fire == (100.0, 110.0, 120.0, 130.0, 140.0)
    capped = plan_fires(EVERY, 100.0, 145.0)  # catch_up_max = 3
    assert capped.fire == (120.0, 130.0, 140.0)
    assert capped.skipped == (100.0, 110.0)
    old = plan_fires(replace(EVERY, catch_up_max=100), 0.0, 145.0)  # window 60 s
    assert old.fire == (90.0, 100.0, 110.0, 120.0, 130.0, 140.0)
    assert old.skipped == (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0)


def test_given_a_very_long_downtime_then_the_rest_is_counted() -> None:
    every = ScheduleConfig("s", "t", every=1.0, task="x", misfire="skip")
    plan = plan_fires(every, 0.0, 5000.5)
    assert len(plan.skipped) + plan.more_skipped == 5001
    assert plan.next == 5001.0


def test_given_a_tick_then_its_body_round_trips_and_its_delay_brings_it_early() -> None:
    tick = Tick("s", 120.0, definition_hash(EVERY))
    assert Tick.decode(tick.encode()) == tick
    assert Tick.decode(b"nope") is None
    assert early(120.0, 100.0, 2.0) == 18
    assert early(120.0, 119.5, 2.0) == 0
    assert definition_hash(EVERY) != definition_hash(replace(EVERY, every=20.0))
