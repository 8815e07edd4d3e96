"""The jobs one lane's connection holds while their handlers run.

Each job is a :class:`Run`: its cancel scope (our own deadline, before beanstalkd's TTR),
its touch schedule, the in-flight slot it holds, and, once it is handed back without an
outcome, why. :class:`Runs` starts handlers, says which touches are due, applies touch
replies, and hands every finished job to the lane exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.job import HandlerSpec, Middleware
from tubeworker.observe.counters import JobCounters
from tubeworker.runtime.dispatch import Plan
from tubeworker.runtime.outcome import Cause, Outcome, ReturnJob
from tubeworker.runtime.runner import ProcessPool, report_timeout, run_job, timeout_outcome
from tubeworker.runtime.slots import Slot

__all__ = ["Run", "Runs", "handler_timeout", "touch_interval", "ttr_allowance"]


def handler_timeout(
    spec: HandlerSpec, pool_timeout: float | None, ttr: int, margin: float
) -> float | None:
    """Our own deadline: never past TTR - margin, unless the handler is touched (long-running)."""
    wanted = spec.timeout or pool_timeout
    if spec.long_running:
        return wanted  # None: no limit; the job is touched while it runs
    limit = ttr_allowance(ttr, margin)
    return limit if wanted is None else min(wanted, limit)


def ttr_allowance(ttr: int, margin: float) -> float:
    """How long after a reserve or touch a job may run: TTR - margin (with a tiny TTR the
    margin would eat it all, so at least half of it)."""
    return max(ttr - margin, ttr / 2)


def touch_interval(ttr: int, margin: float) -> float:
    """Touch well inside the TTR: every half TTR, and at least ``margin`` before it expires."""
    return max(0.25, min(ttr / 2, ttr - margin))


class Run:
    """A reserved job whose handler runs on its lane's connection."""

    __slots__ = (
        "limit",
        "lost",
        "next_touch",
        "plan",
        "returned",
        "scope",
        "slot",
        "started",
        "stats",
        "timeout",
    )

    def __init__(
        self, plan: Plan, stats: p.JobStats, slot: Slot, started: float, timeout: float | None
    ) -> None:
        self.plan = plan
        self.stats = stats
        self.slot = slot  # the process-wide in-flight slot it holds
        self.started = started  # time.monotonic() at reserve, for the log line
        self.timeout = timeout
        now = trio.current_time()
        self.scope = trio.CancelScope(deadline=now + timeout if timeout is not None else math.inf)
        self.returned: ReturnJob | None = None  # handed back to beanstalkd with no outcome
        self.lost = False  # the connection is gone: no outcome can be sent for it
        self.next_touch = math.inf
        self.limit = math.inf  # the handler's own timeout (absolute); touches never pass it

    def give_back(self, cause: Cause, detail: str, *, lost: bool = False) -> None:
        """Cancel the handler; the job goes back to beanstalkd when the connection closes."""
        if self.returned is None:
            self.returned = ReturnJob(cause, detail)
        self.lost = self.lost or lost
        self.scope.cancel()


class Runs:
    """The runs of one connection, keyed by job id."""

    def __init__(
        self,
        *,
        on_finished: Callable[[Run, Outcome], None],
        counters: JobCounters,
        ttr_margin: float,
        pool_timeout: float | None,
        profile: Literal["io", "compute"],
        limiter: trio.CapacityLimiter,
        processes: ProcessPool | None,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self._runs: dict[int, Run] = {}
        self._middleware = tuple(middleware)
        self._on_finished = on_finished
        self._counters = counters
        self._margin = ttr_margin
        self._pool_timeout = pool_timeout
        self._profile: Literal["io", "compute"] = profile
        self._limiter = limiter
        self._processes = processes

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(list(self._runs.values()))

    def get(self, job_id: int) -> Run | None:
        return self._runs.get(job_id)

    def begin(
        self, nursery: trio.Nursery, plan: Plan, stats: p.JobStats, slot: Slot, started: float
    ) -> Run:
        """Start the plan's handler under its own deadline."""
        spec = plan.spec
        timeout = handler_timeout(spec, self._pool_timeout, stats.ttr, self._margin)
        run = Run(plan, stats, slot, started, timeout)
        wanted = spec.timeout or self._pool_timeout
        now = trio.current_time()
        if wanted:
            run.limit = now + wanted
        if spec.long_running:
            run.next_touch = now + touch_interval(stats.ttr, self._margin)
        self._runs[plan.job.id] = run
        nursery.start_soon(self._run_handler, run)
        return run

    async def _run_handler(self, run: Run) -> None:
        plan = run.plan
        counters = self._counters
        counters.in_flight += 1
        outcome: Outcome | None = None
        try:
            with run.scope:
                outcome = await run_job(
                    plan.job,
                    plan.spec,
                    plan.budget,
                    plan.policy,
                    timeout=None,  # the run's scope carries the deadline
                    profile=self._profile,
                    limiter=self._limiter,
                    processes=self._processes,
                    middleware=self._middleware,
                )
        finally:
            counters.in_flight -= 1
            # The same id may be running again already: beanstalkd handed a job that is no
            # longer ours (NOT_FOUND on touch) back to us. Only forget this run.
            if self._runs.get(plan.job.id) is run:
                del self._runs[plan.job.id]
            run.slot.release()
        if run.returned is not None and (run.lost or outcome is None):
            outcome = run.returned
        elif outcome is None:
            outcome = timeout_outcome(plan.job, plan.budget, plan.policy, run.timeout)
            if self._middleware:
                await report_timeout(plan.job, outcome, self._middleware)
        self._on_finished(run, outcome)

    # ---- touches

    def due_touches(self) -> list[p.Command]:
        now = trio.current_time()
        touches: list[p.Command] = []
        for job_id, run in self._runs.items():
            if run.next_touch <= now:
                run.next_touch = now + touch_interval(run.stats.ttr, self._margin)
                touches.append(p.Touch(job_id))
        return touches

    def next_touch_in(self) -> float:
        soonest = min((r.next_touch for r in self._runs.values()), default=math.inf)
        return max(0.0, soonest - trio.current_time())

    def touched(self, job_id: int, reply: p.Reply) -> None:
        """beanstalkd answered a touch: move our deadline, or stop a job that is not ours."""
        run = self._runs.get(job_id)
        if run is None:
            return
        if isinstance(reply, p.Touched):
            if not run.plan.spec.long_running:
                # The TTR starts again: so does the part of our deadline that guards it.
                allowance = ttr_allowance(run.stats.ttr, self._margin)
                run.scope.deadline = min(run.limit, trio.current_time() + allowance)
        else:
            # The job is no longer ours (its TTR expired): stop its handler, send nothing.
            run.give_back(
                Cause.NOT_OURS, "touch answered NOT_FOUND: the job is no longer ours", lost=True
            )

    def give_back_all(self, cause: Cause, detail: str, *, lost: bool = False) -> None:
        for run in self._runs.values():
            run.give_back(cause, detail, lost=lost)
