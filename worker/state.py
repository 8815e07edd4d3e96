"""The process's run state, shared by the daemon and its lanes: fetching, quiet, drain.

Lanes wait for replies inside *fetch scopes* and run handlers inside *job scopes*; the
daemon cancels the former to stop reserving at once (the blocked reserve's connection is
closed) and the latter when the drain deadline passes (the job goes back to beanstalkd).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

from worker.observe import JobCounters

__all__ = ["WorkerState"]


class WorkerState:
    def __init__(self, *, max_jobs: int = 0) -> None:
        self.draining = False
        self.quiet = False
        self.drain_reason: str | None = None
        self.counters = JobCounters()
        self.max_jobs = max_jobs
        self._fetch_scopes: set[trio.CancelScope] = set()
        self._job_scopes: set[trio.CancelScope] = set()
        self._changed = trio.Event()  # replaced on every change; lanes wait on it
        self.drain_started = trio.Event()

    @property
    def may_fetch(self) -> bool:
        return not (self.draining or self.quiet)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_may_fetch(self) -> bool:
        """Until fetching is allowed (True) or the worker drains (False)."""
        while True:
            if self.draining:
                return False
            if not self.quiet:
                return True
            await self._changed.wait()

    @contextmanager
    def fetch_scope(self) -> Iterator[trio.CancelScope]:
        """A scope that is cancelled as soon as fetching must stop (drain or quiet)."""
        with trio.CancelScope() as scope:
            if not self.may_fetch:
                scope.cancel()
            self._fetch_scopes.add(scope)
            try:
                yield scope
            finally:
                self._fetch_scopes.discard(scope)

    @contextmanager
    def job_scope(self) -> Iterator[trio.CancelScope]:
        """A scope around a running handler, cancelled when the drain deadline passes."""
        with trio.CancelScope() as scope:
            self._job_scopes.add(scope)
            try:
                yield scope
            finally:
                self._job_scopes.discard(scope)

    def _stop_fetching(self) -> None:
        for scope in list(self._fetch_scopes):
            scope.cancel()

    def begin_drain(self, reason: str) -> None:
        """Stop reserving at once; running jobs go on until ``return_running_jobs``."""
        if self.draining:
            return
        self.draining = True
        self.drain_reason = reason
        self._stop_fetching()
        self.drain_started.set()
        self._notify()

    def return_running_jobs(self) -> None:
        """Cancel every running handler; lanes close their connections (jobs go back)."""
        for scope in list(self._job_scopes):
            scope.cancel()

    def set_quiet(self, quiet: bool) -> None:
        if quiet == self.quiet:
            return
        self.quiet = quiet
        if quiet:
            self._stop_fetching()
        self._notify()

    @property
    def running_jobs(self) -> int:
        return len(self._job_scopes)

    def job_finished(self) -> None:
        if self.max_jobs and self.counters.finished >= self.max_jobs:
            self.begin_drain(f"recycling: max_jobs {self.max_jobs} reached")
