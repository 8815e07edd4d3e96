"""What the runner decides for a job, and the lane then tells beanstalkd (or not)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BuryJob", "DeleteJob", "Outcome", "ReleaseJob", "ReturnJob"]


@dataclass(frozen=True, slots=True)
class DeleteJob:
    """The handler finished: ``delete``."""

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ReleaseJob:
    """Try again later: ``release`` at the job's own priority after ``delay`` whole seconds."""

    delay: int
    priority: int
    reason: str


@dataclass(frozen=True, slots=True)
class BuryJob:
    """Stop trying: ``bury`` at the job's priority; ``reason`` goes to the log."""

    priority: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReturnJob:
    """No outcome from us (drain deadline, lost connection): close the connection.

    beanstalkd puts the job back to ready at once with its priority; the delivery counts
    toward the redelivery limit, not toward max_attempts.
    """

    reason: str


Outcome = DeleteJob | ReleaseJob | BuryJob | ReturnJob
