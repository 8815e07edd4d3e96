"""The process's run state, shared by the daemon and its lanes: fetching, quiet, drain.

Lanes wait for reserve replies inside *fetch scopes* and run handlers inside *job scopes*.
The daemon cancels the former to stop reserving at once (the blocked reserve's connection
is closed) and the latter when the drain deadline passes (the job goes back to beanstalkd).
The scopes are small classes, not generator context managers: they are on the per-job path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import trio

from tubeworker.beanstalk.client import Address
from tubeworker.flow import ApiTracker
from tubeworker.flow.limits import Limits
from tubeworker.flow.tokens import FleetTokens, TokenGroup
from tubeworker.observe.counters import JobCounters
from tubeworker.observe.events import EventBus
from tubeworker.runtime.binlog import BinlogHealth
from tubeworker.runtime.clock import ClockStatistics
from tubeworker.runtime.outcome import Cause

__all__ = ["BusyLane", "LaneStatistics", "LaneView", "WorkerState"]


class BusyLane(Protocol):
    """What the state knows of a lane whose handlers are running."""

    def return_job(self, cause: Cause, detail: str, *, lost: bool = False) -> None:
        """Cancel its handlers; their jobs go back to beanstalkd with no outcome.

        ``lost``: the connection is gone, so no outcome can be sent even if one is ready.
        """

    def running_tubes(self) -> Iterator[str]:
        """The tube of each job it holds now (for reports)."""


class _FetchScope:
    __slots__ = ("_registry", "scope")

    def __init__(self, registry: set[trio.CancelScope], cancelled: bool) -> None:
        self._registry = registry
        self.scope = trio.CancelScope()
        if cancelled:
            self.scope.cancel()

    def __enter__(self) -> trio.CancelScope:
        self._registry.add(self.scope)
        return self.scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._registry.discard(self.scope)
        return self.scope.__exit__(exc_type, exc, tb)


@dataclass(frozen=True, slots=True)
class LaneStatistics:
    """One lane, as ``/status`` and ``tubeworker top`` show it."""

    pool: str
    index: int
    address: Address
    slots: int
    jobs: int  # held now
    connected: bool
    batch_cap: int  # lower than slots while its link keeps failing
    tubes: tuple[str, ...]


class LaneView(Protocol):
    def statistics(self) -> LaneStatistics: ...


class WorkerState:
    def __init__(self, *, max_jobs: int = 0) -> None:
        self.draining = False
        self.quiet = False
        self.drain_reason: str | None = None
        self.counters = JobCounters()
        self.events = EventBus()  # what live viewers see (free while nobody listens)
        self.max_jobs = max_jobs
        self._jobs_finished = 0
        self._fetch_scopes: set[trio.CancelScope] = set()
        #: Lanes with handlers running now: the drain deadline returns their jobs.
        self.busy_lanes: set[BusyLane] = set()
        self._changed = trio.Event()  # replaced on every change; lanes wait on it
        self.drain_started = trio.Event()
        #: What the schedules' clock did here (fires, misfires, lateness).
        self.clock = ClockStatistics()
        #: Every lane, for reports (set by the daemon once its pools run).
        self.lanes: list[LaneView] = []
        #: Flow control's breakers, for reports (set by the daemon).
        self.tracker: ApiTracker | None = None
        #: Limits, for reports (set by the daemon).
        self.limits: Limits | None = None
        #: Each server's binlog room, for reports (set by the daemon).
        self.binlogs: Mapping[str, BinlogHealth] = {}
        #: Fleet limits' tokens over the servers, for reports (set by the daemon).
        self.token_groups: Mapping[str, tuple[TokenGroup, ...]] = {}

    def fleet_tokens(self) -> list[FleetTokens]:
        return [g.statistics() for groups in self.token_groups.values() for g in groups]

    @property
    def may_fetch(self) -> bool:
        return not (self.draining or self.quiet)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_may_fetch(self) -> bool:
        """Until fetching is allowed (True) or the worker drains (False)."""
        while True:
            if self.draining:
                return False
            if not self.quiet:
                return True
            await self._changed.wait()

    def fetch_scope(self) -> _FetchScope:
        """A cancel scope that is cancelled as soon as fetching must stop (drain or quiet)."""
        return _FetchScope(self._fetch_scopes, not self.may_fetch)

    def _stop_fetching(self) -> None:
        for scope in list(self._fetch_scopes):
            scope.cancel()

    def begin_drain(self, reason: str) -> None:
        """Stop reserving at once; running jobs go on until ``return_running_jobs``."""
        if self.draining:
            return
        self.draining = True
        self.drain_reason = reason
        self.events.publish("drain", reason=reason, jobs_running=self.running_jobs)
        self._stop_fetching()
        self.drain_started.set()
        self._notify()

    def return_running_jobs(self) -> None:
        """Cancel every running handler; lanes close their connections (jobs go back)."""
        for lane in list(self.busy_lanes):
            lane.return_job(
                Cause.DRAIN_DEADLINE, "drain deadline passed: handler cancelled, job returned"
            )

    def set_quiet(self, quiet: bool) -> None:
        if quiet == self.quiet:
            return
        self.quiet = quiet
        self.events.publish("quiet" if quiet else "resume")
        if quiet:
            self._stop_fetching()
        self._notify()

    @property
    def running_jobs(self) -> int:
        """Handlers running now (jobs, not connections)."""
        return self.counters.in_flight

    def in_flight_by_tube(self) -> dict[str, int]:
        """Jobs held now, per tube (read for reports, never on the per-job path)."""
        return dict(
            Counter(tube for lane in list(self.busy_lanes) for tube in lane.running_tubes())
        )

    def job_finished(self) -> None:
        """A job's outcome is decided: count it toward ``max_jobs`` (before it is sent, so
        the drain starts before the next reserve goes out with it)."""
        self._jobs_finished += 1
        if self.max_jobs and self._jobs_finished >= self.max_jobs:
            self.begin_drain(f"recycling: max_jobs {self.max_jobs} reached")
