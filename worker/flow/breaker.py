"""A circuit breaker for one external API: a pure state machine with an injected clock.

::

              failure rate >= threshold (>= min_calls in the window)
              or N consecutive failures
    CLOSED ─────────────────────────────────────────────► OPEN ◄──────────┐
      ▲                                                     │             │ a probe failed:
      │ a probe succeeded:                                  │ cool-down   │ cool-down doubles
      │ cool-down back to its base                          ▼ elapsed     │ (up to the cap)
      └────────────────────────────────────────────── HALF_OPEN ──────────┘

Nothing here sleeps, logs or does I/O. Time comes from ``clock`` (seconds, monotonic: in
the daemon ``trio.current_time`` so that :attr:`BreakerStatistics.next_probe_at` can be
slept until directly); jitter from an injected :class:`random.Random`. OPEN becomes
HALF_OPEN lazily, the first time anything asks once the cool-down has elapsed; a caller
that wants to act at that moment sleeps until ``next_probe_at`` and asks.

Reports. Every call to the API ends in one :class:`CallOutcome`:

- ``SUCCESS`` and ``FAILURE`` (transport errors, timeouts, 5xx, 408, 429) are what they say;
- ``CALLER_FAULT`` (any other 4xx) counts as a call but not as a failure: the API answered,
  so it is up, and the request was wrong. Counting it as a failure would let one job's bad
  payload open the breaker for every job; leaving it out of the calls would make the
  failure rate look worse than the API is. It also ends a run of consecutive failures, and
  in HALF_OPEN it closes the breaker like a success.

Sliding window. Calls are counted in ``_BUCKETS`` buckets of ``window / _BUCKETS``
seconds, so memory stays constant however many calls arrive: a call counts for at least
``window`` seconds and at most ``window * (1 + 1 / _BUCKETS)``.

While OPEN, reports do not move the breaker (it waits for its cool-down). In HALF_OPEN the
first report decides: a success (or caller fault) closes, a failure re-opens. Reports of
calls that *started* before the breaker last opened are ignored (``started_at``): they
describe the API before the trip, which the breaker has already acted on, and a timeout
that lands during HALF_OPEN must not re-open it. Their ``Retry-After`` still counts.

Cool-down. The n-th open period in a row (n = 0 when opening from CLOSED) lasts
``min(cooldown_cap, cooldown * 2**n) * U(1 - jitter, 1 + jitter)`` so that processes that
tripped together do not probe together; with the default ``jitter`` of 0.1 that is ±10 %
around the un-jittered cool-down, which is what the cap bounds. A ``Retry-After`` reported
with a failure makes the open period last at least that long (also when it arrives while
the breaker is already open: a ``RETRY_AFTER`` transition OPEN → OPEN says so). A probe
success resets the cool-down to its base.

Probes. In HALF_OPEN at most ``probes`` calls may be in flight: a dispatcher asks
:meth:`CircuitBreaker.acquire_probe` before running a job that needs the API, and gives
the :class:`ProbeSlot` back with :meth:`CircuitBreaker.release_probe` when the job ends. A
slot belongs to one HALF_OPEN period: releasing it after the breaker moved on does nothing.

Transitions are frozen :class:`Transition` records, passed to ``on_transition`` and
returned by :meth:`CircuitBreaker.report`.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "BreakerSettings",
    "BreakerState",
    "BreakerStatistics",
    "CallOutcome",
    "CircuitBreaker",
    "ProbeSlot",
    "Transition",
    "TransitionReason",
]

# Buckets of the sliding window: constant memory; a call outlives the window by at most
# one bucket (5 %).
_BUCKETS = 20


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CallOutcome(enum.Enum):
    """How one call to an external API ended (see the module docstring for CALLER_FAULT)."""

    SUCCESS = "success"
    FAILURE = "failure"
    CALLER_FAULT = "caller_fault"


class TransitionReason(enum.Enum):
    FAILURE_RATE = "failure_rate"  # CLOSED → OPEN
    CONSECUTIVE_FAILURES = "consecutive_failures"  # CLOSED → OPEN
    COOLDOWN_ELAPSED = "cooldown_elapsed"  # OPEN → HALF_OPEN
    PROBE_SUCCEEDED = "probe_succeeded"  # HALF_OPEN → CLOSED
    PROBE_FAILED = "probe_failed"  # HALF_OPEN → OPEN
    RETRY_AFTER = "retry_after"  # OPEN → OPEN: the open period was lengthened


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Thresholds of one API's breaker. Times in seconds.

    ``consecutive_failures = 0`` disables that trigger; ``failure_rate`` is a fraction in
    (0, 1] reached with at least ``min_calls`` calls in the last ``window`` seconds.
    """

    window: float = 60.0
    failure_rate: float = 0.5
    min_calls: int = 20
    consecutive_failures: int = 5
    cooldown: float = 30.0
    cooldown_cap: float = 600.0
    jitter: float = 0.1
    probes: int = 1

    def __post_init__(self) -> None:
        problems = [
            (self.window > 0 and math.isfinite(self.window), "window must be > 0"),
            (0 < self.failure_rate <= 1, "failure_rate must be in (0, 1]"),
            (self.min_calls >= 1, "min_calls must be >= 1"),
            (self.consecutive_failures >= 0, "consecutive_failures must be >= 0"),
            (self.cooldown > 0 and math.isfinite(self.cooldown), "cooldown must be > 0"),
            (
                self.cooldown <= self.cooldown_cap and math.isfinite(self.cooldown_cap),
                "cooldown_cap must be >= cooldown",
            ),
            (0 <= self.jitter < 1, "jitter must be in [0, 1)"),
            (self.probes >= 1, "probes must be >= 1"),
        ]
        for ok, problem in problems:
            if not ok:
                raise ValueError(problem)


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state (or, for ``RETRY_AFTER``, of an open period's end).

    ``next_probe_at`` is when HALF_OPEN starts, for transitions to OPEN; else None.
    """

    api: str
    from_state: BreakerState
    to_state: BreakerState
    reason: TransitionReason
    at: float
    next_probe_at: float | None


@dataclass(frozen=True, slots=True)
class ProbeSlot:
    """Permission for one probe call during one HALF_OPEN period."""

    api: str
    period: int


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot for metrics and the control plane.

    ``calls``/``failures`` are the sliding window's (caller faults count as calls);
    ``cooldown`` is the un-jittered cool-down of the current open period, or of the next
    one when CLOSED; ``opened_at``/``next_probe_at`` belong to the last opening (None if it
    never opened). The ``*_total`` counters count every report since start.
    """

    api: str
    state: BreakerState
    calls: int
    failures: int
    consecutive_failures: int
    opened_at: float | None
    next_probe_at: float | None
    cooldown: float
    trips: int
    probes_in_flight: int
    successes_total: int
    failures_total: int
    caller_faults_total: int


@dataclass(slots=True)
class _Bucket:
    index: int
    calls: int = 0
    failures: int = 0


class _SlidingWindow:
    """Calls and failures of the last ``span`` seconds, in fixed-width buckets."""

    def __init__(self, span: float) -> None:
        self._span = span
        self._width = span / _BUCKETS
        self._buckets: deque[_Bucket] = deque()
        self.calls = 0
        self.failures = 0

    def add(self, now: float, *, failed: bool) -> None:
        self.expire(now)
        index = math.floor(now / self._width)
        # A clock that stepped back lands in the newest bucket rather than out of order.
        if not self._buckets or self._buckets[-1].index < index:
            self._buckets.append(_Bucket(index))
        bucket = self._buckets[-1]
        bucket.calls += 1
        bucket.failures += failed
        self.calls += 1
        self.failures += failed

    def expire(self, now: float) -> None:
        # A bucket goes once its newest possible call is older than the span.
        horizon = now - self._span
        while self._buckets and (self._buckets[0].index + 1) * self._width <= horizon:
            old = self._buckets.popleft()
            self.calls -= old.calls
            self.failures -= old.failures

    def clear(self) -> None:
        self._buckets.clear()
        self.calls = 0
        self.failures = 0


class CircuitBreaker:
    """The breaker of one API. See the module docstring for the rules."""

    def __init__(
        self,
        api: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.api = api
        self.settings = settings
        self._clock = clock
        self._rng = rng
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._window = _SlidingWindow(settings.window)
        self._consecutive = 0
        self._reopenings = 0  # open periods in a row without a close: the doubling exponent
        self._opened_at: float | None = None
        self._next_probe_at: float | None = None
        self._not_before: float | None = None  # the latest end a Retry-After asked for
        self._trips = 0
        self._probe_period = 0
        self._probes_in_flight = 0
        self._totals = dict.fromkeys(CallOutcome, 0)

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> BreakerState:
        """The state now (moving OPEN to HALF_OPEN if the cool-down has elapsed)."""
        self._advance(self._clock())
        return self._state

    def may_probe(self) -> bool:
        """Whether :meth:`acquire_probe` would succeed now."""
        return (
            self.state is BreakerState.HALF_OPEN and self._probes_in_flight < self.settings.probes
        )

    @property
    def failing(self) -> bool:
        """True while the last reported call failed (a streak of failures is running)."""
        return self._consecutive > 0

    def statistics(self) -> BreakerStatistics:
        now = self._clock()
        self._advance(now)
        self._window.expire(now)
        return BreakerStatistics(
            api=self.api,
            state=self._state,
            calls=self._window.calls,
            failures=self._window.failures,
            consecutive_failures=self._consecutive,
            opened_at=self._opened_at,
            next_probe_at=self._next_probe_at,
            cooldown=self._base_cooldown(),
            trips=self._trips,
            probes_in_flight=self._probes_in_flight,
            successes_total=self._totals[CallOutcome.SUCCESS],
            failures_total=self._totals[CallOutcome.FAILURE],
            caller_faults_total=self._totals[CallOutcome.CALLER_FAULT],
        )

    # ------------------------------------------------------------------ probes

    def acquire_probe(self) -> ProbeSlot | None:
        """A probe slot if HALF_OPEN with one free, else None. Give it back once done."""
        if not self.may_probe():
            return None
        self._probes_in_flight += 1
        return ProbeSlot(self.api, self._probe_period)

    def release_probe(self, slot: ProbeSlot) -> None:
        """Give a slot back. A slot of an earlier HALF_OPEN period is ignored."""
        if slot.api != self.api:
            raise ValueError(f"probe slot of {slot.api!r} released to {self.api!r}")
        if (
            self._state is BreakerState.HALF_OPEN
            and slot.period == self._probe_period
            and self._probes_in_flight > 0
        ):
            self._probes_in_flight -= 1

    # ------------------------------------------------------------------ reporting

    def report(
        self,
        outcome: CallOutcome,
        *,
        retry_after: float | None = None,
        started_at: float | None = None,
    ) -> tuple[Transition, ...]:
        """Record how one call ended; return the transitions it caused (oldest first).

        ``retry_after`` (seconds from now) is honoured with a ``FAILURE`` only.
        ``started_at`` (the clock's time when the call began) lets the breaker ignore
        calls that began before it last opened.
        """
        if retry_after is not None and not (retry_after >= 0 and math.isfinite(retry_after)):
            raise ValueError(f"retry_after must be a finite number >= 0, got {retry_after}")
        now = self._clock()
        transitions = list(self._advance(now))
        self._totals[outcome] += 1
        failed = outcome is CallOutcome.FAILURE
        if failed and retry_after is not None:
            transitions += self._ask_not_before(now + retry_after, now)
        stale = (
            started_at is not None and self._opened_at is not None and started_at < self._opened_at
        )
        if stale or self._state is BreakerState.OPEN:
            return tuple(transitions)
        if self._state is BreakerState.HALF_OPEN:
            transitions.append(self._end_probing(now, failed=failed))
        else:
            transitions += self._count(now, failed=failed)
        return tuple(transitions)

    # ------------------------------------------------------------------ the machine

    def _count(self, now: float, *, failed: bool) -> tuple[Transition, ...]:
        self._window.add(now, failed=failed)
        self._consecutive = self._consecutive + 1 if failed else 0
        if not failed:
            return ()
        settings = self.settings
        if settings.consecutive_failures and self._consecutive >= settings.consecutive_failures:
            return (self._open(now, TransitionReason.CONSECUTIVE_FAILURES),)
        calls, failures = self._window.calls, self._window.failures
        if calls >= settings.min_calls and failures >= settings.failure_rate * calls:
            return (self._open(now, TransitionReason.FAILURE_RATE),)
        return ()

    def _end_probing(self, now: float, *, failed: bool) -> Transition:
        if failed:
            self._reopenings += 1
            return self._open(now, TransitionReason.PROBE_FAILED)
        self._reopenings = 0
        self._consecutive = 0
        # A fresh start: the failures that tripped it must not trip it again at once.
        self._window.clear()
        return self._move(BreakerState.CLOSED, TransitionReason.PROBE_SUCCEEDED, now, None)

    def _open(self, now: float, reason: TransitionReason) -> Transition:
        jittered = self._base_cooldown() * self._rng.uniform(
            1 - self.settings.jitter, 1 + self.settings.jitter
        )
        next_probe_at = now + jittered
        if self._not_before is not None:
            next_probe_at = max(next_probe_at, self._not_before)
        self._trips += 1
        self._opened_at = now
        self._next_probe_at = next_probe_at
        return self._move(BreakerState.OPEN, reason, now, next_probe_at)

    def _ask_not_before(self, not_before: float, now: float) -> tuple[Transition, ...]:
        if self._not_before is None or not_before > self._not_before:
            self._not_before = not_before
        lengthens = (
            self._state is BreakerState.OPEN
            and self._next_probe_at is not None
            and not_before > self._next_probe_at
        )
        if not lengthens:
            return ()
        self._next_probe_at = not_before
        return (self._move(BreakerState.OPEN, TransitionReason.RETRY_AFTER, now, not_before),)

    def _advance(self, now: float) -> tuple[Transition, ...]:
        if (
            self._state is BreakerState.OPEN
            and self._next_probe_at is not None
            and now >= self._next_probe_at
        ):
            self._probe_period += 1
            return (self._move(BreakerState.HALF_OPEN, TransitionReason.COOLDOWN_ELAPSED, now),)
        return ()

    def _move(
        self,
        to_state: BreakerState,
        reason: TransitionReason,
        now: float,
        next_probe_at: float | None = None,
    ) -> Transition:
        transition = Transition(self.api, self._state, to_state, reason, now, next_probe_at)
        self._state = to_state
        self._probes_in_flight = 0
        if self._on_transition is not None:
            self._on_transition(transition)
        return transition

    def _base_cooldown(self) -> float:
        settings = self.settings
        # Clamp the exponent: 2**n overflows a float long before any realistic run of trips.
        return min(settings.cooldown_cap, settings.cooldown * 2.0 ** min(self._reopenings, 63))
