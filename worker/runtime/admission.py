"""Admission: whether a reserved job may run now, or must wait (held: touched, no attempt
burned) or be deferred (a delayed copy), for flow control's breakers and limits.

One :class:`Admission` per pool, built from the process's API tracker, its limits and its
fleet tokens (``tubeworker.flow``), and the daemon's drain state. A lane's runs ask it:

- :meth:`Admission.try_now` when a job arrives: admitted at once (the common case, and
  free for a job that needs no API and no limit), or it must wait;
- :meth:`Admission.admit` for a job that waits: for its APIs (as a probe when one is
  half-open), then its local limits, then its fleet tokens; a job that would wait long
  while the pool has other work is deferred instead (an outcome), and a drain hands it
  back (its run's scope is cancelled);
- :meth:`Admission.failed_with_its_api` after a run that failed: if an API it needs is
  open (or opens within the settle window) the failure was the API's, and the job waits
  for another run instead of being released, so an outage burns no attempt.

A deferral is a delayed copy put first and the original then deleted (a crash in between
duplicates, never loses); the lane puts the copy (``defer``), on its job's server first.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping

import greenstalk
import structlog
import trio
import trio.lowlevel

from tubeworker.errors import ConnectionLostError
from tubeworker.flow import ApiTracker, Permit
from tubeworker.flow.limits import Lease, Limits
from tubeworker.flow.tokens import TokenGroup
from tubeworker.observe.counters import JobCounters
from tubeworker.runtime.outcome import BuryJob, Cause, DeleteJob, Outcome, ReleaseJob
from tubeworker.runtime.run import Run

__all__ = ["HELD_POLL", "Admission", "Defer", "wait_for_apis"]

# A held job looks at its APIs at least this often (and at once when their cool-down
# ends); it also notices a drain this fast.
HELD_POLL = 1.0

# A run that failed while its API's calls are failing waits this long at most for the
# breaker to tell an outage (held, no attempt) from the job's own failure (released); it
# looks every _SETTLE_POLL seconds.
_SETTLE = 10.0
_SETTLE_POLL = 0.1

# A job waiting for a full concurrency limit looks again at least this often.
_LIMIT_POLL = 1.0

# Outcomes that say the handler's call failed (an API's fault, if that API is now open).
_FAILURES = frozenset({Cause.HANDLER_ERROR, Cause.HANDLER_RETRY, Cause.TIMEOUT})

#: Put a delayed copy of a run's job (``delay`` seconds): returns the copy's id.
Defer = Callable[[Run, int], Awaitable[int]]


async def wait_for_apis(
    apis: frozenset[str],
    tracker: ApiTracker,
    *,
    draining: Callable[[], bool],
    log: structlog.typing.FilteringBoundLogger,
) -> Permit | None:
    """Until the tracker admits a job needing ``apis`` (its permit), or the daemon drains
    (None: hand the job back)."""
    told = False
    while True:
        permit = tracker.try_admit(apis)
        if permit is not None:
            if told:
                log.info("job admitted", apis=sorted(apis), probe=list(permit.probes))
            return permit
        if draining():
            return None
        now = trio.current_time()
        until = tracker.blocked_until(apis)
        if not told:
            told = True
            log.info(
                "job waits: its API is open",
                apis=sorted(apis),
                next_probe_in=round(max(0.0, (until or now) - now), 1),
            )
        await trio.sleep_until(min(until if until is not None else now, now + HELD_POLL))
        await trio.lowlevel.checkpoint()


class Admission:
    """Flow control's say over a pool's jobs (see the module docstring)."""

    def __init__(
        self,
        *,
        tracker: ApiTracker,
        limits: Limits,
        tokens: Mapping[str, tuple[TokenGroup, ...]],
        counters: JobCounters,
        draining: Callable[[], bool],
        other_work: Callable[[], bool] = lambda: False,
        limits_changed: Callable[[], Awaitable[None]] | None = None,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._tracker = tracker
        self._limits = limits
        self._tokens = tokens
        self._counters = counters
        self._draining = draining
        self._other_work = other_work
        self._limits_changed = limits_changed
        self._log = log or structlog.get_logger("tubeworker")

    # ---- when a job arrives

    def try_now(self, run: Run) -> bool:
        """Admit ``run`` (its ``apis``, ``limits`` and ``limit_keys`` set) without waiting
        if its APIs and local limits let it; False: it must wait (:meth:`admit`). Fleet
        limits always wait: their tokens are in beanstalkd."""
        if run.apis:
            run.permit = self._tracker.try_admit(run.apis)
            if run.permit is None:
                self._counters.api_waits += 1
                return False
        if run.limits:
            if any(limit.fleet for limit in run.limits):
                return False
            got = self._limits.try_acquire(run.limits, run.limit_keys)
            if not isinstance(got, Lease):
                return False
            run.lease = got
        return True

    # ---- a job that waits

    async def admit(self, run: Run, defer: Defer | None) -> Outcome | None:
        """Wait for the run's APIs, then its limits (None: admitted); or defer it (a
        deletion of the original). A drain hands it back: its scope is cancelled here."""
        if run.apis and run.permit is None:
            outcome = await self._defer_or_hold(run, defer)
            if outcome is not None:
                return outcome
        if run.limits:
            return await self._wait_for_limits(run, defer)
        return None

    async def _defer_or_hold(self, run: Run, defer: Defer | None) -> Outcome | None:
        """A job whose APIs are open: deferred (a delayed copy, so that its slot serves the
        pool's other tubes) when the pool has other work, else held until admitted."""
        until = self._tracker.blocked_until(run.apis)
        if until is not None and defer is not None and self._other_work():
            delay = max(1, math.ceil(until - trio.current_time()))
            apis = ", ".join(sorted(run.apis))
            outcome = await self._defer_copy(run, defer, delay, f"its API is open ({apis})")
            if outcome is not None:
                return outcome
        run.permit = await wait_for_apis(
            run.apis, self._tracker, draining=self._draining, log=self._log
        )
        if run.permit is None:
            run.give_back(Cause.API_OPEN, "draining while its API was open")
            await trio.lowlevel.checkpoint()  # the cancelled scope ends the run here
        return None

    async def _defer_copy(
        self, run: Run, defer: Defer | None, delay: int, why: str
    ) -> Outcome | None:
        """Put a delayed copy of the job (the original is then deleted): no attempt is
        counted. None if the copy could not be put (the job waits instead)."""
        if defer is None:
            return None
        try:
            copy = await defer(run, delay)
        except (ConnectionLostError, greenstalk.Error) as exc:
            self._log.warning(
                "cannot defer job: holding it", job_id=run.plan.job.id, error=str(exc)
            )
            return None
        return DeleteJob(Cause.DEFERRED, f"{why}: waits as job {copy} for {delay} s")

    async def _wait_for_limits(self, run: Run, defer: Defer | None) -> Outcome | None:
        """Wait for room under the run's limits, local then fleet-wide; a run that would
        wait longer than the limits' ``defer_after`` is deferred instead (an outcome)."""
        patience = min(limit.defer_after for limit in run.limits)
        deadline = trio.current_time() + patience
        waiting = _Patience(
            run, self._draining, lambda: self._defer_for_limits(run, defer, patience), deadline
        )
        if run.lease is None and not all(limit.fleet for limit in run.limits):
            expected = self._limits.expected_wait(run.limits, run.limit_keys)
            if patience and expected is not None and expected > patience:
                outcome = await self._defer_for_limits(run, defer, expected)
                if outcome is not None:
                    return outcome
                waiting.deadline = math.inf  # could not defer: wait as long as it takes
            outcome = await self._wait_for_local(run, waiting)
            if outcome is not None:
                return outcome
        for limit in run.limits:
            for group in self._tokens.get(limit.name, ()) if limit.fleet else ():
                outcome = await self._wait_for_token(run, group, waiting)
                if outcome is not None:
                    return outcome
        return None

    async def _wait_for_local(self, run: Run, waiting: _Patience) -> Outcome | None:
        limits = self._limits
        limits.queue(run.limits, run.limit_keys, +1)
        try:
            while True:
                got = limits.try_acquire(run.limits, run.limit_keys)
                if isinstance(got, Lease):
                    run.lease = got
                    return None
                outcome = await waiting.still()
                if outcome is not None:
                    return outcome
                now = trio.current_time()
                wake = now + (_LIMIT_POLL if got.seconds is None else got.seconds)
                with trio.move_on_at(min(waiting.deadline, wake, now + _LIMIT_POLL)):
                    if got.seconds is None and self._limits_changed is not None:
                        await self._limits_changed()  # a running job of the limit ended
                    else:
                        await trio.sleep_forever()
        finally:
            limits.queue(run.limits, run.limit_keys, -1)

    async def _wait_for_token(
        self, run: Run, group: TokenGroup, waiting: _Patience
    ) -> Outcome | None:
        ticket = group.ticket()  # kept while it waits: first come, first served
        try:
            while not ticket.event.is_set():
                outcome = await waiting.still()
                if outcome is not None:
                    return outcome
                with trio.move_on_at(min(waiting.deadline, trio.current_time() + _LIMIT_POLL)):
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

    async def _defer_for_limits(
        self, run: Run, defer: Defer | None, expected: float
    ) -> Outcome | None:
        names = ", ".join(limit.name for limit in run.limits)
        for limit in run.limits:
            self._limits.count_deferral(limit.name)
        delay = max(1, math.ceil(expected))
        return await self._defer_copy(run, defer, delay, f"its limit is full ({names})")

    # ---- after a run that failed

    async def failed_with_its_api(self, run: Run, outcome: Outcome) -> bool:
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
        run.hold(touch_now=True)
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
        run.hold()
        give_up = trio.current_time() + _SETTLE
        while trio.current_time() < give_up:
            await trio.sleep(_SETTLE_POLL)
            if tracker.blocked(run.apis):
                return True
            if not tracker.failing(run.apis) or self._draining():
                return False
        return False


class _Patience:
    """How long a job waiting for its limits may still wait before it is deferred."""

    __slots__ = ("deadline", "defer", "draining", "run")

    def __init__(
        self,
        run: Run,
        draining: Callable[[], bool],
        defer: Callable[[], Awaitable[Outcome | None]],
        deadline: float,
    ) -> None:
        self.run = run
        self.draining = draining
        self.defer = defer
        self.deadline = deadline

    async def still(self) -> Outcome | None:
        """Between two looks at a limit: the job goes back if the daemon drains, and is
        deferred once its patience is out (an outcome); once a deferral failed it waits as
        long as it takes."""
        if self.draining():
            self.run.give_back(Cause.LIMITED, "draining while it waited for its limit")
            await trio.lowlevel.checkpoint()  # the cancelled scope ends the run here
        if trio.current_time() < self.deadline:
            return None
        self.deadline = math.inf
        return await self.defer()
