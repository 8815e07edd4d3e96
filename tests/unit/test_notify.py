"""sd_notify messages and what the daemon says in them: the status line, done per minute,
open breakers, the drain's STOPPING=1 / STATUS= / EXTEND_TIMEOUT_USEC= under MockClock.

The datagrams on a real unix socket are in tests/e2e/test_systemd_notify.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from tests.support.daemon import make_config
from tubeworker.flow import ApiSettings, ApiTracker, BreakerSettings, CallOutcome
from tubeworker.runtime.outcome import Cause
from tubeworker.runtime.state import WorkerState
from tubeworker.service.daemon import _drain_deadline
from tubeworker.service.notify import Notifier, encode
from tubeworker.service.status import (
    DRAIN_MARGIN,
    DoneRate,
    drain_line,
    finished_jobs,
    open_breakers,
    run_drain_updates,
    run_status_updates,
    status_line,
)


class RecordingNotifier(Notifier):
    """A notifier that keeps its messages instead of sending them (a fake, not a mock)."""

    def __init__(self) -> None:
        super().__init__("@recording", watchdog_usec=None)
        self.sent: list[tuple[float, dict[str, str]]] = []

    def send(self, **fields: str) -> None:
        self.sent.append((trio.current_time(), {k.upper(): v for k, v in fields.items()}))

    def statuses(self) -> list[str]:
        return [fields["STATUS"] for _, fields in self.sent if "STATUS" in fields]


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


# --- the messages -------------------------------------------------------------------------


def test_given_fields_then_one_assignment_per_line_with_upper_case_keys() -> None:
    assert encode({"ready": "1", "status": "running"}) == b"READY=1\nSTATUS=running"


def test_given_a_newline_in_a_value_then_it_cannot_start_another_assignment() -> None:
    assert encode({"status": "x\nREADY=1"}) == b"STATUS=x READY=1"


async def test_given_an_extension_then_it_is_sent_in_microseconds_with_the_state() -> None:
    notifier = RecordingNotifier()
    notifier.stopping("draining", extend=12.5)
    notifier.status("draining", extend=-1.0)  # already late: 0, never a negative number
    notifier.status("idle")
    assert [fields for _, fields in notifier.sent] == [
        {"STOPPING": "1", "STATUS": "draining", "EXTEND_TIMEOUT_USEC": "12500000"},
        {"STATUS": "draining", "EXTEND_TIMEOUT_USEC": "0"},
        {"STATUS": "idle"},
    ]


@pytest.mark.parametrize(
    ("env", "enabled", "interval"),
    [
        ({}, False, None),
        ({"NOTIFY_SOCKET": ""}, False, None),
        ({"NOTIFY_SOCKET": "/run/systemd/notify"}, True, None),
        ({"NOTIFY_SOCKET": "@notify", "WATCHDOG_USEC": "30000000"}, True, 15.0),
        ({"NOTIFY_SOCKET": "@n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, True, None),
        ({"NOTIFY_SOCKET": "@n", "WATCHDOG_USEC": "soon"}, True, None),
    ],
)
def test_given_systemds_environment_then_the_notifier_and_its_watchdog_follow_it(
    env: dict[str, str], enabled: bool, interval: float | None
) -> None:
    notifier = Notifier.from_env(env)
    assert notifier.enabled is enabled
    assert notifier.watchdog_interval == interval


def test_given_the_watchdog_pid_is_this_process_then_it_pings() -> None:
    env = {"NOTIFY_SOCKET": "@n", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(env).watchdog_interval == 0.5


# --- the lines ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "line"),
    [
        ({"in_flight": 0, "per_minute": 0.0}, "0 in flight, 0 done/min"),
        ({"in_flight": 12, "per_minute": 339.6}, "12 in flight, 340 done/min"),
        (
            {"in_flight": 12, "per_minute": 340.0, "breakers": ("stripe",)},
            "12 in flight, 340 done/min, breakers open: stripe",
        ),
        (
            {"in_flight": 1, "per_minute": 2.0, "breakers": ("a", "b (probing)"), "quiet": True},
            "quiet (not fetching): 1 in flight, 2 done/min, breakers open: a, b (probing)",
        ),
    ],
)
def test_status_line(kwargs: dict[str, object], line: str) -> None:
    assert status_line(**kwargs) == line  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("SIGTERM", 5, 23.0), "draining (SIGTERM): 5 jobs running, 23s left"),
        (("SIGTERM", 1, 0.2), "draining (SIGTERM): 1 job running, 1s left"),
        (
            ("recycling: max_jobs 5 reached", 0, -3.0),
            "draining (recycling: max_jobs 5 reached): 0 jobs running, 0s left",
        ),
        ((None, 2, 2.0), "draining (stop): 2 jobs running, 2s left"),
    ],
)
def test_drain_line(args: tuple[str | None, int, float], line: str) -> None:
    assert drain_line(*args) == line


def test_given_counters_then_finished_jobs_are_the_ones_with_an_outcome() -> None:
    state = WorkerState()
    counters = state.counters
    counters.deleted, counters.released, counters.buried = 7, 2, 1
    counters.returned, counters.skipped, counters.in_flight = 5, 3, 4
    assert finished_jobs(counters) == 10


# --- done per minute ----------------------------------------------------------------------


def test_given_one_sample_then_the_rate_is_zero() -> None:
    assert DoneRate().sample(10.0, 500) == 0.0


def test_given_less_than_a_minute_of_samples_then_the_rate_is_scaled_to_a_minute() -> None:
    rate = DoneRate()
    rate.sample(0.0, 0)
    assert rate.sample(5.0, 10) == pytest.approx(120.0)
    assert rate.sample(10.0, 30) == pytest.approx(180.0)


def test_given_a_steady_flow_then_the_rate_spans_the_last_minute_only() -> None:
    rate = DoneRate()
    total = 0
    for t in range(0, 125, 5):  # 2 jobs a second for two minutes...
        last = rate.sample(float(t), total)
        total += 10
    assert last == pytest.approx(120.0)
    for t in range(125, 185, 5):  # ...then nothing for a minute
        last = rate.sample(float(t), total - 10)
    assert last == pytest.approx(0.0, abs=11.0)  # the baseline is at most one sample older
    assert rate.sample(185.0, total - 10) == 0.0


def test_given_a_burst_a_minute_ago_then_it_no_longer_counts() -> None:
    rate = DoneRate()
    rate.sample(0.0, 0)
    rate.sample(1.0, 600)  # a burst in the first second
    for t in range(2, 61):
        rate.sample(float(t), 600)
    assert rate.sample(61.0, 600) == 0.0
    assert rate.sample(62.0, 601) == pytest.approx(1.0)


# --- open breakers ------------------------------------------------------------------------


def test_given_breakers_then_the_open_and_probing_ones_are_named() -> None:
    clock = FakeClock()
    quick = BreakerSettings(consecutive_failures=2, cooldown=10.0, jitter=0.0)
    tracker = ApiTracker(
        {"stripe": ApiSettings(breaker=quick), "twilio": ApiSettings(breaker=quick)},
        clock=clock,
    )
    assert open_breakers(None) == ()
    assert open_breakers(tracker) == ()
    tracker.report("stripe", CallOutcome.FAILURE)
    tracker.report("stripe", CallOutcome.FAILURE)
    tracker.report("twilio", CallOutcome.SUCCESS)
    assert open_breakers(tracker) == ("stripe",)
    clock.now += 10.0
    assert open_breakers(tracker) == ("stripe (probing)",)


# --- the reporters, under MockClock -------------------------------------------------------


async def test_given_a_running_worker_then_its_summary_is_sent_when_it_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    state = WorkerState()
    notifier = RecordingNotifier()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_status_updates, state, notifier)
        await trio.sleep(1)
        state.counters.in_flight = 3
        state.counters.deleted = 10  # 10 done in the first 5 s: 120 a minute so far
        await trio.sleep(5)  # t = 6: one summary at t = 5
        assert notifier.sent == [(5.0, {"STATUS": "3 in flight, 120 done/min"})]
        state.counters.in_flight = 0
        await trio.sleep(120)  # idle: the rate falls to 0, then nothing changes
        state.set_quiet(True)
        await trio.sleep(5)
        state.begin_drain("SIGTERM")
        await trio.sleep(60)  # the drain reports from here on: nothing more from this one
    statuses = notifier.statuses()
    assert statuses[0] == "3 in flight, 120 done/min"
    assert statuses[-2:] == [
        "0 in flight, 0 done/min",
        "quiet (not fetching): 0 in flight, 0 done/min",
    ]
    assert len(statuses) == len(set(statuses))  # never the same line twice in a row
    assert notifier.sent[-1][0] < 131.0


async def test_given_a_drain_then_stopping_and_extensions_cover_the_deadline_plus_a_margin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    state = WorkerState()
    state.counters.in_flight = 2
    state.begin_drain("SIGTERM")
    notifier = RecordingNotifier()
    await run_drain_updates(state, notifier, trio.current_time() + 3.5, interval=1.0, margin=10.0)
    assert trio.current_time() == 3.5  # returns at the deadline
    assert notifier.sent == [
        (
            0.0,
            {
                "STOPPING": "1",
                "STATUS": "draining (SIGTERM): 2 jobs running, 4s left",
                "EXTEND_TIMEOUT_USEC": "13500000",
            },
        ),
        (
            1.0,
            {
                "STATUS": "draining (SIGTERM): 2 jobs running, 3s left",
                "EXTEND_TIMEOUT_USEC": "12500000",
            },
        ),
        (
            2.0,
            {
                "STATUS": "draining (SIGTERM): 2 jobs running, 2s left",
                "EXTEND_TIMEOUT_USEC": "11500000",
            },
        ),
        (
            3.0,
            {
                "STATUS": "draining (SIGTERM): 2 jobs running, 1s left",
                "EXTEND_TIMEOUT_USEC": "10500000",
            },
        ),
    ]
    # Each extension reaches the same moment, and each arrives before the last runs out.
    ends = [t + int(f["EXTEND_TIMEOUT_USEC"]) / 1e6 for t, f in notifier.sent]
    assert ends == [13.5] * 4


class FakeLane:
    def __init__(self) -> None:
        self.returned: list[Cause] = []

    def return_job(self, cause: Cause, detail: str, *, lost: bool = False) -> None:
        self.returned.append(cause)


async def test_given_the_daemons_drain_deadline_then_it_reports_and_returns_running_jobs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = make_config("127.0.0.1:11300", drain_timeout=2.0)
    state = WorkerState()
    lane = FakeLane()
    state.busy_lanes.add(lane)
    state.counters.in_flight = 1
    notifier = RecordingNotifier()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain_deadline, state, config, notifier)
        await trio.sleep(10)  # nothing before the drain starts
        assert notifier.sent == []
        state.begin_drain("SIGTERM")
    assert [t for t, _ in notifier.sent] == [10.0, 11.0, 12.0]
    assert "STOPPING" in notifier.sent[0][1]
    assert notifier.sent[-1][1] == {
        "STATUS": "draining (SIGTERM): deadline passed, returning 1 running jobs",
        "EXTEND_TIMEOUT_USEC": str(int(DRAIN_MARGIN * 1_000_000)),
    }
    assert lane.returned == [Cause.DRAIN_DEADLINE]
