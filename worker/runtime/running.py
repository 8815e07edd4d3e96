"""The jobs one lane's connection holds while their handlers run.

Each job is a :class:`Run`: its cancel scope (our own deadline, before beanstalkd's TTR),
its touch schedule, the in-flight slot it holds, and, once it is handed back without an
outcome, why. :class:`Runs` starts handlers, says which touches are due, applies touch
replies, and hands every finished job to the lane exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from typing import Literal, TypeGuard

import greenstalk
import structlog
import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.config import LimitConfig
from tubeworker.errors import ConnectionLostError
from tubeworker.flow import CALLER, ApiTracker, Caller, Permit
from tubeworker.flow.limits import Lease, Limits
from tubeworker.job import HandlerSpec, Middleware
from tubeworker.observe.counters import JobCounters
from tubeworker.runtime.admission import wait_for_apis
from tubeworker.runtime.binlog import BinlogHealth
from tubeworker.runtime.dispatch import Plan
from tubeworker.runtime.outcome import BuryJob, Cause, DeleteJob, Outcome, ReleaseJob, ReturnJob
from tubeworker.runtime.runner import ProcessPool, report_timeout, run_job, timeout_outcome
from tubeworker.runtime.slots import Slot
from tubeworker.runtime.tokens import TokenBroker, TokenGroup

__all__ = ["Run", "Runs", "handler_timeout", "touch_interval", "ttr_allowance"]

# A run that failed while its API's calls are failing waits this long at most for the
# breaker to tell an outage (held, no attempt) from the job's own failure (released); it
# looks every _SETTLE_POLL seconds.
_SETTLE = 10.0
_SETTLE_POLL = 0.1

# A job waiting for a full concurrency limit looks again at least this often.
_LIMIT_POLL = 1.0

# A job held for binlog room looks again at least this often (and notices a drain).
_BINLOG_POLL = 1.0


def _needs_room(outcome: Outcome) -> TypeGuard[ReleaseJob | BuryJob]:
    """An outcome beanstalkd must write to its binlog: a release with a delay, a bury."""
    return isinstance(outcome, BuryJob) or (isinstance(outcome, ReleaseJob) and outcome.delay > 0)


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
        "holding",
        "lease",
        "limit",
        "limit_keys",
        "limits",
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
        "tokens",
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
        self.limits: tuple[LimitConfig, ...] = ()  # the limits it runs under
        self.limit_keys: dict[str, str] = {}  # limit name → its key's value for this job
        self.lease: Lease | None = None  # admitted by the local limits
        self.tokens: list[tuple[TokenBroker, int]] = []  # fleet tokens held while it runs
        # Waiting for its APIs or limits: touched meanwhile, its own deadline not running.
        self.holding = False
        self.touched_at = now  # the TTR's last restart: reserve or touch
        self.touch_once = False  # touched once more when it leaves the API wait

    def release_admission(self) -> None:
        """Give back the probe slots, concurrency and tokens it holds (exactly once each)."""
        if self.permit is not None:
            self.permit.release()
            self.permit = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        while self.tokens:
            broker, token = self.tokens.pop()
            broker.give_back(token)

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
        limits: Limits | None = None,
        tokens: dict[str, tuple[TokenGroup, ...]] | None = None,
        limits_changed: Callable[[], Awaitable[None]] | None = None,
        binlog: BinlogHealth | None = None,
    ) -> None:
        self._binlog = binlog
        self._defer = defer
        self._limits = limits or Limits((), clock=trio.current_time)
        self._tokens = tokens or {}
        self._limits_changed = limits_changed
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
        limits: tuple[LimitConfig, ...] = (),
        limit_keys: dict[str, str] | None = None,
    ) -> Run:
        """Start the plan's handler under its own deadline; a job whose ``apis`` are open,
        or whose ``limits`` are full, is held first (touched, its deadline not running)
        until they admit it, or deferred."""
        spec = plan.spec
        timeout = handler_timeout(spec, self._pool_timeout, stats.ttr, self._margin)
        run = Run(plan, stats, slot, started, timeout)
        run.apis = apis
        if apis:
            run.permit = self._tracker.try_admit(apis)
            if run.permit is None:
                run.holding = True
                self._counters.api_waits += 1
        if limits:
            run.limits = limits
            run.limit_keys = limit_keys or {}
            if not run.holding and not self._admit_now(run):
                run.holding = True
        if run.holding:  # touched meanwhile, its deadline set on admission
            run.scope.deadline = math.inf
            run.next_touch = run.touched_at + touch_interval(stats.ttr, self._margin)
        elif not apis and not limits and not spec.long_running:
            # The common path, inline: no API, no limit, no touch.
            if spec.timeout or self._pool_timeout:
                run.limit = run.touched_at + (spec.timeout or self._pool_timeout or 0.0)
        else:
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
        if run.apis:  # its job.http calls count for its API (see flow.tracker.CALLER)
            CALLER.set(Caller(plan.handler, tuple(sorted(run.apis))))
        try:
            with run.scope:
                outcome = await self._run_held_or_not(run)
        finally:
            run.release_admission()
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

    async def _run_held_or_not(self, run: Run) -> Outcome:
        """The run's outcome: admitted (held first if it must wait), run, held again if its
        API failed under it, and held once more while its server has no binlog room. A
        hold that ends by a drain cancels the run's scope: no outcome comes back."""
        plan = run.plan
        while True:
            if run.holding:
                admitted = await self._admit(run)
                if admitted is not None:
                    return admitted
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
            if not run.apis or not await self._failed_with_its_api(run, outcome):
                break
        if self._binlog is not None and self._binlog.full and _needs_room(outcome):
            return await self._hold_for_binlog(run, outcome)
        return outcome

    async def _admit(self, run: Run) -> Outcome | None:
        """A held run: wait for its APIs, then its limits; or defer it (an outcome)."""
        if run.apis and run.permit is None:
            outcome = await self._defer_or_hold(run)
            if outcome is not None:
                return outcome
        if run.limits:
            outcome = await self._wait_for_limits(run)
            if outcome is not None:
                return outcome
        run.holding = False
        self._arm(run, trio.current_time(), held=True)
        return None

    async def _defer_or_hold(self, run: Run) -> Outcome | None:
        """A job whose APIs are open: deferred (a delayed copy, so that its slot serves the
        pool's other tubes) when the pool has other work, else held until admitted."""
        until = self._tracker.blocked_until(run.apis)
        if until is not None and self._defer is not None and self._other_work():
            delay = max(1, math.ceil(until - trio.current_time()))
            apis = ", ".join(sorted(run.apis))
            outcome = await self._defer_copy(run, delay, f"its API is open ({apis})")
            if outcome is not None:
                return outcome
        run.permit = await wait_for_apis(
            run.apis, self._tracker, draining=self._draining, log=self._log
        )
        if run.permit is None:
            run.give_back(Cause.API_OPEN, "draining while its API was open")
            await trio.lowlevel.checkpoint()  # the cancelled scope ends the run here
        return None

    async def _defer_copy(self, run: Run, delay: int, why: str) -> Outcome | None:
        """Put a delayed copy of the job (the original is then deleted): no attempt is
        counted. None if the copy could not be put (the job waits instead)."""
        if self._defer is None:
            return None
        try:
            copy = await self._defer(run, delay)
        except (ConnectionLostError, greenstalk.Error) as exc:
            self._log.warning(
                "cannot defer job: holding it", job_id=run.plan.job.id, error=str(exc)
            )
            return None
        return DeleteJob(Cause.DEFERRED, f"{why}: waits as job {copy} for {delay} s")

    def _admit_now(self, run: Run) -> bool:
        """Admit a run under its limits without waiting, if they all have room now (fleet
        limits always wait: their tokens are in beanstalkd)."""
        if any(limit.fleet for limit in run.limits):
            return False
        got = self._limits.try_acquire(run.limits, run.limit_keys)
        if isinstance(got, Lease):
            run.lease = got
            return True
        return False

    async def _wait_for_limits(self, run: Run) -> Outcome | None:
        """Wait for room under the run's limits, local then fleet-wide; a run that would
        wait longer than the limits' ``defer_after`` is deferred instead (an outcome)."""
        patience = min(limit.defer_after for limit in run.limits)
        deadline = trio.current_time() + patience
        if run.lease is None and not all(limit.fleet for limit in run.limits):
            expected = self._limits.expected_wait(run.limits, run.limit_keys)
            if patience and expected is not None and expected > patience:
                outcome = await self._defer_for_limits(run, expected)
                if outcome is not None:
                    return outcome
                deadline = math.inf  # could not defer: wait as long as it takes
            outcome = await self._wait_for_local(run, patience, deadline)
            if outcome is not None:
                return outcome
        for limit in run.limits:
            for group in self._tokens.get(limit.name, ()) if limit.fleet else ():
                outcome = await self._wait_for_token(run, group, patience, deadline)
                if outcome is not None:
                    return outcome
        return None

    async def _wait_for_local(self, run: Run, patience: float, deadline: float) -> Outcome | None:
        limits = self._limits
        limits.queue(run.limits, run.limit_keys, +1)
        try:
            while True:
                got = limits.try_acquire(run.limits, run.limit_keys)
                if isinstance(got, Lease):
                    run.lease = got
                    return None
                outcome, deadline = await self._still_waiting(run, patience, deadline)
                if outcome is not None:
                    return outcome
                now = trio.current_time()
                wake = now + (_LIMIT_POLL if got.seconds is None else got.seconds)
                with trio.move_on_at(min(deadline, wake, now + _LIMIT_POLL)):
                    if got.seconds is None and self._limits_changed is not None:
                        await self._limits_changed()  # a running job of the limit ended
                    else:
                        await trio.sleep_forever()
        finally:
            limits.queue(run.limits, run.limit_keys, -1)

    async def _wait_for_token(
        self, run: Run, group: TokenGroup, patience: float, deadline: float
    ) -> Outcome | None:
        ticket = group.ticket()  # kept while it waits: first come, first served
        try:
            while not ticket.event.is_set():
                outcome, deadline = await self._still_waiting(run, patience, deadline)
                if outcome is not None:
                    return outcome
                with trio.move_on_at(min(deadline, trio.current_time() + _LIMIT_POLL)):
                    await ticket.event.wait()
            token, ticket.token = ticket.token, None
            broker = ticket.broker
        finally:
            ticket.cancel()  # leaves the other servers' queues
        assert token is not None
        assert broker is not None
        if group.tube.held:
            run.tokens.append((broker, token))
        return None

    async def _still_waiting(
        self, run: Run, patience: float, deadline: float
    ) -> tuple[Outcome | None, float]:
        """Between two looks at a limit: the job goes back if the daemon drains, and is
        deferred once it has waited ``patience`` (an outcome). The deadline that applies
        next: none once a deferral failed (the job then waits as long as it takes)."""
        if self._draining():
            run.give_back(Cause.LIMITED, "draining while it waited for its limit")
            await trio.lowlevel.checkpoint()  # the cancelled scope ends the run here
        if trio.current_time() < deadline:
            return None, deadline
        return await self._defer_for_limits(run, patience), math.inf

    async def _defer_for_limits(self, run: Run, expected: float) -> Outcome | None:
        names = ", ".join(limit.name for limit in run.limits)
        for limit in run.limits:
            self._limits.count_deferral(limit.name)
        delay = max(1, math.ceil(expected))
        return await self._defer_copy(run, delay, f"its limit is full ({names})")

    async def _failed_with_its_api(self, run: Run, outcome: Outcome) -> bool:
        """A run that failed while an API it needs is open failed because of the API, not
        of the job (it tripped the breaker, or was a probe that failed): it is held for
        another run instead of being released, so an outage burns no attempt.

        A failure while the API's last call failed too (an outage may be starting, the
        breaker has not seen enough yet) waits, touched, for the breaker to decide: held if
        it opens, released as usual once a call to the API succeeds or after ``_SETTLE``
        seconds. So even the failures that trip the breaker burn no attempt.
        """
        if not run.apis or outcome.cause not in _FAILURES:
            return False
        if not isinstance(outcome, ReleaseJob | BuryJob):
            return False
        if not self._tracker.blocked(run.apis) and not await self._settles_open(run):
            return False
        run.release_admission()
        run.holding = True
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

    async def _settles_open(self, run: Run) -> bool:
        """After a failure while the API is failing: True once its breaker opens, False as
        soon as a call succeeds, or when ``_SETTLE`` passes (touched meanwhile)."""
        tracker = self._tracker
        if not tracker.failing(run.apis):
            return False
        now = trio.current_time()
        run.scope.deadline = math.inf
        if run.next_touch == math.inf:
            run.next_touch = run.touched_at + touch_interval(run.stats.ttr, self._margin)
        give_up = now + _SETTLE
        while trio.current_time() < give_up:
            await trio.sleep(_SETTLE_POLL)
            if tracker.blocked(run.apis):
                return True
            if not tracker.failing(run.apis) or self._draining():
                return False
        return False

    async def _hold_for_binlog(self, run: Run, outcome: ReleaseJob | BuryJob) -> Outcome:
        """Its server's binlog has no room (see runtime.binlog): hold the job, touched, for
        its backoff, then release it with delay 0 (no record needed); hold a burial until
        the server has room. A drain releases a held failure at once and hands back a held
        burial."""
        binlog = self._binlog
        assert binlog is not None
        now = trio.current_time()
        due = now + outcome.delay if isinstance(outcome, ReleaseJob) else math.inf
        run.holding = True  # touched, no deadline running
        run.scope.deadline = math.inf
        run.next_touch = run.touched_at + touch_interval(run.stats.ttr, self._margin)
        binlog.held += 1
        try:
            while binlog.full and not self._draining() and trio.current_time() < due:
                with trio.move_on_at(min(due, trio.current_time() + _BINLOG_POLL)):
                    await binlog.wait_recovered()
        finally:
            binlog.held -= 1
        if not binlog.full:  # room again: its outcome as decided, the rest of its backoff
            if isinstance(outcome, ReleaseJob):
                left = max(1, math.ceil(due - trio.current_time()))
                return replace(outcome, delay=min(outcome.delay, left))
            return outcome
        if isinstance(outcome, BuryJob):  # draining: it cannot be buried, it goes back
            run.give_back(Cause.BINLOG_FULL, "draining while its burial waited for binlog room")
            await trio.lowlevel.checkpoint()  # the cancelled scope ends the run here
        waited = round(trio.current_time() - now)
        detail = f"{outcome.detail} (binlog full: released with delay 0 after {waited} s)"
        return ReleaseJob(0, outcome.priority, outcome.cause, detail)

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
            if run.holding:
                return  # held for its API or limit: no deadline runs yet
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
