"""The per-API circuit breaker as a pure state machine under a fake clock (no sleeps)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tubeworker.flow.breaker import (
    BreakerSettings,
    BreakerState,
    CallOutcome,
    CircuitBreaker,
    Transition,
    TransitionReason,
)

SUCCESS, FAILURE, CALLER_FAULT = (
    CallOutcome.SUCCESS,
    CallOutcome.FAILURE,
    CallOutcome.CALLER_FAULT,
)
CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    breaker: CircuitBreaker
    clock: FakeClock
    transitions: list[Transition] = field(default_factory=list)

    def report(self, outcome: CallOutcome, times: int = 1, **kwargs: Any) -> None:
        for _ in range(times):
            self.breaker.report(outcome, **kwargs)

    def trip(self) -> Transition:
        """Open the breaker by consecutive failures; return the opening transition."""
        self.report(FAILURE, self.breaker.settings.consecutive_failures)
        assert self.breaker.state is OPEN
        return self.transitions[-1]

    def wait_for_half_open(self) -> None:
        next_probe_at = self.breaker.statistics().next_probe_at
        assert next_probe_at is not None
        self.clock.now = next_probe_at
        assert self.breaker.state is HALF_OPEN


# No jitter unless a test asks for it: cool-downs are then exact.
TEST_SETTINGS = BreakerSettings(
    window=60.0,
    failure_rate=0.5,
    min_calls=10,
    consecutive_failures=5,
    cooldown=10.0,
    cooldown_cap=80.0,
    jitter=0.0,
    probes=2,
)


def make(*, seed: int = 0, clock: FakeClock | None = None, **overrides: Any) -> Harness:
    """A breaker for "stripe" under a fake clock, TEST_SETTINGS changed by ``overrides``."""
    clock = clock or FakeClock()
    transitions: list[Transition] = []
    breaker = CircuitBreaker(
        "stripe",
        replace(TEST_SETTINGS, **overrides),
        clock=clock,
        rng=random.Random(seed),
        on_transition=transitions.append,
    )
    return Harness(breaker, clock, transitions)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "bad",
    [
        {"window": 0},
        {"failure_rate": 0},
        {"failure_rate": 1.5},
        {"min_calls": 0},
        {"consecutive_failures": -1},
        {"cooldown": 0},
        {"cooldown": 10, "cooldown_cap": 5},
        {"cooldown_cap": math.inf},
        {"jitter": 1.0},
        {"probes": 0},
    ],
)
def test_given_an_impossible_setting_when_built_then_value_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        BreakerSettings(**bad)


# --------------------------------------------------------------------------- tripping


def test_given_a_new_breaker_then_closed_with_empty_statistics() -> None:
    stats = make().breaker.statistics()
    assert stats.state is CLOSED
    assert (stats.calls, stats.failures, stats.trips, stats.consecutive_failures) == (0, 0, 0, 0)
    assert stats.opened_at is None
    assert stats.next_probe_at is None
    assert stats.cooldown == 10.0


def test_given_consecutive_failures_when_the_nth_arrives_then_opens() -> None:
    h = make(consecutive_failures=5, min_calls=100)
    h.report(FAILURE, 4)
    assert h.breaker.state is CLOSED
    h.report(FAILURE)
    assert h.breaker.state is OPEN
    (opened,) = h.transitions
    assert opened.from_state is CLOSED
    assert opened.to_state is OPEN
    assert opened.reason is TransitionReason.CONSECUTIVE_FAILURES
    assert opened.at == 1000.0
    assert opened.next_probe_at == 1010.0
    assert opened.api == "stripe"


def test_given_failures_broken_by_a_success_then_the_streak_starts_again() -> None:
    h = make(consecutive_failures=3, min_calls=100)
    h.report(FAILURE, 2)
    h.report(SUCCESS)
    h.report(FAILURE, 2)
    assert h.breaker.state is CLOSED
    assert h.breaker.statistics().consecutive_failures == 2


def test_given_consecutive_failures_disabled_then_only_the_rate_trips() -> None:
    h = make(consecutive_failures=0, min_calls=10)
    h.report(FAILURE, 9)
    assert h.breaker.state is CLOSED
    h.report(FAILURE)
    assert h.transitions[-1].reason is TransitionReason.FAILURE_RATE


def test_given_the_failure_rate_reached_with_min_calls_then_opens() -> None:
    h = make(consecutive_failures=0, min_calls=10, failure_rate=0.5)
    # Alternate so no streak forms: 5 successes, 4 failures is 9 calls at 44 %.
    for _ in range(4):
        h.report(SUCCESS)
        h.report(FAILURE)
    h.report(SUCCESS)
    assert h.breaker.state is CLOSED
    h.report(FAILURE)  # 10 calls, 5 failures: 50 %
    assert h.breaker.state is OPEN
    assert h.transitions[-1].reason is TransitionReason.FAILURE_RATE


def test_given_a_high_rate_below_min_calls_then_stays_closed() -> None:
    h = make(consecutive_failures=0, min_calls=10, failure_rate=0.5)
    h.report(FAILURE, 9)  # 100 % of 9 calls
    assert h.breaker.state is CLOSED
    stats = h.breaker.statistics()
    assert (stats.calls, stats.failures) == (9, 9)


def test_given_a_rate_below_the_threshold_then_stays_closed() -> None:
    h = make(consecutive_failures=0, min_calls=10, failure_rate=0.5)
    for _ in range(20):
        h.report(SUCCESS, 2)
        h.report(FAILURE)  # 33 %
    assert h.breaker.state is CLOSED


def test_given_old_calls_when_the_window_slides_past_them_then_they_are_forgotten() -> None:
    h = make(consecutive_failures=0, min_calls=10, failure_rate=0.5, window=60.0)
    h.clock.now = 0.0
    h.report(FAILURE, 9)
    h.clock.now = 59.9  # still inside the window
    assert h.breaker.statistics().calls == 9
    # Buckets are window/20 = 3 s wide: a call counts for at most 63 s.
    h.clock.now = 63.0
    assert h.breaker.statistics().calls == 0
    h.report(FAILURE)  # 1 call at 100 %: below min_calls now
    assert h.breaker.state is CLOSED


def test_given_caller_faults_only_then_never_opens_and_they_count_as_calls() -> None:
    h = make(consecutive_failures=3, min_calls=5)
    h.report(CALLER_FAULT, 50)
    assert h.breaker.state is CLOSED
    stats = h.breaker.statistics()
    assert (stats.calls, stats.failures) == (50, 0)
    assert stats.caller_faults_total == 50


def test_given_a_caller_fault_between_failures_then_the_streak_is_broken() -> None:
    # The API answered: it is up, whatever the request got wrong.
    h = make(consecutive_failures=3, min_calls=100)
    h.report(FAILURE, 2)
    h.report(CALLER_FAULT)
    h.report(FAILURE, 2)
    assert h.breaker.state is CLOSED


def test_given_caller_faults_then_they_dilute_the_failure_rate() -> None:
    h = make(consecutive_failures=0, min_calls=10, failure_rate=0.5)
    h.report(CALLER_FAULT, 6)
    h.report(FAILURE, 5)  # 5 of 11 calls
    assert h.breaker.state is CLOSED


# --------------------------------------------------------------------------- open, half-open


def test_given_open_when_the_cooldown_elapses_then_half_open() -> None:
    h = make()
    h.trip()
    h.clock.advance(9.999)
    assert h.breaker.state is OPEN
    h.clock.advance(0.001)
    assert h.breaker.state is HALF_OPEN
    moved = h.transitions[-1]
    assert (moved.from_state, moved.to_state) == (OPEN, HALF_OPEN)
    assert moved.reason is TransitionReason.COOLDOWN_ELAPSED
    assert moved.next_probe_at is None


def test_given_open_when_calls_report_then_nothing_moves_until_the_cooldown() -> None:
    h = make()
    h.trip()
    h.report(SUCCESS, 3)
    h.report(FAILURE, 3)
    assert h.breaker.state is OPEN
    assert h.breaker.statistics().trips == 1
    assert len(h.transitions) == 1


def test_given_open_then_no_probe_is_allowed() -> None:
    h = make()
    h.trip()
    assert not h.breaker.may_probe()
    assert h.breaker.acquire_probe() is None


def test_given_half_open_then_at_most_the_probe_quota_is_in_flight() -> None:
    h = make(probes=2)
    h.trip()
    h.wait_for_half_open()
    first = h.breaker.acquire_probe()
    second = h.breaker.acquire_probe()
    assert first is not None
    assert second is not None
    assert h.breaker.acquire_probe() is None
    assert not h.breaker.may_probe()
    assert h.breaker.statistics().probes_in_flight == 2
    # When a probe job ends without having decided anything, its slot is free again.
    h.breaker.release_probe(first)
    assert h.breaker.may_probe()
    assert h.breaker.acquire_probe() is not None


def test_given_half_open_when_a_probe_succeeds_then_closes_with_a_fresh_window() -> None:
    h = make()
    h.trip()
    h.wait_for_half_open()
    h.breaker.acquire_probe()
    h.report(SUCCESS)
    assert h.breaker.state is CLOSED
    closed = h.transitions[-1]
    assert closed.reason is TransitionReason.PROBE_SUCCEEDED
    stats = h.breaker.statistics()
    assert (stats.calls, stats.failures, stats.consecutive_failures) == (0, 0, 0)
    assert stats.probes_in_flight == 0
    # The failures that tripped it do not trip it again: one more is just one.
    h.report(FAILURE)
    assert h.breaker.state is CLOSED


def test_given_half_open_when_a_caller_fault_is_reported_then_closes() -> None:
    h = make()
    h.trip()
    h.wait_for_half_open()
    h.report(CALLER_FAULT)
    assert h.breaker.state is CLOSED


def test_given_half_open_when_a_probe_fails_then_reopens_with_a_doubled_cooldown() -> None:
    h = make(cooldown=10.0, cooldown_cap=80.0)
    h.trip()
    h.wait_for_half_open()
    h.report(FAILURE)
    reopened = h.transitions[-1]
    assert (reopened.from_state, reopened.to_state) == (HALF_OPEN, OPEN)
    assert reopened.reason is TransitionReason.PROBE_FAILED
    assert reopened.next_probe_at == reopened.at + 20.0
    stats = h.breaker.statistics()
    assert stats.cooldown == 20.0
    assert stats.trips == 2


def test_given_repeated_reopenings_then_the_cooldown_doubles_up_to_the_cap() -> None:
    h = make(cooldown=10.0, cooldown_cap=80.0)
    h.trip()
    periods = []
    for _ in range(6):
        h.wait_for_half_open()
        h.report(FAILURE)
        opened = h.transitions[-1]
        assert opened.next_probe_at is not None
        periods.append(opened.next_probe_at - opened.at)
    assert periods == [20.0, 40.0, 80.0, 80.0, 80.0, 80.0]


def test_given_many_reopenings_then_the_cooldown_never_overflows() -> None:
    h = make(cooldown=1.0, cooldown_cap=5.0)
    h.trip()
    for _ in range(2000):
        h.wait_for_half_open()
        h.report(FAILURE)
    assert h.breaker.statistics().cooldown == 5.0


def test_given_reopened_when_a_probe_succeeds_then_the_cooldown_is_back_to_its_base() -> None:
    h = make(cooldown=10.0)
    h.trip()
    h.wait_for_half_open()
    h.report(FAILURE)  # 20 s
    h.wait_for_half_open()
    h.report(SUCCESS)
    assert h.breaker.statistics().cooldown == 10.0
    opened = h.trip()
    assert opened.next_probe_at == opened.at + 10.0


def test_given_a_slot_of_an_earlier_half_open_period_when_released_then_ignored() -> None:
    h = make(probes=1)
    h.trip()
    h.wait_for_half_open()
    old_slot = h.breaker.acquire_probe()
    assert old_slot is not None
    h.report(FAILURE)  # re-opens while that probe job still runs
    h.wait_for_half_open()
    current = h.breaker.acquire_probe()
    assert current is not None
    h.breaker.release_probe(old_slot)  # the old job ends now
    assert h.breaker.statistics().probes_in_flight == 1
    assert h.breaker.acquire_probe() is None


def test_given_a_slot_of_another_api_when_released_then_value_error() -> None:
    h = make()
    other = CircuitBreaker("mailer", BreakerSettings(), clock=h.clock, rng=random.Random(0))
    h.trip()
    h.wait_for_half_open()
    slot = h.breaker.acquire_probe()
    assert slot is not None
    with pytest.raises(ValueError, match="released to 'mailer'"):
        other.release_probe(slot)


def test_given_a_late_report_when_half_open_and_no_time_advanced_then_it_decides() -> None:
    # The report itself moves OPEN to HALF_OPEN first, then decides: both are returned.
    h = make()
    h.trip()
    h.clock.advance(10.0)
    moved = h.breaker.report(SUCCESS)
    assert [t.to_state for t in moved] == [HALF_OPEN, CLOSED]


def test_given_a_call_started_before_the_trip_when_it_fails_in_half_open_then_ignored() -> None:
    h = make()
    started = h.clock.now
    h.clock.advance(1.0)
    h.trip()
    h.wait_for_half_open()
    # A slow call from before the outage times out now: old news.
    assert h.breaker.report(FAILURE, started_at=started) == ()
    assert h.breaker.state is HALF_OPEN
    assert h.breaker.report(FAILURE, started_at=h.clock.now)[-1].to_state is OPEN


# --------------------------------------------------------------------------- Retry-After


def test_given_a_retry_after_on_the_tripping_failure_then_open_that_long() -> None:
    h = make(cooldown=10.0, consecutive_failures=3)
    h.report(FAILURE, 2)
    h.report(FAILURE, retry_after=120.0)
    opened = h.transitions[-1]
    assert opened.next_probe_at == opened.at + 120.0
    h.clock.advance(119.0)
    assert h.breaker.state is OPEN


def test_given_an_earlier_retry_after_then_the_trip_still_honours_it() -> None:
    h = make(cooldown=10.0, consecutive_failures=3)
    h.report(FAILURE, retry_after=60.0)
    h.clock.advance(5.0)
    opened = h.trip()
    assert opened.next_probe_at == 1060.0


def test_given_a_short_retry_after_then_the_cooldown_still_applies() -> None:
    h = make(cooldown=10.0, consecutive_failures=1)
    h.report(FAILURE, retry_after=2.0)
    assert h.transitions[-1].next_probe_at == 1010.0


def test_given_open_when_a_longer_retry_after_arrives_then_the_period_is_lengthened() -> None:
    h = make(cooldown=10.0)
    h.trip()
    h.clock.advance(1.0)
    (lengthened,) = h.breaker.report(FAILURE, retry_after=30.0)
    assert (lengthened.from_state, lengthened.to_state) == (OPEN, OPEN)
    assert lengthened.reason is TransitionReason.RETRY_AFTER
    assert lengthened.next_probe_at == 1031.0
    assert h.breaker.statistics().next_probe_at == 1031.0
    h.clock.now = 1030.0
    assert h.breaker.state is OPEN


def test_given_half_open_when_a_probe_fails_with_retry_after_then_it_wins_over_doubling() -> None:
    h = make(cooldown=10.0)
    h.trip()
    h.wait_for_half_open()
    h.report(FAILURE, retry_after=300.0)
    reopened = h.transitions[-1]
    assert reopened.next_probe_at == reopened.at + 300.0


def test_given_a_retry_after_with_a_success_then_it_is_ignored() -> None:
    h = make(cooldown=10.0, consecutive_failures=1)
    h.report(SUCCESS, retry_after=500.0)
    opened = h.trip()
    assert opened.next_probe_at == opened.at + 10.0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_given_an_impossible_retry_after_then_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match="retry_after"):
        make().breaker.report(FAILURE, retry_after=bad)


# --------------------------------------------------------------------------- jitter


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    jitter=st.floats(min_value=0.0, max_value=0.5),
    reopenings=st.integers(min_value=0, max_value=8),
)
def test_given_any_seed_then_every_open_period_stays_within_the_jitter_bounds(
    seed: int, jitter: float, reopenings: int
) -> None:
    h = make(seed=seed, jitter=jitter, cooldown=10.0, cooldown_cap=300.0)
    opened = h.trip()
    for _ in range(reopenings):
        h.wait_for_half_open()
        h.report(FAILURE)
        opened = h.transitions[-1]
    base = min(300.0, 10.0 * 2**reopenings)
    assert h.breaker.statistics().cooldown == base
    assert opened.next_probe_at is not None
    period = opened.next_probe_at - opened.at
    assert base * (1 - jitter) - 1e-9 <= period <= base * (1 + jitter) + 1e-9


def test_given_two_processes_with_different_seeds_then_they_probe_at_different_times() -> None:
    clock = FakeClock()
    first, second = make(seed=1, jitter=0.1, clock=clock), make(seed=2, jitter=0.1, clock=clock)
    assert first.trip().next_probe_at != second.trip().next_probe_at
