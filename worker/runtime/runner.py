"""Run one job's handler and decide its outcome. It does not talk to beanstalkd.

This is the only place that catches exceptions from user code. ``Cancelled`` (the lane lost
its connection, or the drain deadline passed) is never caught here: it propagates to the
lane, which returns the job by closing its connection.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Literal, Protocol

import trio

from tubeworker.job import Bury, HandlerSpec, Job, JobRecord, Retry
from tubeworker.runtime.outcome import BuryJob, Cause, DeleteJob, Outcome, ReleaseJob
from tubeworker.runtime.policy import Budget, RetryPolicy, failure_outcome

__all__ = ["ProcessPool", "run_in_process", "run_job", "timeout_outcome"]


class ProcessPool(Protocol):
    """Worker processes for compute-profile handlers (see ``tubeworker.runtime.processes``)."""

    async def run(
        self, func: Callable[..., Any], *args: Any, limiter: trio.CapacityLimiter | None
    ) -> Any: ...


def run_in_process(func: Callable[[Job], Any], record: JobRecord) -> None:
    """In a worker process: the handler gets a Job rebuilt from plain data."""
    func(Job.from_record(record))


_DELETE = DeleteJob()

_MAX_REASON = 500  # a reason is a log field, not a dump


def _short(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return _short(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` in ``exc`` or, for exception groups (nurseries), in its leaves."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


async def _call(
    spec: HandlerSpec,
    job: Job,
    profile: Literal["io", "compute"],
    limiter: trio.CapacityLimiter | None,
    processes: ProcessPool | None,
) -> None:
    func: Callable[..., Any] = spec.func
    if spec.is_async:
        await func(job)
    elif profile == "compute":
        if processes is None:
            raise RuntimeError("a compute-profile pool runs sync handlers in its process pool")
        # Only plain data crosses: the job's record (never its connection or logger).
        await processes.run(run_in_process, func, job.record, limiter=limiter)
    else:
        # A thread cannot be killed: on timeout we stop waiting and it runs on unobserved.
        await trio.to_thread.run_sync(func, job, abandon_on_cancel=True, limiter=limiter)


async def run_job(
    job: Job,
    spec: HandlerSpec,
    budget: Budget,
    policy: RetryPolicy,
    *,
    timeout: float | None,
    profile: Literal["io", "compute"] = "io",
    limiter: trio.CapacityLimiter | None = None,
    processes: ProcessPool | None = None,
    rng: random.Random | None = None,
) -> Outcome:
    """Run the handler (under ``timeout`` seconds if given) and return the outcome."""
    try:
        if timeout is None:
            await _call(spec, job, profile, limiter, processes)
        else:
            with trio.move_on_after(timeout) as scope:
                await _call(spec, job, profile, limiter, processes)
            if scope.cancelled_caught:
                return timeout_outcome(job, budget, policy, timeout, rng)
    except (Exception, SystemExit) as exc:  # user code: anything it raises is a verdict
        return _outcome_for(exc, job, budget, policy, rng)
    except BaseExceptionGroup as group:
        # From a nursery inside the handler. Cancelled or KeyboardInterrupt inside must
        # propagate; a group of only errors and SystemExit is the handler's verdict.
        if group.subgroup(_must_propagate) is not None:
            raise
        return _outcome_for(group, job, budget, policy, rng)
    return _DELETE


def timeout_outcome(
    job: Job,
    budget: Budget,
    policy: RetryPolicy,
    timeout: float | None,
    rng: random.Random | None = None,
) -> ReleaseJob | BuryJob:
    """The handler overran its deadline: a failed attempt."""
    detail = f"timed out after {timeout:g} s" if timeout is not None else "timed out"
    return failure_outcome(
        budget, policy, priority=job.priority, cause=Cause.TIMEOUT, detail=detail, rng=rng
    )


def _must_propagate(exc: BaseException) -> bool:
    # False for groups, so that subgroup() looks inside them at the leaves.
    return not isinstance(exc, BaseExceptionGroup | Exception | SystemExit)


def _outcome_for(
    exc: BaseException, job: Job, budget: Budget, policy: RetryPolicy, rng: random.Random | None
) -> ReleaseJob | BuryJob:
    bury = _find(exc, Bury)
    if isinstance(bury, Bury):
        return BuryJob(job.priority, Cause.HANDLER_BURY, _short(bury.reason))
    retry = _find(exc, Retry)
    if isinstance(retry, Retry):
        return failure_outcome(
            budget,
            policy,
            priority=job.priority,
            cause=Cause.HANDLER_RETRY,
            detail=_short(retry.reason or "no reason given"),
            delay=retry.delay,
            rng=rng,
        )
    return failure_outcome(
        budget,
        policy,
        priority=job.priority,
        cause=Cause.HANDLER_ERROR,
        detail=_describe(exc),
        rng=rng,
    )
