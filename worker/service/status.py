"""What the daemon tells systemd besides READY=1 and WATCHDOG=1, and when.

While running: every few seconds a one-line STATUS= summary (``12 in flight, 340 done/min,
breakers open: stripe``), sent when it changed; ``systemctl status`` shows the last one.
While draining: STOPPING=1 at once, then every second the drain's progress with an
EXTEND_TIMEOUT_USEC= that reaches a margin past the drain deadline, so that a unit whose
TimeoutStopSec= is shorter than ``drain_timeout`` does not SIGKILL a draining worker
(systemd >= 236 honours it if it arrives before TimeoutStopSec= has passed; it must be
renewed before it runs out, which the one-second cadence does).

Nothing here runs per job: the summary reads counters the hot path keeps anyway.
"""

from __future__ import annotations

import math
from collections import deque

import trio

from tubeworker.flow import ApiTracker, BreakerState
from tubeworker.observe.counters import JobCounters
from tubeworker.runtime.state import WorkerState
from tubeworker.service.notify import Notifier

__all__ = [
    "DRAIN_INTERVAL",
    "DRAIN_MARGIN",
    "STATUS_INTERVAL",
    "DoneRate",
    "drain_line",
    "finished_jobs",
    "open_breakers",
    "run_drain_updates",
    "run_status_updates",
    "status_line",
]

STATUS_INTERVAL = 5.0  # seconds between summaries while running
DRAIN_INTERVAL = 1.0  # seconds between drain updates (each renews EXTEND_TIMEOUT_USEC)
#: Seconds past the drain deadline that each extension reaches: time to return the jobs
#: still running (close their connections) and exit.
DRAIN_MARGIN = 10.0
_MINUTE = 60.0


def finished_jobs(counters: JobCounters) -> int:
    """Jobs whose handler finished with an outcome: deleted, released for a retry, buried.
    Jobs returned without an outcome (drain deadline, lost connection) are not counted."""
    return counters.deleted + counters.released + counters.buried


class DoneRate:
    """Jobs done per minute over a sliding minute, from samples of a running total.

    The baseline is the newest sample at least ``window`` seconds old, so once warm the rate
    spans a minute or a little more; before that it spans the time since the first sample
    and is scaled up to a minute (0 until two samples are apart).
    """

    __slots__ = ("_samples", "_window")

    def __init__(self, window: float = _MINUTE) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, total: int) -> float:
        """Record ``total`` at ``now`` (never earlier than the last sample); the rate."""
        self._samples.append((now, total))
        while len(self._samples) > 1 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        then, before = self._samples[0]
        if now <= then:
            return 0.0
        return (total - before) * _MINUTE / (now - then)


def open_breakers(tracker: ApiTracker | None) -> tuple[str, ...]:
    """APIs whose breaker is not closed, by name: ``stripe`` (open, cooling down) or
    ``stripe (probing)`` (half-open)."""
    if tracker is None:
        return ()
    names: list[str] = []
    for stats in tracker.statistics().apis:
        if stats.state is BreakerState.OPEN:
            names.append(stats.api)
        elif stats.state is BreakerState.HALF_OPEN:
            names.append(f"{stats.api} (probing)")
    return tuple(names)


def status_line(
    *, in_flight: int, per_minute: float, breakers: tuple[str, ...] = (), quiet: bool = False
) -> str:
    """``12 in flight, 340 done/min, breakers open: stripe``."""
    line = f"{in_flight} in flight, {per_minute:.0f} done/min"
    if breakers:
        line += ", breakers open: " + ", ".join(breakers)
    return "quiet (not fetching): " + line if quiet else line


def drain_line(reason: str | None, running: int, seconds_left: float) -> str:
    """``draining (SIGTERM): 5 jobs running, 23s left``."""
    jobs = "1 job" if running == 1 else f"{running} jobs"
    left = math.ceil(max(0.0, seconds_left))
    return f"draining ({reason or 'stop'}): {jobs} running, {left}s left"


def _summary(state: WorkerState, rate: DoneRate) -> str:
    return status_line(
        in_flight=state.running_jobs,
        per_minute=rate.sample(trio.current_time(), finished_jobs(state.counters)),
        breakers=open_breakers(state.tracker),
        quiet=state.quiet,
    )


async def run_status_updates(
    state: WorkerState, notifier: Notifier, *, interval: float = STATUS_INTERVAL
) -> None:
    """Every ``interval`` seconds until the drain starts, the summary as STATUS=, if it
    changed since the last one sent. The drain's own updates take over from there."""
    rate = DoneRate()
    rate.sample(trio.current_time(), finished_jobs(state.counters))
    sent: str | None = None
    while True:
        await trio.sleep(interval)
        if state.draining:
            return
        line = _summary(state, rate)
        if line != sent:
            notifier.status(line)
            sent = line


async def run_drain_updates(
    state: WorkerState,
    notifier: Notifier,
    deadline: float,
    *,
    interval: float = DRAIN_INTERVAL,
    margin: float = DRAIN_MARGIN,
) -> None:
    """STOPPING=1 at once, then every ``interval`` seconds the drain's STATUS=, each with
    an EXTEND_TIMEOUT_USEC= reaching ``margin`` seconds past ``deadline`` (on Trio's
    clock). Returns at the deadline."""
    left = deadline - trio.current_time()
    notifier.stopping(
        drain_line(state.drain_reason, state.running_jobs, left), extend=left + margin
    )
    while True:
        await trio.sleep_until(min(trio.current_time() + interval, deadline))
        left = deadline - trio.current_time()
        if left <= 0:
            return
        notifier.status(
            drain_line(state.drain_reason, state.running_jobs, left), extend=left + margin
        )
