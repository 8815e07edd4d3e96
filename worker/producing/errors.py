"""What putting a job can raise (the tree is in :mod:`tubeworker.producer`'s docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import greenstalk

from tubeworker.errors import ConnectionLostError, LocalProtocolError, TubeworkerError

__all__ = [
    "InvalidJob",
    "JobBuried",
    "JobTooBig",
    "NoServerAvailable",
    "PayloadInvalid",
    "ProducerError",
    "ServerDraining",
    "ServerFailure",
    "ServerOutOfMemory",
    "ServerUnreachable",
    "SpoolFull",
]


class ProducerError(TubeworkerError, greenstalk.Error):
    """Base class of what putting a job can raise."""


class InvalidJob(ProducerError, LocalProtocolError):
    """The job is not valid: nothing was sent. Also a ``ValueError``."""


class JobTooBig(InvalidJob, greenstalk.JobTooBigError):
    """The body is over max-job-size (``size`` and ``limit`` in bytes; ``server`` when it
    was that server's limit). Nothing was stored."""

    def __init__(
        self, message: str, size: int, limit: int | None = None, server: str | None = None
    ) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
        self.server = server

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.size, self.limit, self.server))


class PayloadInvalid(InvalidJob):
    """The payload does not fit its task's declared type (``@handler(payload=...)`` or
    ``producer.register``), or cannot be brought up to its version: nothing was sent (at
    put), or the job is buried, cause ``schema`` (at run). ``problems``: one
    ``path: why`` per failing field, e.g. ``payload.user_id: input should be a valid
    integer``."""

    def __init__(self, message: str, task: str | None = None, problems: tuple[str, ...] = ()):
        super().__init__(message)
        self.task = task
        self.problems = problems

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.task, self.problems))


@dataclass(frozen=True, slots=True)
class ServerFailure:
    """Why one server did not store a job; ``kind`` is the error class that says it."""

    server: str
    kind: type[NoServerAvailable]
    reason: str

    def __str__(self) -> str:
        return f"{self.server} {self.reason}"


class NoServerAvailable(ProducerError):
    """No server stored the job; ``failures`` has each server's reason, in the order tried.
    Try again later (the job was not stored, unless a connection broke mid-put)."""

    def __init__(self, message: str, failures: tuple[ServerFailure, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.failures))


class ServerUnreachable(NoServerAvailable, ConnectionLostError):
    """No server could be reached (connect failed, or the connection was lost)."""


class ServerDraining(NoServerAvailable, greenstalk.DrainingError):
    """Every server tried is in drain mode: it takes no new jobs until it is restarted."""


class ServerOutOfMemory(NoServerAvailable, greenstalk.OutOfMemoryError):
    """Every server tried answered OUT_OF_MEMORY: it cannot store jobs now (its binlog
    cannot reserve space, or memory ran out)."""


class JobBuried(ProducerError, greenstalk.BuriedError):
    """The server answered ``BURIED <id>``: out of memory growing its queue, it stored the
    job but buried it. ``id`` is the job's id on ``server``; it runs only once kicked."""

    def __init__(self, message: str, job_id: int | None, server: str) -> None:
        Exception.__init__(self, message)  # not greenstalk's: it parses reply words
        self.id = job_id
        self.server = server

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.id, self.server))


class SpoolFull(ProducerError):
    """No server stored the job and the producer's spool has no room left for it: nothing
    was stored anywhere (``path``: the spool)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.path))
