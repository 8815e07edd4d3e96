"""Schedules, pure: pauses and overlap in a fire plan, the tick's records of them, and
heartbeats (their schedule, records and how a bound pool knows one)."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from tubeworker.beanstalk import protocol as p
from tubeworker.config_model import HeartbeatConfig, ScheduleConfig
from tubeworker.envelope import encode_envelope
from tubeworker.heartbeat import heartbeat
from tubeworker.job import spec_of
from tubeworker.runtime.clock_moves import Marker
from tubeworker.runtime.dispatch import DispatchRules, Plan, plan_job
from tubeworker.runtime.policy import RetrySettings
from tubeworker.schedule import (
    HEARTBEAT_BODY_START,
    HEARTBEAT_TASK,
    HeartbeatRecord,
    Tick,
    clock_schedules,
    decode_pause,
    decode_run,
    definition_hash,
    encode_pause,
    encode_run,
    fire_id,
    heartbeat_schedule,
    job_delay,
    pause_tube,
    plan_fires,
    record_tube,
    run_tube,
    schedule_tube,
    with_overlap,
)

EVERY = ScheduleConfig("s", "t", every=10.0, task="x", misfire="catch_up", catch_up_max=5)


def test_given_a_pause_then_fires_before_its_end_are_skipped_and_later_ones_run() -> None:
    # fires 100..140 due at 140.2 (catch_up keeps the missed ones); paused until 125
    plan = plan_fires(EVERY, 100.0, 140.2, paused_until=125.0)
    assert plan.paused == (100.0, 110.0, 120.0)
    assert plan.fire == (130.0, 140.0)
    assert plan.next == 150.0


def test_given_a_pause_over_every_due_fire_then_none_runs_and_the_plan_goes_on() -> None:
    plan = plan_fires(EVERY, 100.0, 100.1, paused_until=3600.0)
    assert (plan.fire, plan.paused, plan.next) == ((), (100.0,), 110.0)
    # a pause that ended changes nothing
    assert plan_fires(EVERY, 100.0, 100.1, paused_until=50.0) == plan_fires(EVERY, 100.0, 100.1)


def test_given_overlap_skip_then_a_running_previous_fire_holds_back_every_due_one() -> None:
    skip = replace(EVERY, overlap="skip")
    plan = plan_fires(skip, 100.0, 130.2)
    assert plan.fire == (100.0, 110.0, 120.0, 130.0)
    held = with_overlap(skip, plan, running=True)
    assert (held.fire, held.overlapped) == ((), (100.0, 110.0, 120.0, 130.0))
    # not running: one run only, the latest (a catch-up never starts runs side by side)
    free = with_overlap(skip, plan, running=False)
    assert (free.fire, free.overlapped) == ((130.0,), (100.0, 110.0, 120.0))
    # overlap = "allow" (the default) changes nothing
    assert with_overlap(EVERY, plan, running=True) == plan


@given(fire=st.floats(0, 2e9), last=st.none() | st.floats(0, 2e9))
def test_a_tick_reads_back_what_it_wrote(fire: float, last: float | None) -> None:
    tick = Tick("nightly", fire, "abc", last)
    assert Tick.decode(tick.encode()) == tick


@given(until=st.floats(0, 4e9), job=st.integers(1, 2**63))
def test_pause_and_run_records_read_back_what_they_wrote(until: float, job: int) -> None:
    assert decode_pause(encode_pause("s", until)) == until
    assert decode_run(encode_run("s", 120.0, job)) == job
    assert decode_pause(b"{}") is None
    assert decode_run(b"[1]") is None
    # each in a tube of its own beside the tick's, within beanstalkd's 200 bytes
    name = "n" * 151  # the longest name a config takes
    assert max(len(pause_tube(name)), len(run_tube(name))) <= 200


def test_a_heartbeat_is_a_schedule_of_the_clock_one_run_at_a_time() -> None:
    beat = HeartbeatConfig("emails", every=30.0, ping_url="http://127.0.0.1:9/ping")
    schedule = heartbeat_schedule(beat)
    assert (schedule.name, schedule.tube, schedule.every) == ("heartbeat.emails", "emails", 30.0)
    assert (schedule.task, schedule.overlap, schedule.misfire) == (
        HEARTBEAT_TASK,
        "skip",
        "coalesce",
    )
    assert schedule.payload == {"tube": "emails", "every": 30.0, "ping_url": beat.ping_url}
    assert schedule_tube(schedule.name) == "tubeworker.schedule.heartbeat.emails"
    assert clock_schedules((EVERY,), (beat,)) == (EVERY, schedule)
    # a changed heartbeat is a changed definition: its tick is re-planned
    assert definition_hash(schedule) != definition_hash(heartbeat_schedule(replace(beat, every=60)))


def test_given_records_then_the_newest_is_ready_first() -> None:
    older, newer = (
        HeartbeatRecord("emails", 1_796_000_000.5),
        HeartbeatRecord("emails", 1_796_000_060.0),
    )
    assert newer.priority < older.priority  # beanstalkd hands out the lowest first
    assert HeartbeatRecord.decode(newer.encode()) == newer
    assert HeartbeatRecord.decode(b"not json") is None
    assert record_tube("emails") == "tubeworker.heartbeat.emails"


def test_given_a_heartbeat_in_a_pool_bound_to_one_handler_then_the_heartbeat_runs_it() -> None:
    body = encode_envelope(HEARTBEAT_TASK, {"tube": "raw"}, id=fire_id("heartbeat.raw", 60.0))
    assert body.startswith(HEARTBEAT_BODY_START)
    bound = spec_of(lambda job: None)
    specs = {HEARTBEAT_TASK: spec_of(heartbeat)}
    rules = DispatchRules(RetrySettings(), specs.get, bound=bound, bound_name="raw-handler")
    stats = p.JobStats(7, "raw", "reserved", 1024, 0, 0, 60, 59, 0, 1, 0, 0, 0, 0)
    plan = plan_job(7, body, stats, rules)
    assert isinstance(plan, Plan)
    assert (plan.handler, plan.job.task, plan.job.id_key) == (
        HEARTBEAT_TASK,
        HEARTBEAT_TASK,
        "schedule:heartbeat.raw:1970-01-01T00:01:00Z",
    )
    # and the pool's own raw bodies still go to its handler
    other = plan_job(8, b'{"task": "x"}', stats, rules)
    assert isinstance(other, Plan)
    assert other.handler == "raw-handler"


@given(jitter=st.floats(0, 120), delay=st.integers(0, 3600), seed=st.integers())
def test_a_jittered_fire_is_delayed_by_whole_seconds_within_the_jitter(
    jitter: float, delay: int, seed: int
) -> None:
    schedule = replace(EVERY, jitter=jitter, delay=delay)
    rng = random.Random(seed)
    for _ in range(20):
        assert delay <= job_delay(schedule, rng) <= delay + jitter


def test_a_jitter_spreads_fires_over_every_whole_second_it_allows() -> None:
    rng = random.Random(7)
    seen = {job_delay(replace(EVERY, jitter=3.0), rng) for _ in range(400)}
    assert seen == {0, 1, 2, 3}
    assert job_delay(EVERY, rng) == 0  # no jitter: the delay as configured


def test_a_move_marker_reads_back_what_it_wrote() -> None:
    marker = Marker("127.0.0.1:11300", {"nightly": 1_796_000_000.0, "heartbeat.emails": 60.0})
    assert Marker.decode(marker.encode()) == marker
    assert Marker.decode(b'{"to": "x"}') is None
