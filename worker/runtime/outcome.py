"""What becomes of a job, decided before the lane tells beanstalkd (or closes the connection).

Each outcome carries a :class:`Cause` (an enum: what kind of thing happened, for counters,
filters and the ``cause`` log field) and a ``detail`` (the human words: the exception, the
limit that was reached). ``reason`` joins the two for the log line.

The words, one per concept: a handler *raises* ``Retry`` or ``Bury`` (requests); the runner
or dispatch *decides* an outcome (these classes); the lane *sends* a command (``delete``,
``release``, ``bury``) or closes the connection; the log then says ``deleted``,
``released``, ``buried`` or ``returned``.
"""

from __future__ import annotations

import enum

from tubeworker.envelope import BatchRef
from tubeworker.frozen import frozen

__all__ = ["DEFERRALS", "BuryJob", "Cause", "DeleteJob", "Outcome", "ReleaseJob", "ReturnJob"]


class Cause(enum.Enum):
    """Why a job ended the way it did. The value is the ``cause`` field of the log line."""

    # deleted
    COMPLETED = "completed"
    DEFERRED = "deferred"  # its API was open or its limit full: a delayed copy waits instead
    NEWER_VERSION = "newer_version"  # its payload version is newer than its handler here
    DUPLICATE = "duplicate"  # the handler raised Duplicate: its work was done already
    # released, or buried when no attempt is left
    HANDLER_ERROR = "handler_error"  # the handler raised an exception
    HANDLER_RETRY = "handler_retry"  # the handler raised Retry
    TIMEOUT = "timeout"  # the handler overran its own deadline
    HANDLER_BROKEN = "handler_broken"  # registered, but failed to load in this worker
    NEXT_STEP = "next_step"  # it succeeded, but its chain's next step could not be put
    # buried without running again
    HANDLER_BURY = "handler_bury"  # the handler raised Bury
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # more failed runs than max_attempts
    POISON = "poison"  # delivered again and again with no outcome: it kills or hangs workers
    BAD_BODY = "bad_body"  # not a JSON envelope this pool can dispatch
    NO_TASK = "no_task"  # valid JSON, but no "task" and no handler bound to the pool
    UNKNOWN_TASK = "unknown_task"  # no handler registered under the envelope's task
    SCHEMA = "schema"  # its payload does not fit the handler's declared type
    BAD_SIGNATURE = "bad_signature"  # unsigned where signatures are required, or forged
    BAD_SECRET = "bad_secret"  # its secret does not open (unknown key, changed, no keys)
    SERVER_BURIED = "server_buried"  # beanstalkd buried a release (out of memory)
    # returned: the connection was closed with the job, beanstalkd has it back
    DRAIN_DEADLINE = "drain_deadline"
    CONNECTION_LOST = "connection_lost"
    NOT_OURS = "not_ours"  # beanstalkd answered NOT_FOUND: its TTR expired, someone else has it
    UNCONFIRMED = "unconfirmed"  # the connection was lost before beanstalkd confirmed
    SERVER_REFUSED = "server_refused"  # beanstalkd answered an error (out of memory, …)
    API_OPEN = "api_open"  # held for an open API when the daemon drained
    WORKER_STOPPED = "worker_stopped"  # its compute worker got the group's stop signal
    LIMITED = "limited"  # waiting for its limit (rate, concurrency) when the daemon drained
    BINLOG_FULL = "binlog_full"  # its burial waited for binlog room when the daemon drained
    # released: it ended, but its batch could not record that (the server did not answer)
    BATCH = "batch"

    # Members are singletons compared by identity: hash them so too. (Enum's own
    # __hash__ is Python code, and every job asks a set or two of causes about its own.)
    __hash__ = object.__hash__


class _Described:
    """``reason``: the words of an outcome (its detail), for the log line."""

    __slots__ = ()
    detail: str

    @property
    def reason(self) -> str:
        return self.detail


@frozen
class DeleteJob(_Described):
    """The handler finished: ``delete``."""

    cause: Cause = Cause.COMPLETED
    detail: str = ""


@frozen
class ReleaseJob(_Described):
    """Try again later: ``release`` at the job's own priority after ``delay`` whole seconds."""

    delay: int
    priority: int
    cause: Cause
    detail: str


@frozen
class BuryJob(_Described):
    """Stop trying: ``bury`` at the job's priority; the reason goes to the log. The
    traceback (bounded) of the error that buried it goes to its burial record only."""

    priority: int
    cause: Cause
    detail: str
    traceback: str = ""
    # Buried before it ran, its place in a batch (known from its envelope): the burial is
    # recorded there first. A burial after a run reads it from the run's job.
    batch: BatchRef | None = None


@frozen
class ReturnJob(_Described):
    """No outcome from us (drain deadline, lost connection): close the connection.

    beanstalkd puts the job back to ready at once with its priority; the delivery counts
    toward the redelivery limit, not toward max_attempts.
    """

    cause: Cause
    detail: str


Outcome = DeleteJob | ReleaseJob | BuryJob | ReturnJob

#: Deletions whose job waits as a delayed copy (no attempt counted): "job deferred".
DEFERRALS = frozenset({Cause.DEFERRED, Cause.NEWER_VERSION})
