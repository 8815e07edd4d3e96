"""The runs of one lane's connection: each reserved job's handler started under its own
deadline (in a task of its own once it waits: runtime/in_turn.py), and handed back to the
lane exactly once with its outcome.

A run goes: admitted (:mod:`admission`: at once, or held until its APIs and limits let it,
or deferred) → invoked (:mod:`invoke`: the handler, the only ``except`` around user code)
→ held again if it failed because its API is open (admission's settle window) → held while
its server has no binlog room (:mod:`binlog`) → finished. :class:`Runs` also says which
touches are due and applies touch replies.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, Literal, TypeGuard

import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.config import LimitConfig
from tubeworker.envelope import BatchRef
from tubeworker.flow import CALLER, Caller
from tubeworker.flow.unique import UniqueLocks
from tubeworker.job import Middleware
from tubeworker.observe.counters import JobCounters
from tubeworker.runtime.admission import Admission, Defer
from tubeworker.runtime.binlog import BinlogHealth, hold_for_binlog, needs_room
from tubeworker.runtime.detours import Detours, PutNext
from tubeworker.runtime.dispatch import Plan
from tubeworker.runtime.in_turn import Turn, run_in_turn
from tubeworker.runtime.invoke import ProcessPool, report_timeout, run_job, timeout_outcome
from tubeworker.runtime.outcome import BuryJob, Cause, DeleteJob, Outcome
from tubeworker.runtime.run import Run, handler_timeout
from tubeworker.runtime.slots import Slot

__all__ = ["Runs"]


# Deletions after which a chain goes on: done, or done before (its step may be lost).
_CHAIN_GOES_ON = frozenset({Cause.COMPLETED, Cause.DUPLICATE})

# Records a batch job's burial before it is sent (runtime/batch_book.py): the outcome to send.
RecordInBatch = Callable[[BatchRef, BuryJob], Awaitable[Outcome]]


def _goes_on(outcome: Outcome) -> TypeGuard[DeleteJob]:
    """Whether a chain goes on after this outcome (its next step put)."""
    return isinstance(outcome, DeleteJob) and outcome.cause in _CHAIN_GOES_ON


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
        admission: Admission,
        middleware: Sequence[Middleware] = (),
        draining: Callable[[], bool] = lambda: False,
        defer: Defer | None = None,
        binlog: BinlogHealth | None = None,
        unique: UniqueLocks | None = None,
        put_next: PutNext | None = None,
        record_in_batch: RecordInBatch | None = None,
    ) -> None:
        self._runs: dict[int, Run] = {}
        self._starting: list[Run] | None = None  # begun, their task not yet running
        self._turn: Turn[Run, Outcome] = self
        self._on_finished = on_finished
        self._counters = counters
        self._margin = ttr_margin
        self._pool_timeout = pool_timeout
        self._profile: Literal["io", "compute"] = profile
        self._limiter = limiter
        self._processes = processes
        self._admission = admission
        self._middleware = tuple(middleware)
        self._draining = draining
        self._defer = defer
        self._binlog = binlog
        self._detours = Detours(defer, unique, put_next, pool_timeout)
        self._record_in_batch = record_in_batch

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(list(self._runs.values()))

    @property
    def starting(self) -> bool:
        """Runs were begun whose task has not run yet (their first steps not taken)."""
        return self._starting is not None

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
        limits: tuple[LimitConfig, ...] = (),
        limit_keys: dict[str, str] | None = None,
        now: float | None = None,
    ) -> Run:
        """Start the plan's handler under its own deadline; a job whose ``apis`` are open,
        or whose ``limits`` are full, is held first (touched, its deadline not running)
        until they admit it, or deferred."""
        spec = plan.spec
        timeout = handler_timeout(spec, self._pool_timeout, stats.ttr, self._margin)
        run = Run(plan, stats, slot, started, timeout, self._margin, now)
        if apis or limits:
            run.apis, run.limits, run.limit_keys = apis, limits, limit_keys or {}
            if self._admission.try_now(run):
                run.arm(run.touched_at, self._pool_timeout, held=False)
            else:
                run.hold()  # touched meanwhile, its deadline set on admission
        elif spec.long_running:
            run.arm(run.touched_at, self._pool_timeout, held=False)
        elif spec.timeout or self._pool_timeout:
            # The common path, inline: no API, no limit, no touch.
            run.limit = run.touched_at + (spec.timeout or self._pool_timeout or 0.0)
        self._runs[plan.job.id] = run
        if self._starting is None:  # the first of a batch: one task starts them in turn
            self._starting = [run]
            nursery.start_soon(self._start_runs, nursery)
        else:
            self._starting.append(run)
        return run

    async def _start_runs(self, nursery: trio.Nursery) -> None:
        """Start the runs begun since this task was spawned (the lane's batch), each in
        this task while it ends without waiting (runtime/in_turn.py)."""
        runs, self._starting = self._starting or [], None
        await run_in_turn(nursery, self._turn, runs)

    # ---- a run's turn (runtime/in_turn.py's Turn)

    def start(self, run: Run) -> Coroutine[Any, Any, Outcome]:
        """Its body, under its own deadline."""
        self._counters.in_flight += 1
        if run.apis:  # its job.http calls count for its API (see flow.tracker.CALLER)
            CALLER.set(Caller(run.plan.handler, tuple(sorted(run.apis))))
        return self._run(run)

    @staticmethod
    def deadline(run: Run) -> float:
        return run.deadline

    @staticmethod
    def scope_taken(run: Run, scope: trio.CancelScope) -> None:
        run.scope_taken(scope)

    def stopped(self, run: Run) -> None:
        """Its body ended: what it held is given back."""
        run.release_admission()
        self._counters.in_flight -= 1
        # The same id may be running again already: beanstalkd handed a job that is no
        # longer ours (NOT_FOUND on touch) back to us. Only forget this run.
        job_id = run.plan.job.id
        if self._runs.get(job_id) is run:
            del self._runs[job_id]
        run.slot.release()

    async def finish(self, run: Run, outcome: Outcome | None) -> None:
        """Its outcome (None: its deadline or a give-back cancelled it) to the lane."""
        plan = run.plan
        if run.returned is not None and (run.lost or outcome is None):
            outcome = run.returned
        elif outcome is None:
            outcome = timeout_outcome(plan.job, plan.budget, plan.policy, run.timeout)
            if self._middleware:
                await report_timeout(plan.job, outcome, self._middleware)
        batch = plan.job.batch_ref
        record = self._record_in_batch
        if batch is not None and record is not None and isinstance(outcome, BuryJob):
            # Before the job is buried; bounded, and not cut by a drain. (A success is
            # recorded by the lane, on its connection, before the delete.)
            with trio.CancelScope(shield=True):
                outcome = await record(batch, outcome)
        self._on_finished(run, outcome)

    async def _run(self, run: Run) -> Outcome:
        """The run's outcome (see the module docstring). A wait that ends by a drain
        cancels the run's scope: no outcome comes back."""
        plan = run.plan
        if plan.too_new is not None:
            return await self._detours.leave_for_newer(run, plan.too_new)
        while True:
            if run.holding:
                deferred = await self._admission.admit(run, self._defer)
                if deferred is not None:
                    return deferred
                run.arm(trio.current_time(), self._pool_timeout, held=True)
            if plan.spec.unique is not None and run.unique is None:
                waited = await self._detours.lock_key(run)
                if waited is not None:
                    return waited
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
            if not run.apis or not await self._admission.failed_with_its_api(run, outcome):
                break
        if plan.job.steps and _goes_on(outcome):
            outcome = await self._detours.next_step(run, outcome)
        binlog = self._binlog
        if binlog is not None and binlog.full and needs_room(outcome):
            return await hold_for_binlog(run, outcome, binlog, self._draining)
        return outcome

    # ---- touches

    def due_touches(self) -> list[p.Command]:
        now = trio.current_time()
        return [p.Touch(job_id) for job_id, run in self._runs.items() if run.touch_due(now)]

    def next_touch_in(self) -> float:
        soonest = min((r.next_touch for r in self._runs.values()), default=math.inf)
        return max(0.0, soonest - trio.current_time())

    def touched(self, job_id: int, reply: p.Reply) -> None:
        """beanstalkd answered a touch: move our deadline, or stop a job that is not ours."""
        run = self._runs.get(job_id)
        if run is None:
            return
        if isinstance(reply, p.Touched):
            run.touched(trio.current_time())
        else:
            # The job is no longer ours (its TTR expired): stop its handler, send nothing.
            run.give_back(
                Cause.NOT_OURS, "touch answered NOT_FOUND: the job is no longer ours", lost=True
            )

    def give_back_all(self, cause: Cause, detail: str, *, lost: bool = False) -> None:
        for run in self._runs.values():
            run.give_back(cause, detail, lost=lost)
