"""The jobs side of a lane: each reserved job dispatched on arrival, its outcome queued
when its handler ends, recorded when beanstalkd confirms it, and accounted for when the
connection is lost first."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import structlog
import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address
from tubeworker.chains import NextPut
from tubeworker.config import LimitConfig
from tubeworker.envelope import BatchRef
from tubeworker.errors import JobLostError, UnexpectedReplyError
from tubeworker.flow import Caller, TrackedCall, call_api
from tubeworker.flow.limits import key_of
from tubeworker.job import Job, attach_services
from tubeworker.returns import new_return
from tubeworker.runtime.dispatch import Plan, plan_job
from tubeworker.runtime.lane_outcomes import LaneOutcomes
from tubeworker.runtime.outbox import Entry, Outbox
from tubeworker.runtime.outcome import BuryJob, Cause, DeleteJob, Outcome, ReturnJob
from tubeworker.runtime.outcome_log import Finished, OutcomeLog
from tubeworker.runtime.policy import attempt_number
from tubeworker.runtime.pool import Pool
from tubeworker.runtime.run import Run
from tubeworker.runtime.runs import Runs
from tubeworker.runtime.slots import Slot

if TYPE_CHECKING:
    import httpx

    from tubeworker.batches.ops import Exchange

__all__ = ["LaneJobs"]


class _JobServices:
    """What ``Job.touch/put/http`` reach: the lane that holds the job, and process services."""

    __slots__ = ("_address", "_apis", "_handler", "_job_id", "_jobs")

    def __init__(
        self, jobs: LaneJobs, address: Address, job_id: int, handler: str, apis: frozenset[str]
    ) -> None:
        self._jobs = jobs
        self._address = address
        self._job_id = job_id
        self._handler = handler
        self._apis = apis  # what the job needs: its handler's and its tube's APIs

    @property
    def settings(self) -> Mapping[str, object] | None:
        return self._jobs.pool.services.config.handler_settings.get(self._handler)

    async def touch(self) -> None:
        await self._jobs.touch(self._job_id)

    async def batch_exchange(self, exchange: Exchange[Any]) -> Any:
        """A batch's commands for a handler (job.batch, job.put_in_batch): on this job's
        server, on the daemon's batch connections."""
        return await self._jobs.pool.services.batches.exchange(self._address, exchange)

    async def put(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int:
        producer = self._jobs.pool.services.job_producer(self._address)
        return await producer.put(body, tube=tube, priority=priority, delay=delay, ttr=ttr)

    @property
    def http(self) -> httpx.AsyncClient:
        return self._jobs.pool.services.http.client

    def api(
        self,
        name: str | None = None,
        *,
        host: str | None = None,
        caller_fault: Callable[[Exception], bool] | None = None,
    ) -> TrackedCall:
        caller = Caller(self._handler, tuple(sorted(self._apis)))
        return call_api(self._jobs.pool.services.tracker, name, host, caller_fault, caller)


class LaneJobs(LaneOutcomes):
    """The jobs one lane holds, across its connections."""

    def __init__(
        self,
        pool: Pool,
        address: Address,
        outbox: Outbox,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        services = pool.services
        self.pool = pool
        self.address = address
        self.state = services.state
        self.excuses = services.excuses
        self.log = log
        self.outbox = outbox
        self.outcomes = OutcomeLog(
            self.state.counters, log, services.config.logging.job_lines, self.state.events
        )
        self.runs = Runs(
            on_finished=self._finished,
            counters=self.state.counters,
            ttr_margin=services.config.ttr_margin,
            pool_timeout=pool.config.timeout,
            profile=pool.config.profile,
            limiter=pool.limiter,
            processes=pool.processes,
            admission=pool.admission,
            middleware=services.middleware,
            draining=lambda: self.state.draining,
            defer=self._put_copy,
            binlog=services.binlog(address),
            unique=services.unique,
            put_next=self._put_next,
            record_in_batch=self._record_in_batch,
        )
        self.server_id = str(address)  # the server's instance id once connected
        self.must_close = False  # a job was returned: close the connection when idle
        self.confirmed = 0  # outcomes beanstalkd confirmed on this connection

    def __len__(self) -> int:
        return len(self.runs)

    # ---- for the lane

    def connected(self, server_id: str | None) -> None:
        """A new connection: nothing confirmed on it yet; the server's instance id (which
        tells a restarted server apart, for excuses)."""
        self.confirmed = 0
        if server_id:
            self.server_id = server_id

    def due_touches(self) -> list[p.Command]:
        return self.runs.due_touches()

    def next_touch_in(self) -> float:
        return self.runs.next_touch_in()

    def touch_answered(self, job_id: int, reply: p.Reply) -> None:
        """beanstalkd answered a touch: the run's deadline, and whoever waits for it."""
        self.runs.touched(job_id, reply)
        self.outbox.touch_answered(job_id)

    async def _put_copy(self, run: Run, delay: int) -> int:
        """A deferral: the job again, delayed, in its tube (the original is then deleted:
        put first, so a crash in between leaves a duplicate, never a loss)."""
        job = run.plan.job
        producer = self.pool.services.producer(self.address)
        return await producer.put(
            job.body, tube=job.tube, priority=job.priority, delay=delay, ttr=job.ttr
        )

    async def _put_next(self, step: NextPut) -> int:
        """A chain's next step: to this job's server first, like job.put()."""
        producer = self.pool.services.producer(self.address)
        return await producer.put(
            step.body, tube=step.tube, priority=step.priority, delay=step.delay, ttr=step.ttr
        )

    async def _record_in_batch(self, batch: BatchRef, outcome: BuryJob) -> Outcome:
        """A batch job's burial, recorded in its batch before it is sent."""
        return await self.pool.services.batches.record_burial(self.address, batch, outcome)

    async def _bury_in_batch(
        self, outcome: BuryJob, batch: BatchRef, job_id: int, stats: p.JobStats, started: float
    ) -> None:
        """A batch job buried before it ran: recorded in its batch, then buried."""
        with trio.CancelScope(shield=True):
            decided = await self._record_in_batch(batch, outcome)
        self._send(Finished(decided, job_id, stats, self.pool.config.handler, started))
        self.state.job_finished()

    # ---- for the state (drain deadline) and for handlers

    def return_job(self, cause: Cause, detail: str, *, lost: bool = False) -> None:
        self.runs.give_back_all(cause, detail, lost=lost)

    def running_tubes(self) -> Iterator[str]:
        return (run.stats.tube for run in self.runs)

    async def touch(self, job_id: int) -> None:
        """``job.touch()``: queue a touch for the pump and wait for beanstalkd's answer."""
        run = self.runs.get(job_id)
        if run is None or run.returned is not None:
            raise JobLostError(f"job {job_id} is no longer running on this lane")
        self.outbox.queue(Entry(p.Touch(job_id)))
        await self.outbox.touched(job_id)
        if run.returned is not None:
            raise JobLostError(f"cannot touch job {job_id}: {run.returned.detail}")

    # ---- arrivals

    def may_be_poison(self, stats: p.Reply) -> bool:
        """Whether a job comes back often enough to be buried as poison, on its counters
        alone (then ask :meth:`returned` before judging it; rare, so never per job)."""
        if self.pool.services.returns is None or not isinstance(stats, p.JobStats):
            return False
        limit = self.pool.rules.policy.redelivery_limit * (stats.kicks + 1)
        return stats.reserves - attempt_number(stats) >= limit

    async def returned(self, job_id: int) -> int:
        """How many of the job's redeliveries were returns a daemon chose (on record)."""
        returns = self.pool.services.returns
        return 0 if returns is None else await returns.count(self.address, job_id)

    def begin(
        self,
        handlers: trio.Nursery,
        job: p.Reserved,
        slot: Slot,
        stats: p.Reply,
        *,
        returned: int = 0,
        now: float | None = None,
    ) -> None:
        """Start a job's handler, skip a job that is not ours, or queue its burial.
        ``returned``: its redeliveries that were returns a daemon chose (not its fault);
        ``now``: Trio's clock when its batch arrived."""
        started = time.monotonic()  # for its line's duration
        self.state.counters.reserved += 1
        if isinstance(stats, p.NotFound):
            # Reserved, then gone before we asked: its TTR ran out (we were stopped or the
            # link was slow) and another worker finished it. Not ours; the lane goes on.
            slot.release()
            self.state.counters.skipped += 1
            self.log.warning(
                "job skipped: no longer ours",
                job_id=job.id,
                reason="stats-job answered NOT_FOUND (its TTR ran out before we started it)",
            )
            return
        if not isinstance(stats, p.JobStats):
            slot.release()
            raise UnexpectedReplyError(f"stats-job {job.id} answered {stats!r}")
        # Most processes have no excuses at all: skip the lookup (the per-job path).
        excused = self.excuses.of(self.server_id, job.id) if self.excuses else 0
        excused = max(excused, returned)  # a return this process saw may be on record too
        plan = plan_job(job.id, job.body, stats, self.pool.rules, log=self.log, excused=excused)
        counters = self.state.counters
        if counters.detailed:
            counters.latency[stats.tube].observe(stats.age)  # put → reserve, whole seconds
            if isinstance(plan, Plan):
                counters.attempts[stats.tube].observe(plan.budget.attempt)
        if not isinstance(plan, Plan):
            slot.release()
            if isinstance(plan, BuryJob) and plan.batch is not None:
                handlers.start_soon(self._bury_in_batch, plan, plan.batch, job.id, stats, started)
                return
            self._send(Finished(plan, job.id, stats, self.pool.config.handler, started))
            self.state.job_finished()
            return
        if plan.budget.redeliveries:
            counters.redeliveries += 1
        apis = self.pool.apis_of(stats.tube) if self.pool.gated else _NO_APIS
        if plan.spec.apis:
            apis = apis | frozenset(plan.spec.apis)
        attach_services(plan.job, _JobServices(self, self.address, job.id, plan.handler, apis))
        limits = self.pool.services.limits
        if limits:
            applied = limits.applied(stats.tube, plan.handler, apis)
            keys = limit_keys(applied, plan.job) if applied else None
            self.runs.begin(handlers, plan, stats, slot, started, apis, applied, keys, now)
        else:
            self.runs.begin(handlers, plan, stats, slot, started, apis, now=now)
        self.state.busy_lanes.add(self)

    # ---- outcomes

    def _finished(self, run: Run, outcome: Outcome) -> None:
        """A handler ended (Runs calls this once per job)."""
        if not len(self.runs):
            self.state.busy_lanes.discard(self)
        job = run.plan.job
        finished = Finished(outcome, job.id, run.stats, run.plan.handler, run.started, job.id_key)
        self.state.job_finished()
        batch = job.batch_ref
        if batch is not None and _ends_in_batch(outcome, job):
            self._send_in_batch(finished, batch)
        elif isinstance(outcome, ReturnJob):
            self.outcomes.record(finished)
            if outcome.cause in _NOT_THE_JOBS_FAULT:
                self.excuses.add(self.server_id, finished.job_id)
            records = self.pool.services.records
            if records is not None and outcome.cause in _CHOSEN_RETURNS:
                # On record for whichever worker gets it next: not a crash (see returns.py).
                records.add(
                    self.address, new_return(finished.job_id, run.stats, outcome.cause.value)
                )
            self.must_close = True  # the only way to hand a job back without an outcome
            self.outbox.poke()
        else:
            self._send(finished)


_NO_APIS: frozenset[str] = frozenset()

# Returns that do not count toward the redelivery limit in this process.
_NOT_THE_JOBS_FAULT = frozenset(
    {Cause.CONNECTION_LOST, Cause.API_OPEN, Cause.LIMITED, Cause.WORKER_STOPPED}
)
# Returns the daemon chose (a drain, a stop): on record in beanstalkd, so that they do not
# count toward the redelivery limit in any process (a lost connection may not reach it).
_CHOSEN_RETURNS = frozenset(
    {Cause.DRAIN_DEADLINE, Cause.API_OPEN, Cause.LIMITED, Cause.WORKER_STOPPED}
)


# Deletions that are a batch job's success (its chain, if any, done).
_SUCCESSES = frozenset({Cause.COMPLETED, Cause.DUPLICATE})


def _ends_in_batch(outcome: Outcome, job: Job) -> bool:
    """A success that ends the job's part in its batch (a chain's next step, if it has
    one, carries its token on instead)."""
    return isinstance(outcome, DeleteJob) and outcome.cause in _SUCCESSES and not job.steps


def limit_keys(limits: tuple[LimitConfig, ...], job: Job) -> dict[str, str] | None:
    """Each keyed limit's key for this job, from its envelope's payload (or its body, as
    JSON, in a pool bound to one handler)."""
    keyed = [limit for limit in limits if limit.key is not None]
    if not keyed:
        return None
    try:
        payload = job.data()
    except ValueError:
        payload = None
    return {limit.name: key_of(payload, limit.key or "") for limit in keyed}
