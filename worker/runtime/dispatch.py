"""Dispatch, pure: a reserved job and its ``stats-job`` → a plan to run it, or a burial.

No Trio and no I/O here: the lane calls :func:`plan_job` and then starts the plan's handler
or queues the burial. Everything a burial says to the operator is decided here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import field
from typing import Any

import structlog

from tubeworker.beanstalk.protocol import JobStats
from tubeworker.contracts import PayloadInvalid, TooNew
from tubeworker.envelope import BadEnvelope, BatchRef, Envelope, MissingTask, read_envelope
from tubeworker.frozen import frozen
from tubeworker.job import HandlerSpec, Job
from tubeworker.runtime.outcome import BuryJob, Cause, ReleaseJob
from tubeworker.runtime.policy import Budget, RetrySettings, failure_outcome, job_budget
from tubeworker.schedule import HEARTBEAT_BODY_START
from tubeworker.security.keys import KeyRing
from tubeworker.security.secrets import SecretError, open_secret
from tubeworker.security.signing import verify

__all__ = ["DispatchRules", "Plan", "plan_job"]


@frozen
class DispatchRules:
    """What a pool decides jobs by."""

    policy: RetrySettings
    lookup: Callable[[str], HandlerSpec | None]  # the registry: task name → handler
    bound: HandlerSpec | None = None  # every job goes to this handler, body as it is
    bound_name: str | None = None
    # A registered handler that failed to load here: task name → why (else None).
    broken: Callable[[str], str | None] = lambda task: None
    # Signed envelopes ([security]): the keys jobs are checked with, and whether every job
    # of the pool must be signed. A signed job is checked whenever there are keys.
    signing: KeyRing | None = None
    require_signature: bool = False
    # Encryption keys: an envelope's "secret" is opened with them for job.secret.
    encryption: KeyRing | None = None
    # (task, version) pairs newer than their handler here, logged once each.
    newer_seen: set[tuple[str, int]] = field(default_factory=set, hash=False, compare=False)


@frozen
class Plan:
    """A job ready to run: its handler and the retry policy that applies to it."""

    job: Job
    spec: HandlerSpec
    handler: str
    policy: RetrySettings
    budget: Budget
    # Set when the job is not run here: its payload is newer than its handler (why).
    too_new: str | None = None


def plan_job(
    job_id: int,
    body: bytes,
    stats: JobStats,
    rules: DispatchRules,
    *,
    log: structlog.typing.FilteringBoundLogger | None = None,
    excused: int = 0,
) -> Plan | BuryJob | ReleaseJob:
    """What to run, or a burial without running (bad body or signature, poison, out of
    attempts), or a release (its handler failed to load in this worker: another may run
    it, or this one once it is fixed; buried like any failure once its attempts are
    spent)."""
    if rules.signing is not None or rules.require_signature:
        problem = verify(body, rules.signing, required=rules.require_signature)
        if problem is not None:
            return BuryJob(stats.pri, Cause.BAD_SIGNATURE, f"bad signature: {problem}")
    return _plan(job_id, body, stats, rules, log, excused)


def _plan(
    job_id: int,
    body: bytes,
    stats: JobStats,
    rules: DispatchRules,
    log: structlog.typing.FilteringBoundLogger | None,
    excused: int,
) -> Plan | BuryJob | ReleaseJob:
    # A heartbeat goes through a bound pool like its jobs, and runs the built-in handler.
    if rules.bound is not None and not body.startswith(HEARTBEAT_BODY_START):
        spec, handler, envelope, secret = rules.bound, rules.bound_name or "?", _RAW, None
    else:
        read = _read(body, stats, rules, excused)
        if not isinstance(read, tuple):
            return read
        spec, handler, envelope, secret = read
    task, payload, version = envelope.task or None, envelope.payload, envelope.v
    too_new: str | None = None
    if spec.contract is not None or version != 1:
        # A typed bound pool's payload is its body, as JSON.
        given = payload if task is not None else body
        checked = _check_contract(spec, task, given, version, rules, log)
        if isinstance(checked, _Bury):
            return BuryJob(stats.pri, Cause.SCHEMA, checked.detail, batch=envelope.batch)
        payload, too_new = checked
    # The handler's own options (@handler(max_attempts=...)) before any budget is judged.
    policy = rules.policy
    if spec.max_attempts is not None or spec.backoff_base is not None:
        policy = effective_policy(spec, policy)
    # A batch's job is kicked once at put (batches/ops.py add_job): that grants nothing.
    kicked = 1 if envelope.batch is not None else 0
    budget = job_budget(stats, policy, excused=excused, kicked_at_put=kicked)
    if budget.poison or budget.attempts_exhausted:
        return _spent(budget, stats, envelope.batch)
    job = Job(
        id=job_id,
        tube=stats.tube,
        body=body,
        priority=stats.pri,
        ttr=stats.ttr,
        attempt=budget.attempt,
        max_attempts=budget.max_attempts,
        task=task,
        payload=payload,
        log=log,  # bound to the job on first use
        id_key=envelope.id,
        steps=envelope.then,
        secret=secret,
        batch=envelope.batch,
    )
    return Plan(job, spec, handler, policy, budget, too_new)


def _spent(budget: Budget, stats: JobStats, batch: BatchRef | None = None) -> BuryJob:
    """The burial of a job whose budget is spent (poison, or out of attempts)."""
    if budget.poison:
        return BuryJob(
            stats.pri,
            Cause.POISON,
            f"delivered {budget.redeliveries + 1} times without an outcome "
            f"(limit {budget.max_redeliveries}): did it crash or hang the worker?",
            batch=batch,
        )
    return BuryJob(
        stats.pri,
        Cause.ATTEMPTS_EXHAUSTED,
        f"attempt {budget.attempt} exceeds max_attempts {budget.max_attempts}",
        batch=batch,
    )


# What a pool bound to one handler reads of a raw body: no envelope (task None).
_RAW = Envelope("")


def _read(
    body: bytes, stats: JobStats, rules: DispatchRules, excused: int
) -> tuple[HandlerSpec, str, Envelope, Any] | BuryJob | ReleaseJob:
    """An envelope pool's job: its handler, envelope and opened secret; or its burial
    (not an envelope, no handler, a secret that does not open), or a release (its
    handler failed to load here)."""
    try:
        envelope = read_envelope(body)
    except MissingTask as exc:
        return BuryJob(
            stats.pri,
            Cause.NO_TASK,
            f"{exc}: this pool dispatches JSON envelopes by their task; to run raw bodies, "
            'bind the pool to a handler (handler = "NAME" in its [[pool]], or --handler)',
        )
    except BadEnvelope as exc:
        return BuryJob(stats.pri, Cause.BAD_BODY, str(exc))
    task = envelope.task
    secret: Any = None
    if envelope.secret is not None:
        try:
            secret = open_secret(envelope.secret, task, rules.encryption)
        except SecretError as exc:
            return BuryJob(stats.pri, Cause.BAD_SECRET, str(exc), batch=envelope.batch)
    found = rules.lookup(task)
    if found is None:
        error = rules.broken(task)
        if error is not None:
            return _not_loaded(task, error, stats, rules.policy, excused)
        return BuryJob(
            stats.pri,
            Cause.UNKNOWN_TASK,
            f"no handler registered for task {task!r}",
            batch=envelope.batch,
        )
    return found, task, envelope, secret


@frozen
class _Bury:
    detail: str


def _check_contract(
    spec: HandlerSpec,
    task: str | None,
    payload: Any,
    version: int,
    rules: DispatchRules,
    log: structlog.typing.FilteringBoundLogger | None,
) -> tuple[Any, str | None] | _Bury:
    """The payload the handler gets (upcast, validated) and why the job is too new for it
    (None: it is not); or why it is buried. A typed bound pool's payload is its body."""
    contract = spec.contract
    if isinstance(payload, bytes):
        try:
            payload = json.loads(payload)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError too
            return _Bury(f"body is not JSON: {exc}")
    try:
        if contract is None:
            raise TooNew(task, version, 1)
        return contract.accept(payload, version, task=task), None
    except PayloadInvalid as exc:
        return _Bury(str(exc))
    except TooNew as exc:
        seen = (task or "", version)
        if seen not in rules.newer_seen:
            rules.newer_seen.add(seen)
            (log or structlog.get_logger()).warning(
                "newer payload version: left for a newer worker",
                task=task,
                version=version,
                known=exc.known,
            )
        return payload, str(exc)


def _not_loaded(
    task: str, error: str, stats: JobStats, policy: RetrySettings, excused: int
) -> BuryJob | ReleaseJob:
    detail = f"handler {task!r} is registered but failed to load in this worker: {error}"
    budget = job_budget(stats, policy, excused=excused)
    return failure_outcome(
        budget, policy, priority=stats.pri, cause=Cause.HANDLER_BROKEN, detail=detail
    )


def effective_policy(spec: HandlerSpec, policy: RetrySettings) -> RetrySettings:
    """The pool's retry policy with the handler's own options (``@handler``) applied."""
    if spec.max_attempts is None and spec.backoff_base is None:
        return policy
    return RetrySettings(
        spec.max_attempts or policy.max_attempts,
        spec.backoff_base if spec.backoff_base is not None else policy.backoff_base,
        spec.backoff_cap if spec.backoff_cap is not None else policy.backoff_cap,
        policy.redelivery_limit,
    )
