"""Retry policy: attempts and redeliveries from beanstalkd's counters, backoff outcomes."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tubeworker.beanstalk.protocol import MAX_INT, JobStats
from tubeworker.runtime.outcome import BuryJob, Cause, ReleaseJob
from tubeworker.runtime.policy import (
    Budget,
    RetrySettings,
    attempt_number,
    failure_outcome,
    job_budget,
)

counters = st.integers(min_value=0, max_value=10_000)


def stats(
    *, reserves: int = 1, timeouts: int = 0, releases: int = 0, buries: int = 0, kicks: int = 0
) -> JobStats:
    return JobStats(
        id=7,
        tube="emails",
        state="reserved",
        pri=1024,
        age=3,
        delay=0,
        ttr=60,
        time_left=59,
        file=0,
        reserves=reserves,
        timeouts=timeouts,
        releases=releases,
        buries=buries,
        kicks=kicks,
    )


class CeilingRng(random.Random):
    """Full jitter always drawing the top of its range: shows the envelope itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


def envelope(attempt: int, policy: RetrySettings) -> int:
    """The largest delay failure_outcome may choose: base * 2**(attempt-1), capped, rounded up."""
    raw = min(policy.backoff_cap, policy.backoff_base * 2.0 ** min(attempt - 1, 63))
    return max(1, min(MAX_INT, math.ceil(raw)))


# --------------------------------------------------------------------------- job_budget


def test_given_first_delivery_when_budgeted_then_attempt_one_no_redeliveries() -> None:
    budget = job_budget(stats(reserves=1), RetrySettings(max_attempts=5, redelivery_limit=3))
    assert budget == Budget(attempt=1, max_attempts=5, redeliveries=0, max_redeliveries=3)
    assert not budget.poison
    assert not budget.last_attempt
    assert not budget.attempts_exhausted


def test_given_releases_and_timeouts_when_budgeted_then_both_count_as_attempts() -> None:
    budget = job_budget(stats(reserves=4, releases=2, timeouts=1), RetrySettings())
    assert budget.attempt == 4
    assert budget.redeliveries == 0


def test_given_buries_when_budgeted_then_a_bury_ended_a_run_like_a_failure() -> None:
    # A run that ended in a bury (then kicked) was an attempt: attempt = releases + timeouts
    # + buries + 1 (worker.policy.attempt_number; the kick grants the fresh budget).
    job = stats(reserves=3, releases=1, buries=1, kicks=1)
    assert attempt_number(job) == 3
    assert job_budget(job, RetrySettings()).attempt == 3


def test_given_deliveries_without_outcome_when_budgeted_then_counted_as_redeliveries() -> None:
    # Five reserves: one ended in our release, one in a bury (then kicked), so the other
    # two before this one ended with no outcome at all (crash, lost connection, drain).
    budget = job_budget(stats(reserves=5, releases=1, buries=1, kicks=1), RetrySettings())
    assert budget.redeliveries == 5 - 1 - 1 - 0 - 1


def test_given_counters_behind_after_restart_when_budgeted_then_redeliveries_clamped() -> None:
    # reserves is not persisted by the binlog; buries are: the difference can go negative.
    budget = job_budget(stats(reserves=1, releases=3, buries=2), RetrySettings())
    assert budget.redeliveries == 0
    assert budget.attempt == 6


def test_given_kicks_when_budgeted_then_both_budgets_multiplied() -> None:
    policy = RetrySettings(max_attempts=4, redelivery_limit=2)
    budget = job_budget(stats(reserves=10, releases=4, buries=1, kicks=2), policy)
    assert budget.max_attempts == 12
    assert budget.max_redeliveries == 6


def test_given_redeliveries_at_limit_when_budgeted_then_poison() -> None:
    policy = RetrySettings(redelivery_limit=3)
    assert not job_budget(stats(reserves=3), policy).poison  # 2 redeliveries
    assert job_budget(stats(reserves=4), policy).poison  # 3 redeliveries
    assert job_budget(stats(reserves=9), policy).poison


def test_given_kick_after_poison_when_budgeted_then_fresh_redelivery_budget() -> None:
    policy = RetrySettings(redelivery_limit=3)
    # Reserves 1-3 ended with no outcome; reserve 4 was poison and we buried it; kicked, this
    # is reserve 5.
    budget = job_budget(stats(reserves=5, buries=1, kicks=1), policy)
    assert budget.redeliveries == 3
    assert budget.max_redeliveries == 6
    assert not budget.poison


@given(
    reserves=counters,
    timeouts=counters,
    releases=counters,
    buries=counters,
    kicks=st.integers(min_value=0, max_value=100),
    max_attempts=st.integers(min_value=1, max_value=1000),
    redelivery_limit=st.integers(min_value=1, max_value=1000),
)
def test_given_any_counters_when_budgeted_then_formulas_hold(
    reserves: int,
    timeouts: int,
    releases: int,
    buries: int,
    kicks: int,
    max_attempts: int,
    redelivery_limit: int,
) -> None:
    policy = RetrySettings(max_attempts=max_attempts, redelivery_limit=redelivery_limit)
    budget = job_budget(
        stats(reserves=reserves, timeouts=timeouts, releases=releases, buries=buries, kicks=kicks),
        policy,
    )
    assert budget.attempt == releases + timeouts + buries + 1
    assert budget.redeliveries == max(0, reserves - 1 - releases - timeouts - buries)
    assert budget.max_attempts == max_attempts * (kicks + 1)
    assert budget.max_redeliveries == redelivery_limit * (kicks + 1)
    assert budget.poison == (budget.redeliveries >= budget.max_redeliveries)
    assert budget.last_attempt == (budget.attempt >= budget.max_attempts)


# --------------------------------------------------------------------------- failure_outcome


def budget_at(attempt: int, max_attempts: int = 10) -> Budget:
    return Budget(attempt=attempt, max_attempts=max_attempts, redeliveries=0, max_redeliveries=3)


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "delay"),
    [
        (1, 2.0, 3600.0, 2),
        (2, 2.0, 3600.0, 4),
        (5, 2.0, 3600.0, 32),
        (9, 2.0, 100.0, 100),
        (3, 0.3, 3600.0, 2),  # 1.2 rounded up
        (1, 0.3, 3600.0, 1),  # never below 1 s (the binlog keeps only delayed releases)
        (1, 0.0, 3600.0, 1),
        (90, 2.0, float(MAX_INT), MAX_INT),
    ],
)
def test_given_attempt_when_failed_then_released_within_exponential_envelope(
    attempt: int, base: float, cap: float, delay: int
) -> None:
    policy = RetrySettings(max_attempts=100, backoff_base=base, backoff_cap=cap)
    outcome = failure_outcome(
        budget_at(attempt, 100),
        policy,
        priority=5,
        cause=Cause.HANDLER_ERROR,
        detail="boom",
        rng=CeilingRng(),
    )
    assert outcome == ReleaseJob(delay=delay, priority=5, cause=Cause.HANDLER_ERROR, detail="boom")


def test_given_many_failures_when_released_then_delays_are_jittered() -> None:
    policy = RetrySettings(backoff_base=2.0, backoff_cap=3600.0)
    delays = {
        failure_outcome(
            budget_at(6),
            policy,
            priority=1,
            cause=Cause.HANDLER_ERROR,
            detail="r",
            rng=random.Random(seed),
        )
        for seed in range(50)
    }
    assert len(delays) > 5


@given(
    attempt=st.integers(min_value=1, max_value=500),
    base=st.floats(min_value=0, max_value=86_400),
    cap_extra=st.floats(min_value=0, max_value=float(MAX_INT)),
    priority=st.integers(min_value=0, max_value=MAX_INT),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_given_any_backoff_when_released_then_whole_seconds_inside_envelope(
    attempt: int, base: float, cap_extra: float, priority: int, seed: int
) -> None:
    policy = RetrySettings(
        max_attempts=attempt + 1, backoff_base=base, backoff_cap=max(1.0, base + cap_extra)
    )
    outcome = failure_outcome(
        budget_at(attempt, attempt + 1),
        policy,
        priority=priority,
        cause=Cause.HANDLER_ERROR,
        detail="r",
        rng=random.Random(seed),
    )
    assert isinstance(outcome, ReleaseJob)
    assert isinstance(outcome.delay, int)
    assert 1 <= outcome.delay <= MAX_INT
    assert outcome.delay <= envelope(attempt, policy)
    assert outcome.priority == priority


@given(delay=st.floats(min_value=0, max_value=1e30), attempt=st.integers(1, 9))
def test_given_explicit_delay_when_released_then_rounded_up_at_least_one(
    delay: float, attempt: int
) -> None:
    outcome = failure_outcome(
        budget_at(attempt),
        RetrySettings(),
        priority=3,
        cause=Cause.HANDLER_ERROR,
        detail="r",
        delay=delay,
    )
    assert outcome == ReleaseJob(
        max(1, min(MAX_INT, math.ceil(delay))), 3, Cause.HANDLER_ERROR, "r"
    )


@pytest.mark.parametrize(("delay", "expected"), [(0, 1), (0.2, 1), (1, 1), (1.01, 2), (5, 5)])
def test_given_explicit_delay_when_released_then_backoff_ignored(
    delay: float, expected: int
) -> None:
    policy = RetrySettings(backoff_base=1000.0, backoff_cap=5000.0)
    outcome = failure_outcome(
        budget_at(3), policy, priority=3, cause=Cause.HANDLER_ERROR, detail="r", delay=delay
    )
    assert outcome == ReleaseJob(expected, 3, Cause.HANDLER_ERROR, "r")


def test_given_infinite_explicit_delay_when_released_then_clamped_to_max() -> None:
    outcome = failure_outcome(
        budget_at(1),
        RetrySettings(),
        priority=3,
        cause=Cause.HANDLER_ERROR,
        detail="r",
        delay=math.inf,
    )
    assert outcome == ReleaseJob(MAX_INT, 3, Cause.HANDLER_ERROR, "r")


@given(
    max_attempts=st.integers(min_value=1, max_value=1000),
    beyond=st.integers(min_value=0, max_value=5),
    priority=st.integers(min_value=0, max_value=MAX_INT),
    delay=st.none() | st.floats(min_value=0, max_value=1e6),
)
def test_given_last_attempt_when_failed_then_buried_with_attempt_count(
    max_attempts: int, beyond: int, priority: int, delay: float | None
) -> None:
    attempt = max_attempts + beyond
    outcome = failure_outcome(
        budget_at(attempt, max_attempts),
        RetrySettings(max_attempts=max_attempts),
        priority=priority,
        cause=Cause.HANDLER_ERROR,
        detail="ValueError: nope",
        delay=delay,
    )
    assert isinstance(outcome, BuryJob)
    assert outcome.priority == priority
    assert outcome.reason.startswith("ValueError: nope")
    assert f"attempt {attempt} of {max_attempts}" in outcome.reason


def test_given_one_before_last_when_failed_then_still_released() -> None:
    outcome = failure_outcome(
        budget_at(4, 5), RetrySettings(), priority=9, cause=Cause.HANDLER_ERROR, detail="r"
    )
    assert isinstance(outcome, ReleaseJob)
    assert outcome.priority == 9


def test_given_kicked_job_when_failed_past_old_limit_then_released_not_buried() -> None:
    # Two releases and our bury used the first budget of 3; the kick grants 3 more.
    policy = RetrySettings(max_attempts=3)
    budget = job_budget(stats(reserves=4, releases=2, buries=1, kicks=1), policy)
    assert (budget.attempt, budget.max_attempts) == (4, 6)
    outcome = failure_outcome(
        budget, policy, priority=1, cause=Cause.HANDLER_ERROR, detail="r", rng=random.Random(0)
    )
    assert isinstance(outcome, ReleaseJob)


def test_given_excused_deliveries_then_they_do_not_count_toward_poison() -> None:
    from tubeworker.beanstalk.protocol import JobStats
    from tubeworker.runtime.excuses import Excuses
    from tubeworker.runtime.policy import job_budget

    # Delivered 4 times, never an outcome: poison with a limit of 3 ...
    stats = JobStats(1, "t", "reserved", 0, 0, 0, 60, 59, 0, 4, 0, 0, 0, 0)
    assert job_budget(stats, RetrySettings(redelivery_limit=3)).poison
    # ... unless this process saw two of those end with its own lost connection.
    assert not job_budget(stats, RetrySettings(redelivery_limit=3), excused=2).poison
    excuses = Excuses(limit=2)
    excuses.add("s", 1)
    excuses.add("s", 1)
    excuses.add("s", 2)
    excuses.add("s", 3)  # over the limit: the oldest (job 1) is forgotten
    assert (excuses.of("s", 1), excuses.of("s", 2), excuses.of("s", 3)) == (0, 1, 1)
    excuses.forget("s", 2)
    assert excuses.of("s", 2) == 0
    assert excuses.of("other-server", 3) == 0
