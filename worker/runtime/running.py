"""The jobs one lane's connection holds while their handlers run.

Each job is a :class:`Run`: its cancel scope (our own deadline, before beanstalkd's TTR),
its touch schedule, the in-flight slot it holds, and, once it is handed back without an
outcome, why. :class:`Runs` starts handlers, says which touches are due, applies touch
replies, and hands every finished job to the lane exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Literal

import greenstalk
import structlog
import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.errors import ConnectionLostError
from tubeworker.flow import ApiTracker, Permit
from tubeworker.job import HandlerSpec, Middleware
from tubeworker.observe.counters import JobCounters
from tubeworker.runtime.admission import wait_for_apis
from tubeworker.runtime.dispatch import Plan
from tubeworker.runtime.outcome import BuryJob, Cause, DeleteJob, Outcome, ReleaseJob, ReturnJob
from tubeworker.runtime.runner import ProcessPool, report_timeout, run_job, timeout_outcome
from tubeworker.runtime.slots import Slot

__all__ = ["Run", "Runs", "handler_timeout", "touch_interval", "ttr_allowance"]

# Outcomes that say the handler's call failed (an API's fault, if that API is now open).
_FAILURES = frozenset({Cause.HANDLER_ERROR, Cause.HANDLER_RETRY, Cause.TIMEOUT})


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
        "apis",
        "limit",
        "lost",
        "next_touch",
        "permit",
        "plan",
        "returned",
        "scope",
        "slot",
        "started",
        "stats",
        "timeout",
        "touch_once",
        "touched_at",
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
        self.apis: frozenset[str] = frozenset()  # the APIs it needs (flow control)
        self.permit: Permit | None = None  # admitted by the tracker (a probe, maybe)
        self.touched_at = now  # the TTR's last restart: reserve or touch
        self.touch_once = False  # touched once more when it leaves the API wait

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
        tracker: ApiTracker | None = None,
        draining: Callable[[], bool] = lambda: False,
        log: structlog.typing.FilteringBoundLogger | None = None,
        defer: Callable[[Run, int], Awaitable[int]] | None = None,
        other_work: Callable[[], bool] = lambda: False,
    ) -> None:
        self._defer = defer
        self._other_work = other_work
        self._runs: dict[int, Run] = {}
        self._tracker = tracker or ApiTracker(clock=trio.current_time)
        self._draining = draining
        self._log = log or structlog.get_logger("tubeworker")
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
        self,
        nursery: trio.Nursery,
        plan: Plan,
        stats: p.JobStats,
        slot: Slot,
        started: float,
        apis: frozenset[str] = frozenset(),
    ) -> Run:
        """Start the plan's handler under its own deadline; a job whose ``apis`` are open
        is held first (touched, its deadline not running) until they admit it."""
        spec = plan.spec
        timeout = handler_timeout(spec, self._pool_timeout, stats.ttr, self._margin)
        run = Run(plan, stats, slot, started, timeout)
        run.apis = apis
        if apis:
            run.permit = self._tracker.try_admit(apis)
            if run.permit is None:  # held: touched meanwhile, deadline set on admission
                run.scope.deadline = math.inf
                run.next_touch = run.touched_at + touch_interval(stats.ttr, self._margin)
                self._counters.api_waits += 1
        if not apis and not spec.long_running:  # the common path, inline: no API, no touch
            if spec.timeout or self._pool_timeout:
                run.limit = run.touched_at + (spec.timeout or self._pool_timeout or 0.0)
        elif run.permit is not None or not apis:
            self._arm(run, run.touched_at, held=False)
        self._runs[plan.job.id] = run
        nursery.start_soon(self._run_handler, run)
        return run

    def _arm(self, run: Run, now: float, *, held: bool) -> None:
        """The handler starts now: its own timeout, and the touch schedule it needs
        (``held``: it waited for its APIs, its TTR running since its last touch)."""
        spec = run.plan.spec
        wanted = spec.timeout or self._pool_timeout
        run.limit = now + wanted if wanted else math.inf
        if spec.long_running:
            run.scope.deadline = now + run.timeout if run.timeout is not None else math.inf
            run.next_touch = now + touch_interval(run.stats.ttr, self._margin)
        elif held:  # touch once more so that it gets its whole TTR
            run.scope.deadline = min(
                run.limit, run.touched_at + ttr_allowance(run.stats.ttr, self._margin)
            )
            run.next_touch, run.touch_once = now, True
        else:
            run.scope.deadline = now + run.timeout if run.timeout is not None else math.inf
            run.next_touch = math.inf

    async def _run_handler(self, run: Run) -> None:
        plan = run.plan
        counters = self._counters
        counters.in_flight += 1
        outcome: Outcome | None = None
        try:
            with run.scope:
                while True:
                    if run.apis and run.permit is None:
                        outcome = await self._defer_or_hold(run)
                        if outcome is not None:
                            break
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
                    if not run.apis or not self._failed_with_its_api(run, outcome):
                        break
        finally:
            if run.permit is not None:
                run.permit.release()
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

    async def _defer_or_hold(self, run: Run) -> Outcome | None:
        """A job whose APIs are open: deferred (a delayed copy, so that its slot serves the
        pool's other tubes) when the pool has other work, else held until admitted."""
        until = self._tracker.blocked_until(run.apis)
        if until is not None and self._defer is not None and self._other_work():
            delay = max(1, math.ceil(until - trio.current_time()))
            try:
                copy = await self._defer(run, delay)
            except (ConnectionLostError, greenstalk.Error) as exc:
                self._log.warning(
                    "cannot defer job: holding it", job_id=run.plan.job.id, error=str(exc)
                )
            else:
                apis = ", ".join(sorted(run.apis))
                detail = f"its API is open ({apis}): waits as job {copy} for {delay} s"
                return DeleteJob(Cause.DEFERRED, detail)
        await self._hold(run)
        return None

    async def _hold(self, run: Run) -> None:
        """Wait for the run's APIs to admit it (touched meanwhile, no deadline running)."""
        run.permit = await wait_for_apis(
            run.apis, self._tracker, draining=self._draining, log=self._log
        )
        if run.permit is None:
            run.give_back(Cause.API_OPEN, "draining while its API was open")
            await trio.lowlevel.checkpoint()  # the cancelled scope ends the run here
        self._arm(run, trio.current_time(), held=True)

    def _failed_with_its_api(self, run: Run, outcome: Outcome) -> bool:
        """A run that failed while an API it needs is now open failed because of the API,
        not of the job (it tripped the breaker, or was a probe that failed): it is held
        for another run instead of being released, so an outage burns no attempt."""
        if not run.apis or outcome.cause not in _FAILURES:
            return False
        if not isinstance(outcome, ReleaseJob | BuryJob) or not self._tracker.blocked(run.apis):
            return False
        if run.permit is not None:
            run.permit.release()
            run.permit = None
        now = trio.current_time()
        run.scope.deadline = math.inf
        run.next_touch, run.touch_once = now, False  # touched at once, then every half TTR
        self._counters.api_waits += 1
        self._log.info(
            "job failed while its API is open: held for another run, no attempt counted",
            job_id=run.plan.job.id,
            apis=sorted(run.apis),
            reason=outcome.detail,
        )
        return True

    # ---- touches

    def due_touches(self) -> list[p.Command]:
        now = trio.current_time()
        touches: list[p.Command] = []
        for job_id, run in self._runs.items():
            if run.next_touch <= now:
                if run.touch_once:  # the one touch after an API wait: no schedule after it
                    run.next_touch, run.touch_once = math.inf, False
                else:
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
            run.touched_at = trio.current_time()
            if run.apis and run.permit is None:
                return  # held for its API: no deadline runs yet
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
