"""What a run may do instead of, or after, its handler: leave a copy for a newer worker
(its payload is newer than its handler here), put its chain's next step before its
delete, or wait for its unique key's lock (or leave a copy for later). Each is a
round trip or a wait that most jobs never take (runtime/runs.py calls them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import greenstalk
import trio

from tubeworker.chains import NextPut, next_put
from tubeworker.errors import ConnectionLostError
from tubeworker.flow.unique import UniqueLocks, key_path_value
from tubeworker.job import HandlerSpec, Job
from tubeworker.producing.errors import InvalidJob, PayloadInvalid, ProducerError
from tubeworker.runtime.admission import Defer
from tubeworker.runtime.outcome import BuryJob, Cause, DeleteJob, Outcome, ReleaseJob
from tubeworker.runtime.policy import failure_outcome
from tubeworker.runtime.run import Run

__all__ = ["UNIQUE_DEFER", "UNIQUE_PATIENCE", "Detours", "PutNext", "unique_key"]

UNIQUE_PATIENCE = 10.0  # seconds a job waits for its unique key before it is deferred
UNIQUE_DEFER = 2  # seconds the deferred copy waits

PutNext = Callable[[NextPut], Awaitable[int]]


def unique_key(spec: HandlerSpec, job: Job) -> str | None:
    """The job's unique key (``@handler(unique=...)``), or None when it has none."""
    unique = spec.unique
    if unique is None:
        return None
    if callable(unique):
        value = unique(job)
        return None if value is None else str(value)
    return key_path_value(job.payload, unique)


def _key_lost(run: Run, why: str) -> None:
    """Its key's lock is gone while it runs: another process may take the key, so stop."""
    run.give_back(Cause.CONNECTION_LOST, why)


class Detours:
    """A connection's detours, with what they need: a way to put a delayed copy
    (``defer``), the unique keys' locks, and a producer for chains' next steps."""

    def __init__(
        self,
        defer: Defer | None,
        unique: UniqueLocks | None,
        put_next: PutNext | None,
        pool_timeout: float | None,
    ) -> None:
        self.defer = defer
        self.unique = unique
        self.put_next = put_next
        self.pool_timeout = pool_timeout

    async def leave_for_newer(self, run: Run, why: str) -> Outcome:
        """A payload newer than its handler here: a delayed copy for a newer worker (the
        original deleted; no attempt counted). If no copy can be put, a release (which
        beanstalkd counts: the rare case costs an attempt, never the job)."""
        delay = run.plan.policy.newer_version_delay
        return await self._leave_copy(run, delay, Cause.NEWER_VERSION, why)

    async def _leave_copy(self, run: Run, delay: int, cause: Cause, why: str) -> Outcome:
        """The job left for later: a copy delayed ``delay`` s, the original deleted (no
        attempt counted); if no copy can be put, a release (which beanstalkd counts)."""
        if self.defer is not None:
            try:
                copy = await self.defer(run, delay)
            except (ConnectionLostError, greenstalk.Error) as exc:
                why = f"{why} (no copy could be put: {exc})"
            else:
                return DeleteJob(cause, f"{why}: waits as job {copy} for {delay} s")
        return ReleaseJob(delay, run.plan.job.priority, cause, why)

    async def next_step(self, run: Run, done: DeleteJob) -> Outcome:
        """Put the chain's next step before the job is deleted (chains.py). A step that
        cannot be put fails the job (retried; the step is put on its next success)."""
        plan = run.plan
        job = plan.job
        try:
            step = next_put(job.steps, batch=job.batch_ref)
            assert step is not None
            if self.put_next is None:
                raise ConnectionLostError("no producer for the next step")
            await self.put_next(step)
        except InvalidJob as exc:  # the step itself is wrong: no retry will fix it
            cause = Cause.SCHEMA if isinstance(exc, PayloadInvalid) else Cause.BAD_BODY
            return BuryJob(job.priority, cause, f"its next step cannot be put: {exc}")
        except (ProducerError, ConnectionLostError, greenstalk.Error) as exc:
            detail = f"its next step could not be put: {exc}"
            return failure_outcome(
                plan.budget,
                plan.policy,
                priority=job.priority,
                cause=Cause.NEXT_STEP,
                detail=detail,
            )
        return done

    async def lock_key(self, run: Run) -> Outcome | None:
        """Hold the run until its unique key is locked (None), or defer it: a delayed copy,
        no attempt counted (see flow/unique.py). A job whose key cannot be read runs
        unlocked, and says so once."""
        plan = run.plan
        key = unique_key(plan.spec, plan.job)
        if key is None:
            return None
        if self.unique is None:  # no lock server: never run a unique job unlocked
            return ReleaseJob(UNIQUE_DEFER, plan.job.priority, Cause.DEFERRED, "no lock server")
        run.hold()
        lock = await self.unique.acquire(
            plan.handler, key, patience=UNIQUE_PATIENCE, on_lost=partial(_key_lost, run)
        )
        if lock is None:
            why = f"its unique key {key!r} stayed locked {UNIQUE_PATIENCE:g} s"
            return await self._leave_copy(run, UNIQUE_DEFER, Cause.DEFERRED, why)
        run.unique = (self.unique, lock)
        run.arm(trio.current_time(), self.pool_timeout, held=True)
        return None
