"""Run one job's handler and decide its outcome. It does not talk to beanstalkd.

This is the only place that catches exceptions from user code. ``Cancelled`` (the lane lost
its connection, or the drain deadline passed) is never caught here: it propagates to the
lane, which returns the job by closing its connection.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol

import structlog
import trio

from tubeworker.burials import format_traceback
from tubeworker.job import (
    Bury,
    Duplicate,
    HandlerSpec,
    Job,
    JobRecord,
    Middleware,
    Retry,
    Verdict,
)
from tubeworker.runtime.outcome import BuryJob, Cause, DeleteJob, Outcome, ReleaseJob, ReturnJob
from tubeworker.runtime.policy import Budget, RetrySettings, failure_outcome
from tubeworker.runtime.processes import WorkerStopped

__all__ = [
    "ProcessPool",
    "report_timeout",
    "run_in_process",
    "run_job",
    "timeout_outcome",
    "verdict_of",
]

log = structlog.get_logger("tubeworker")


class ProcessPool(Protocol):
    """Worker processes for compute-profile handlers (see ``tubeworker.runtime.processes``)."""

    async def run(
        self, func: Callable[..., Any], *args: Any, limiter: trio.CapacityLimiter | None
    ) -> Any: ...


def run_in_process(func: Callable[[Job], Any], record: JobRecord) -> None:
    """In a worker process: the handler gets a Job rebuilt from plain data. What it raises
    takes its traceback along as text (a pickled exception loses its frames)."""
    try:
        func(Job.from_record(record))
    except Exception as exc:
        exc.__dict__[_TRACEBACK] = format_traceback(exc)
        raise


_TRACEBACK = "_tubeworker_traceback"  # set on exceptions raised in a worker process


def _traceback_of(exc: BaseException) -> str:
    """The handler's traceback, bounded (tubeworker.burials), from its worker process if
    it ran in one."""
    remote = getattr(exc, _TRACEBACK, None)
    return remote if isinstance(remote, str) else format_traceback(exc)


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


def _call(
    spec: HandlerSpec,
    job: Job,
    profile: Literal["io", "compute"],
    limiter: trio.CapacityLimiter | None,
    processes: ProcessPool | None,
) -> Awaitable[Any]:
    """The handler's call, to await (an async handler's own coroutine: no frame between)."""
    func: Callable[..., Any] = spec.func
    if spec.is_async:
        return func(job)  # type: ignore[no-any-return]
    if profile == "compute":
        if processes is None:
            raise RuntimeError("a compute-profile pool runs sync handlers in its process pool")
        # Only plain data crosses: the job's record (never its connection or logger).
        return processes.run(run_in_process, func, job.record, limiter=limiter)
    # A thread cannot be killed: on timeout we stop waiting and it runs on unobserved.
    return trio.to_thread.run_sync(func, job, abandon_on_cancel=True, limiter=limiter)


def run_job(
    job: Job,
    spec: HandlerSpec,
    budget: Budget,
    policy: RetrySettings,
    *,
    timeout: float | None,
    profile: Literal["io", "compute"] = "io",
    limiter: trio.CapacityLimiter | None = None,
    processes: ProcessPool | None = None,
    middleware: Sequence[Middleware] = (),
    rng: random.Random | None = None,
) -> Coroutine[Any, Any, Outcome]:
    """Run the handler (under ``timeout`` seconds if given) and return the outcome.

    ``middleware`` hooks run around it (``before``; ``on_error`` when it raised; ``after``
    once the outcome is decided). A timeout imposed from outside (the caller's cancel
    scope) is reported by the caller with :func:`report_timeout`. (A plain function that
    returns the coroutine to await: one frame less per job.)
    """
    if middleware:
        return _run_with_middleware(
            job, spec, budget, policy, timeout, profile, limiter, processes, middleware, rng
        )
    return _run(job, spec, budget, policy, timeout, profile, limiter, processes, rng)


async def _run(
    job: Job,
    spec: HandlerSpec,
    budget: Budget,
    policy: RetrySettings,
    timeout: float | None,
    profile: Literal["io", "compute"],
    limiter: trio.CapacityLimiter | None,
    processes: ProcessPool | None,
    rng: random.Random | None,
    errors: list[BaseException] | None = None,
) -> Outcome:
    try:
        if timeout is None:
            await _call(spec, job, profile, limiter, processes)
        else:
            with trio.move_on_after(timeout) as scope:
                await _call(spec, job, profile, limiter, processes)
            if scope.cancelled_caught:
                return timeout_outcome(job, budget, policy, timeout, rng)
    except WorkerStopped as exc:  # not the handler's doing: the job goes back
        return ReturnJob(Cause.WORKER_STOPPED, str(exc))
    except Duplicate as exc:  # its work was done before: done, counted apart
        return DeleteJob(Cause.DUPLICATE, _short(exc.reason))
    except (Exception, SystemExit) as exc:  # user code: anything it raises is a verdict
        if errors is not None:
            errors.append(exc)
        return _outcome_for(exc, job, budget, policy, rng)
    except BaseExceptionGroup as group:
        # From a nursery inside the handler. Cancelled or KeyboardInterrupt inside must
        # propagate; a group of only errors and SystemExit is the handler's verdict.
        if group.subgroup(_must_propagate) is not None:
            raise
        if errors is not None:
            errors.append(group)
        return _outcome_for(group, job, budget, policy, rng)
    return _DELETE


async def _run_with_middleware(
    job: Job,
    spec: HandlerSpec,
    budget: Budget,
    policy: RetrySettings,
    timeout: float | None,
    profile: Literal["io", "compute"],
    limiter: trio.CapacityLimiter | None,
    processes: ProcessPool | None,
    middleware: Sequence[Middleware],
    rng: random.Random | None,
) -> Outcome:
    for each in middleware:
        await _hook(each.before(job), each, "before")
    errors: list[BaseException] = []
    outcome = await _run(
        job, spec, budget, policy, timeout, profile, limiter, processes, rng, errors
    )
    error: BaseException | None = errors[0] if errors else None
    if error is None and outcome.cause is Cause.TIMEOUT:
        error = TimeoutError(outcome.reason)
    await _tell(job, outcome, error, middleware)
    return outcome


async def report_timeout(job: Job, outcome: Outcome, middleware: Sequence[Middleware]) -> None:
    """The caller's deadline cancelled the handler: tell the middleware, as run_job would."""
    await _tell(job, outcome, TimeoutError(outcome.reason), middleware)


async def _tell(
    job: Job, outcome: Outcome, error: BaseException | None, middleware: Sequence[Middleware]
) -> None:
    """``on_error`` (if it failed) then ``after``, innermost middleware first."""
    verdict = verdict_of(outcome)
    if error is not None:
        for each in reversed(middleware):
            await _hook(each.on_error(job, error, verdict, outcome.reason), each, "on_error")
    for each in reversed(middleware):
        await _hook(each.after(job, verdict, outcome.reason or None), each, "after")


def verdict_of(outcome: Outcome) -> Verdict:
    if isinstance(outcome, DeleteJob):
        return "done"
    if isinstance(outcome, ReleaseJob):
        return "retry"
    if isinstance(outcome, BuryJob):
        return "bury"
    return "return"


async def _hook(call: Awaitable[None], middleware: Middleware, name: str) -> None:
    """Middleware is user code too: what it raises is logged, never a job's verdict."""
    try:
        await call
    except Exception as exc:
        log.error(
            "middleware failed",
            middleware=type(middleware).__name__,
            hook=name,
            error=_describe(exc),
        )


def timeout_outcome(
    job: Job,
    budget: Budget,
    policy: RetrySettings,
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
    exc: BaseException, job: Job, budget: Budget, policy: RetrySettings, rng: random.Random | None
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
    outcome = failure_outcome(
        budget,
        policy,
        priority=job.priority,
        cause=Cause.HANDLER_ERROR,
        detail=_describe(exc),
        rng=rng,
    )
    if isinstance(outcome, BuryJob):  # its burial record keeps where it failed
        return replace(outcome, traceback=_traceback_of(exc))
    return outcome
