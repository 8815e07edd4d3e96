"""Retry policy, pure: attempt counting from beanstalkd's counters, and backoff.

Counting (docs/beanstalkd.md#counting-attempts-from-the-counters; bug codes as there):

- attempt = releases + timeouts + buries + 1: every run that ended in a failure release, a
  TTR expiry or a burial. Our failure releases always have a delay >= 1 s, so they are
  written to the binlog and survive a server restart (B6). A restart adds 1 to ``buries``
  of buried jobs (B5): a job kicked after a restart loses one attempt of its fresh budget.
- redeliveries = reserves - attempt: deliveries that ended
  with no outcome from anyone (worker crash, lost connection, drain return). Clamped at 0:
  after a restart ``reserves`` may be behind (not persisted) and ``buries`` ahead (B5).
  Deliveries the process itself saw end by a lost connection are excused (a network blip
  is not the job's fault); one that crashed the process cannot be, so poison still ends.
- each kick grants a fresh budget: limits are multiplied by kicks + 1.
"""

from __future__ import annotations

import math
import random

from tubeworker.backoff import full_jitter_delay
from tubeworker.beanstalk.protocol import MAX_INT, JobStats
from tubeworker.config import RetrySettings
from tubeworker.frozen import frozen
from tubeworker.runtime.outcome import BuryJob, Cause, ReleaseJob

__all__ = ["Budget", "RetrySettings", "attempt_number", "failure_outcome", "job_budget"]


@frozen
class Budget:
    attempt: int  # this run's number, 1-based
    max_attempts: int  # after kicks
    redeliveries: int
    max_redeliveries: int

    @property
    def attempts_exhausted(self) -> bool:
        """True when a run would exceed the budget (TTR timeouts can pile up unseen)."""
        return self.attempt > self.max_attempts

    @property
    def poison(self) -> bool:
        """True when the job keeps coming back with no outcome: do not run it again."""
        return self.redeliveries >= self.max_redeliveries

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


def attempt_number(stats: JobStats) -> int:
    """This run's number: 1 + the runs that ended in a release, a TTR expiry or a bury."""
    return stats.releases + stats.timeouts + stats.buries + 1


def job_budget(
    stats: JobStats, policy: RetrySettings, *, excused: int = 0, kicked_at_put: int = 0
) -> Budget:
    """``excused``: deliveries this process knows ended by its own connection loss (a
    network fault, not the job's): they do not count toward the redelivery limit.
    ``kicked_at_put``: kicks its producer made (a batch's job), which grant nothing."""
    attempt = attempt_number(stats)
    grants = max(0, stats.kicks - kicked_at_put) + 1
    return Budget(
        attempt=attempt,
        max_attempts=policy.max_attempts * grants,
        redeliveries=max(0, stats.reserves - attempt - excused),
        max_redeliveries=policy.redelivery_limit * grants,
    )


def whole_seconds(delay: float) -> int:
    """beanstalkd delays are whole seconds; >= 1 so the release is written to the binlog."""
    if math.isnan(delay):
        return 1
    if delay >= MAX_INT:  # also inf, which math.ceil cannot take
        return MAX_INT
    return max(1, math.ceil(delay))


def failure_outcome(
    budget: Budget,
    policy: RetrySettings,
    *,
    priority: int,
    cause: Cause,
    detail: str,
    delay: float | None = None,
    rng: random.Random | None = None,
) -> ReleaseJob | BuryJob:
    """After a failed run: release with backoff (or ``delay``), or bury when out of attempts
    (keeping the cause of the last failure: it is what an operator fixes)."""
    if budget.last_attempt:
        giving_up = f"{detail} (attempt {budget.attempt} of {budget.max_attempts}: giving up)"
        return BuryJob(priority, cause, giving_up)
    if delay is None:
        delay = full_jitter_delay(
            budget.attempt, base=policy.backoff_base, cap=policy.backoff_cap, rng=rng
        )
    return ReleaseJob(whole_seconds(delay), priority, cause, detail)
