"""Limits on how fast and how many jobs may call something at once: per API, per tube, per
handler, and per key taken from the job (a customer id, say).

A :class:`~tubeworker.config.LimitConfig` (``[[limit]]``, or ``rate``/``burst``/
``max_concurrent`` in ``[api.NAME]``) names the jobs it applies to (tubes, handlers, APIs: every one
given must match) and caps them with a rate (a token bucket: ``rate`` per second, up to
``burst`` at once after a quiet spell) and/or ``max_concurrent`` jobs running at once.
With ``key``, each value of that payload field gets limits of its own.

A job counts once per limit that applies to it, when it is admitted (before its handler
runs): a handler that makes several calls per job should state the rate in jobs.

Everything here is synchronous and pure (an injected clock); the runtime asks::

    outcome = limits.try_acquire(applied, key_values)   # a Lease, or how long to wait
    if isinstance(outcome, Lease):
        with outcome:                 # gives concurrency back, exactly once
            ...run the job...
    else:
        ...wait ``outcome.seconds`` (None: until a running job ends) or defer the job...

Limits with ``fleet`` set are not enforced here: the runtime takes a token from beanstalkd
for them (``tubeworker.flow.tokens``), so that every worker on the server shares them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from tubeworker.config import LimitConfig

__all__ = [
    "Lease",
    "LimitStatistics",
    "Limits",
    "TokenBucket",
    "Wait",
    "key_of",
]

# Per-key state kept for at most this many keys per limit; idle ones are forgotten first.
MAX_KEYS = 100_000


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved; starts full."""

    __slots__ = ("_clock", "_stamp", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, capacity: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = float(capacity)
        self._stamp = clock()

    def _refill(self) -> float:
        now = self._clock()
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        return now

    def wait(self) -> float:
        """Seconds until a token is there (0: now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        """Spend one token (only after ``wait()`` said 0)."""
        self._refill()
        self._tokens -= 1

    @property
    def full(self) -> bool:
        self._refill()
        return self._tokens >= self.capacity


class _Slot:
    """One limit's state for one key: its bucket, the jobs it lets run now, and the jobs
    waiting for it."""

    __slots__ = ("bucket", "running", "waiting")

    def __init__(self, settings: LimitConfig, clock: Callable[[], float]) -> None:
        rate = settings.rate
        self.bucket = None if rate is None else TokenBucket(rate, settings.bucket_size, clock)
        self.running = 0
        self.waiting = 0

    def wait(self, settings: LimitConfig) -> float | None:
        """0 if a job may start now, else seconds to wait (None: until one ends)."""
        if settings.max_concurrent is not None and self.running >= settings.max_concurrent:
            return None
        return 0.0 if self.bucket is None else self.bucket.wait()

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.waiting == 0 and (self.bucket is None or self.bucket.full)


@dataclass(frozen=True, slots=True)
class Wait:
    """Not admitted: wait ``seconds`` (None: until a running job of the limit ends)."""

    limit: str
    seconds: float | None


class Lease:
    """Admission under some limits: the concurrency it holds, given back exactly once."""

    __slots__ = ("_held", "_on_release", "_slots", "limits")

    def __init__(
        self,
        limits: tuple[str, ...],
        slots: tuple[_Slot, ...],
        on_release: Callable[[], None] | None = None,
    ) -> None:
        self.limits = limits
        self._slots = slots
        self._on_release = on_release
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            for slot in self._slots:
                slot.running -= 1
            if self._on_release is not None and self._slots:
                self._on_release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


@dataclass(frozen=True, slots=True)
class LimitStatistics:
    name: str
    rate: float | None
    max_concurrent: int | None
    fleet: bool
    keys: int  # keys with state now (1 for a limit without a key)
    running: int  # jobs running under it now (in this process)
    waiting: int  # jobs waiting for it now (in this process)
    admitted: int
    waits: int  # admissions that had to wait
    deferred: int


class Limits:
    """Every configured limit of a process, with its per-key state."""

    def __init__(self, limits: Iterable[LimitConfig], *, clock: Callable[[], float]) -> None:
        self.settings: tuple[LimitConfig, ...] = tuple(limits)
        names = [limit.name for limit in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"limit names must be unique: {names}")
        self._clock = clock
        self._slots: dict[str, OrderedDict[str, _Slot]] = {n: OrderedDict() for n in names}
        self._counts: dict[str, list[int]] = {n: [0, 0, 0] for n in names}
        self._applied: dict[tuple[str, str | None, frozenset[str]], tuple[LimitConfig, ...]]
        self._applied = {}
        #: called whenever a lease gives concurrency back (the runtime wakes waiters).
        self.on_release: Callable[[], None] | None = None

    def __bool__(self) -> bool:
        return bool(self.settings)

    def applied(
        self, tube: str, handler: str | None, apis: frozenset[str]
    ) -> tuple[LimitConfig, ...]:
        """The limits a job of ``tube`` run by ``handler`` needing ``apis`` is under."""
        key = (tube, handler, apis)
        found = self._applied.get(key)
        if found is None:
            found = tuple(s for s in self.settings if s.applies(tube, handler, apis))
            if len(self._applied) < 10_000:  # bounded: tubes and handlers are few
                self._applied[key] = found
        return found

    def try_acquire(
        self, limits: Sequence[LimitConfig], keys: Mapping[str, str] | None = None
    ) -> Lease | Wait:
        """Admit a job under every local (not fleet) limit of ``limits`` at once, or say
        how long the longest of them asks it to wait. ``keys``: limit name → key value."""
        slots: list[_Slot] = []
        worst: Wait | None = None
        for settings in limits:
            if settings.fleet:
                continue
            slot = self._slot(settings, (keys or {}).get(settings.name, ""))
            seconds = slot.wait(settings)
            if seconds != 0.0 and _longer(seconds, worst):
                worst = Wait(settings.name, seconds)
            slots.append(slot)
        local = tuple(s.name for s in limits if not s.fleet)
        if worst is not None:
            return worst
        for slot in slots:
            if slot.bucket is not None:
                slot.bucket.take()
            slot.running += 1
        for name in local:
            self._counts[name][0] += 1
        return Lease(local, tuple(slots), self.on_release)

    def queue(
        self, limits: Sequence[LimitConfig], keys: Mapping[str, str] | None, delta: int
    ) -> None:
        """A job starts (+1) or stops (-1) waiting for the local limits of ``limits``."""
        for settings in limits:
            if not settings.fleet:
                self._slot(settings, (keys or {}).get(settings.name, "")).waiting += delta
                if delta > 0:
                    self._counts[settings.name][1] += 1

    def expected_wait(
        self, limits: Sequence[LimitConfig], keys: Mapping[str, str] | None = None
    ) -> float | None:
        """How long a job that starts waiting now would wait, if each limit's tokens went
        to the jobs waiting before it first (None: until running jobs end, unknown)."""
        worst = 0.0
        for settings in limits:
            if settings.fleet:
                continue
            slot = self._slot(settings, (keys or {}).get(settings.name, ""))
            seconds = slot.wait(settings)
            if seconds is None:
                return None
            if settings.rate is not None:
                seconds += slot.waiting / settings.rate
            worst = max(worst, seconds)
        return worst

    def count_deferral(self, limit: str) -> None:
        self._counts[limit][2] += 1

    def statistics(self) -> tuple[LimitStatistics, ...]:
        out = []
        for settings in self.settings:
            slots = self._slots[settings.name]
            admitted, waits, deferred = self._counts[settings.name]
            out.append(
                LimitStatistics(
                    name=settings.name,
                    rate=settings.rate,
                    max_concurrent=settings.max_concurrent,
                    fleet=settings.fleet,
                    keys=len(slots),
                    running=sum(slot.running for slot in slots.values()),
                    waiting=sum(slot.waiting for slot in slots.values()),
                    admitted=admitted,
                    waits=waits,
                    deferred=deferred,
                )
            )
        return tuple(out)

    def _slot(self, settings: LimitConfig, key: str) -> _Slot:
        slots = self._slots[settings.name]
        slot = slots.get(key)
        if slot is None:
            if len(slots) >= MAX_KEYS:
                self._forget_idle(slots)
            slot = slots[key] = _Slot(settings, self._clock)
        elif settings.key is not None:
            slots.move_to_end(key)
        return slot

    @staticmethod
    def _forget_idle(slots: OrderedDict[str, _Slot]) -> None:
        """Drop the least recently used idle keys (their state is the same as a new key's)."""
        for key in [k for k, slot in slots.items() if slot.idle][: max(1, len(slots) // 10)]:
            del slots[key]


def _longer(seconds: float | None, than: Wait | None) -> bool:
    """None (until a job ends) is longer than any number of seconds."""
    if than is None:
        return True
    return than.seconds is not None and (seconds is None or seconds > than.seconds)


def key_of(payload: Any, field: str) -> str:
    """The value of ``field`` (dots for nesting) in a job's payload, as the limit's key;
    "" when the payload has no such field (such jobs share one key)."""
    value = payload
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return ""
        value = value[part]
    if isinstance(value, str):
        return value
    return "" if value is None else str(value)
