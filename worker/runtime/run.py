"""One job while its handler runs: :class:`Run`, its deadline and its touch schedule.

Our own deadline is the handler's timeout, never later than the job's TTR minus
``ttr_margin`` (docs/beanstalkd.md#ttr-rules: beanstalkd's own expiry cannot be relied
on), unless the handler is long-running, when the job is touched instead. A run that
waits (for its API, its limit, or binlog room) is *held*: touched, no deadline running.
"""

from __future__ import annotations

import math

import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.config import LimitConfig
from tubeworker.flow import Permit
from tubeworker.flow.limits import Lease
from tubeworker.flow.tokens import TokenBroker
from tubeworker.flow.unique import UniqueLock, UniqueLocks
from tubeworker.job import HandlerSpec
from tubeworker.runtime.dispatch import Plan
from tubeworker.runtime.outcome import Cause, ReturnJob
from tubeworker.runtime.slots import Slot

__all__ = ["Run", "handler_timeout", "touch_interval", "ttr_allowance"]


def handler_timeout(
    spec: HandlerSpec, pool_timeout: float | None, ttr: int, margin: float
) -> float | None:
    """Our own deadline: never past TTR - margin, unless the handler is touched (long-running)."""
    wanted = spec.timeout or pool_timeout
    if spec.long_running:
        return wanted  # None: no limit; the job is touched while it runs
    limit = ttr_allowance(ttr, margin)
    return limit if wanted is None else min(wanted, limit)


def ttr_allowance(ttr: int, margin: float) -> float:
    """How long after a reserve or touch a job may run: TTR - margin (with a tiny TTR the
    margin would eat it all, so at least half of it)."""
    return max(ttr - margin, ttr / 2)


def touch_interval(ttr: int, margin: float) -> float:
    """Touch well inside the TTR: every half TTR, and at least ``margin`` before it expires."""
    return max(0.25, min(ttr / 2, ttr - margin))


class Run:
    """A reserved job whose handler runs (or waits to run) on its lane's connection."""

    __slots__ = (
        "apis",
        "cancelled",
        "deadline",
        "holding",
        "lease",
        "limit",
        "limit_keys",
        "limits",
        "lost",
        "margin",
        "next_touch",
        "permit",
        "plan",
        "returned",
        "scope",
        "slot",
        "started",
        "stats",
        "timeout",
        "tokens",
        "touch_once",
        "touched_at",
        "unique",
    )

    def __init__(
        self,
        plan: Plan,
        stats: p.JobStats,
        slot: Slot,
        started: float,
        timeout: float | None,
        margin: float,
        now: float | None = None,
    ) -> None:
        """``now``: Trio's clock at reserve (read once per batch by the lane), else read."""
        self.plan = plan
        self.stats = stats
        self.slot = slot  # the process-wide in-flight slot it holds
        self.started = started  # time.monotonic() at reserve, for the log line
        self.timeout = timeout
        self.margin = margin  # ttr_margin
        if now is None:
            now = trio.current_time()
        # Its own deadline; on its cancel scope once it waits (runtime/in_turn.py: a run
        # that never waits has none), set through _set_deadline.
        self.deadline = now + timeout if timeout is not None else math.inf
        self.scope: trio.CancelScope | None = None
        self.cancelled = False  # given back: its scope cancels it at its first wait
        self.returned: ReturnJob | None = None  # handed back to beanstalkd with no outcome
        self.lost = False  # the connection is gone: no outcome can be sent for it
        self.next_touch = math.inf
        self.limit = math.inf  # the handler's own timeout (absolute); touches never pass it
        self.apis: frozenset[str] = frozenset()  # the APIs it needs (flow control)
        self.permit: Permit | None = None  # admitted by the tracker (a probe, maybe)
        self.limits: tuple[LimitConfig, ...] = ()  # the limits it runs under
        self.limit_keys: dict[str, str] = {}  # limit name → its key's value for this job
        self.lease: Lease | None = None  # admitted by the local limits
        self.tokens: list[tuple[TokenBroker, int]] = []  # fleet tokens held while it runs
        self.unique: tuple[UniqueLocks, UniqueLock] | None = None  # its key's lock, held
        # Waiting for its APIs, limits or binlog room: touched, its own deadline not running.
        self.holding = False
        self.touched_at = now  # the TTR's last restart: reserve or touch
        self.touch_once = False  # touched once more when it leaves the API wait

    # ---- its clock

    def _set_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        if self.scope is not None:
            self.scope.deadline = deadline

    def scope_taken(self, scope: trio.CancelScope) -> None:
        """It waits: ``scope``, around its body, is its own from now on (runtime/in_turn.py):
        its deadline, and the cancellation asked for before, go on it."""
        if scope.deadline != self.deadline:  # made with the deadline of the run before
            scope.deadline = self.deadline
        if self.cancelled:
            scope.cancel()
        self.scope = scope

    def hold(self, *, touch_now: bool = False) -> None:
        """Wait, touched (at once with ``touch_now``, then every half TTR), no deadline."""
        self.holding = True
        self._set_deadline(math.inf)
        if touch_now:
            self.next_touch, self.touch_once = trio.current_time(), False
        elif self.next_touch == math.inf:
            self.next_touch = self.touched_at + touch_interval(self.stats.ttr, self.margin)

    def arm(self, now: float, pool_timeout: float | None, *, held: bool) -> None:
        """The handler starts now: its own timeout, and the touch schedule it needs
        (``held``: it waited, its TTR running since its last touch)."""
        spec = self.plan.spec
        wanted = spec.timeout or pool_timeout
        self.holding = False
        self.limit = now + wanted if wanted else math.inf
        if spec.long_running:
            self._set_deadline(now + self.timeout if self.timeout is not None else math.inf)
            self.next_touch = now + touch_interval(self.stats.ttr, self.margin)
        elif held:  # touch once more so that it gets its whole TTR
            self._set_deadline(
                min(self.limit, self.touched_at + ttr_allowance(self.stats.ttr, self.margin))
            )
            self.next_touch, self.touch_once = now, True
        else:
            self._set_deadline(now + self.timeout if self.timeout is not None else math.inf)
            self.next_touch = math.inf

    def touch_due(self, now: float) -> bool:
        """Whether a touch is due now (and schedule the next one if so)."""
        if self.next_touch > now:
            return False
        if self.touch_once:  # the one touch after a wait: no schedule after it
            self.next_touch, self.touch_once = math.inf, False
        else:
            self.next_touch = now + touch_interval(self.stats.ttr, self.margin)
        return True

    def touched(self, now: float) -> None:
        """beanstalkd confirmed a touch: the TTR starts again, and so does the part of our
        deadline that guards it (a held run has none running)."""
        self.touched_at = now
        if not self.holding and not self.plan.spec.long_running:
            allowance = ttr_allowance(self.stats.ttr, self.margin)
            self._set_deadline(min(self.limit, now + allowance))

    # ---- its end

    def release_admission(self) -> None:
        """Give back the probe slots, concurrency and tokens it holds (exactly once each)."""
        if self.permit is not None:
            self.permit.release()
            self.permit = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        while self.tokens:
            broker, token = self.tokens.pop()
            broker.give_back(token)
        if self.unique is not None:
            locks, lock = self.unique
            self.unique = None
            locks.release(lock)

    def give_back(self, cause: Cause, detail: str, *, lost: bool = False) -> None:
        """Cancel the handler; the job goes back to beanstalkd when the connection closes."""
        if self.returned is None:
            self.returned = ReturnJob(cause, detail)
        self.lost = self.lost or lost
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()
