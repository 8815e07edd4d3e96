"""Shared failure tracking per external API: one circuit breaker per API, in one registry.

Handler code reports calls through :meth:`ApiTracker.call` (a context manager, ``with`` or
``async with``) or, for HTTP, automatically through ``tubeworker.flow.http``'s
``TrackingTransport``. A request belongs to the API whose ``hosts`` match its host name
(exactly, or ``*.suffix`` for any subdomain of ``suffix``, the longest suffix winning);
else, made by a handler that declares APIs (``@handler(apis=[...])``), to the one of them
that has no ``hosts`` of its own when there is exactly one (so a declaration alone is
enough: ``apis=["mailer"]`` and ``job.http.post("https://mailer.example/...")`` count for
"mailer"); else to an API named after the host itself, whose breaker uses the default
settings. The handler making a call is the :data:`CALLER` of the task (set by the runner
around a handler that declares APIs). What cannot be attributed for sure is said once per
case through ``warn``: a handler with several candidate APIs, one host counted for two
APIs, a handler reporting an API it does not declare.

The dispatcher asks before running a job that needs some APIs::

    permit = tracker.try_admit(job_apis)      # None: some API is open (or out of probes)
    if permit is None:
        defer_until = tracker.blocked_until(job_apis)
    else:
        with permit:                          # gives the probe slots back, exactly once
            ...run the job...                 # as a probe for every HALF_OPEN API it needs

Listeners (:meth:`ApiTracker.add_listener`) receive every :class:`Transition`
synchronously, inside whichever call caused it (often a handler's HTTP request): they must
be cheap and must not raise, since an exception would surface in that caller. Log, count,
or hand the record to a channel with ``send_nowait``.

Everything here is synchronous and nothing sleeps. It is not thread-safe: use it from the
Trio thread only (code in a worker thread or process reports through that thread). Names of
APIs met only through their host names are kept for the life of the tracker: one small
breaker per distinct host a process calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from tubeworker.flow.breaker import (
    BreakerSettings,
    BreakerState,
    BreakerStatistics,
    CallOutcome,
    CircuitBreaker,
    ProbeSlot,
    Transition,
)

__all__ = [
    "CALLER",
    "ApiSettings",
    "ApiTracker",
    "Caller",
    "Permit",
    "TrackedCall",
    "TrackerStatistics",
    "call_api",
]


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """One declared API: the host names that belong to it and its breaker's thresholds.

    A host is a name (``api.stripe.com``, matched exactly, case-insensitively) or
    ``*.suffix`` (``*.stripe.com``: any subdomain, not ``stripe.com`` itself; list both
    for both).
    """

    hosts: tuple[str, ...] = ()
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.hosts, tuple):  # a bare string would match its letters
            raise TypeError(f"hosts must be a tuple of host names, got {self.hosts!r}")
        for pattern in self.hosts:
            _check_host_pattern(pattern)


@dataclass(frozen=True, slots=True)
class Caller:
    """The handler a call is made for, and the APIs it declares."""

    handler: str
    apis: tuple[str, ...]


#: The handler whose code is running in this task, when it declares APIs (set by the runner).
CALLER: ContextVar[Caller | None] = ContextVar("tubeworker_api_caller", default=None)

_MAX_WARNINGS = 1000  # distinct cases said at most once each; past this, no more

#: ``warn(event, fields)``: one line for an attribution a user should know about.
Warn = Callable[[str, Mapping[str, object]], None]


def _quiet(event: str, fields: Mapping[str, object]) -> None:
    pass


@dataclass(frozen=True, slots=True)
class TrackerStatistics:
    """Every known API's breaker statistics, sorted by API name."""

    apis: tuple[BreakerStatistics, ...]

    def of(self, api: str) -> BreakerStatistics | None:
        return next((stats for stats in self.apis if stats.api == api), None)


def _normalize_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _check_host_pattern(pattern: str) -> None:
    name = pattern.removeprefix("*.")
    malformed = "*" in name or "/" in name or any(char.isspace() for char in name)
    if not name or name != _normalize_host(name) or malformed:
        raise ValueError(
            f"host {pattern!r} must be a lower-case host name or '*.' and one (no scheme, "
            "path, trailing dot or other wildcard)"
        )


class _HostIndex:
    """Host name → API name: exact names first, then the longest matching ``*.suffix``."""

    def __init__(self, apis: Mapping[str, ApiSettings]) -> None:
        self._exact: dict[str, str] = {}
        self._suffixes: dict[str, str] = {}
        for api, settings in apis.items():
            for pattern in settings.hosts:
                wildcard = pattern.startswith("*.")
                table = self._suffixes if wildcard else self._exact
                key = pattern.removeprefix("*.")
                owner = table.setdefault(key, api)
                if owner != api:
                    raise ValueError(f"host {pattern!r} belongs to both {owner!r} and {api!r}")

    def lookup(self, host: str) -> str | None:
        if host in self._exact:
            return self._exact[host]
        labels = host.split(".")
        # Longest suffix first: "a.b.example.com" tries "b.example.com", then "example.com".
        for start in range(1, len(labels)):
            api = self._suffixes.get(".".join(labels[start:]))
            if api is not None:
                return api
        return None


class Permit:
    """A job's permission to run: the probe slots it holds (none if every API is closed)."""

    __slots__ = ("_held", "_slots")

    def __init__(self, slots: tuple[tuple[CircuitBreaker, ProbeSlot], ...]) -> None:
        self._slots = slots
        self._held = True

    @property
    def probes(self) -> tuple[str, ...]:
        """The APIs this job probes (HALF_OPEN when it was admitted)."""
        return tuple(slot.api for _breaker, slot in self._slots)

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        """Give the probe slots back; later calls do nothing."""
        if self._held:
            self._held = False
            for breaker, slot in self._slots:
                breaker.release_probe(slot)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class TrackedCall:
    """One call to an API, reported exactly once.

    As a context manager (``with`` or ``async with``) it reports, on exit: ``SUCCESS`` if
    the block ended normally; ``CALLER_FAULT`` if it raised an exception for which
    ``caller_fault(exc)`` is true (a 4xx the request caused); ``FAILURE`` for any other
    :class:`Exception`; nothing for a ``BaseException`` such as ``trio.Cancelled`` (a
    cancelled call says nothing about the API). Call :meth:`finish` inside the block to
    report something else, e.g. a failure with a ``Retry-After`` from an SDK's error
    object; the exit then reports nothing more. Exceptions always propagate.

    Use either this or the tracking HTTP transport for a given request, not both: each
    reports, so the call would count twice.
    """

    __slots__ = ("_caller_fault", "_finished", "_tracker", "api", "started_at")

    def __init__(
        self,
        tracker: ApiTracker,
        api: str,
        started_at: float,
        caller_fault: Callable[[Exception], bool] | None,
    ) -> None:
        self._tracker = tracker
        self._caller_fault = caller_fault
        self._finished = False
        self.api = api
        self.started_at = started_at

    @property
    def finished(self) -> bool:
        return self._finished

    def finish(self, outcome: CallOutcome, *, retry_after: float | None = None) -> None:
        """Report how the call ended; only the first report of a call counts."""
        if self._finished:
            return
        self._finished = True
        self._tracker.report(self.api, outcome, retry_after=retry_after, started_at=self.started_at)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.finish(CallOutcome.SUCCESS)
        elif not isinstance(exc, Exception):
            self._finished = True  # cancelled or interrupted: no verdict on the API
        elif self._caller_fault is not None and self._caller_fault(exc):
            self.finish(CallOutcome.CALLER_FAULT)
        else:
            self.finish(CallOutcome.FAILURE)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)


class ApiTracker:
    """The breakers of every API a process calls, by API name.

    ``apis`` declares APIs (hosts and thresholds); any other API name, or a host name that
    belongs to no declared API, gets a breaker with ``default`` settings on first use.
    ``clock`` is monotonic seconds (``trio.current_time`` in the daemon); ``rng`` draws the
    cool-down jitter (a fresh, OS-seeded ``random.Random`` if omitted, so that processes
    differ).
    """

    def __init__(
        self,
        apis: Mapping[str, ApiSettings] | None = None,
        *,
        clock: Callable[[], float],
        default: BreakerSettings | None = None,
        rng: random.Random | None = None,
        warn: Warn = _quiet,
    ) -> None:
        self._settings = dict(apis or {})
        self._warn = warn
        self._warned: set[tuple[str, ...]] = set()
        self._host_owner: dict[str, str] = {}  # unclaimed host → the API first counted for it
        self._default = default or BreakerSettings()
        self._clock = clock
        self._rng = rng or random.Random()
        self._hosts = _HostIndex(self._settings)
        self._listeners: list[Callable[[Transition], None]] = []
        self._breakers: dict[str, CircuitBreaker] = {}
        for api in self._settings:
            self._breaker(api)

    # ------------------------------------------------------------------ names

    def api_for_host(self, host: str, caller: Caller | None = None) -> str:
        """The API a request to ``host`` belongs to: the API whose ``hosts`` claim it; else
        the one API of ``caller``'s (default: this task's :data:`CALLER`) that has no
        ``hosts``; else the host name."""
        normalized = _normalize_host(host)
        claimed = self._hosts.lookup(normalized)
        if claimed is not None:
            return claimed
        if caller is None:
            caller = CALLER.get()
        if caller is None or not caller.apis:
            return normalized
        candidates = [api for api in caller.apis if not self.has_hosts(api)]
        if len(candidates) != 1:
            self._once(
                ("several", caller.handler, normalized),
                "api call counted under its host name: no [api.NAME] hosts claims the host "
                "and the handler declares several APIs without hosts",
                handler=caller.handler,
                host=normalized,
                apis=list(caller.apis),
                hint=f'add hosts = ["{normalized}"] to the [api.NAME] of the API it belongs to',
            )
            return normalized
        api = candidates[0]
        owner = self._host_owner.setdefault(normalized, api)
        if owner != api:
            self._once(
                ("shared", normalized),
                "one host counted for two APIs: each handler's calls feed its own API's breaker",
                host=normalized,
                apis=sorted((owner, api)),
                hint=f'if they are one service, give it hosts = ["{normalized}"]',
            )
        return api

    def has_hosts(self, api: str) -> bool:
        """Whether ``[api.NAME] hosts`` names the host names of ``api``."""
        declared = self._settings.get(api)
        return declared is not None and bool(declared.hosts)

    def check_declared(self, api: str, caller: Caller) -> None:
        """A handler reports a call to ``api``: say once if it does not declare it (its
        jobs then keep running while that API is open)."""
        if api not in caller.apis:
            self._once(
                ("undeclared", caller.handler, api),
                "handler reports calls to an API it does not declare: its jobs are not held "
                "while that API is open",
                handler=caller.handler,
                api=api,
                hint=f'add "{api}" to @handler(apis=[...])',
            )

    def _once(self, key: tuple[str, ...], event: str, **fields: object) -> None:
        if key not in self._warned and len(self._warned) < _MAX_WARNINGS:
            self._warned.add(key)
            self._warn(event, fields)

    # ------------------------------------------------------------------ reporting

    def report(
        self,
        api: str,
        outcome: CallOutcome,
        *,
        retry_after: float | None = None,
        started_at: float | None = None,
    ) -> tuple[Transition, ...]:
        """Record how one call to ``api`` ended (see :meth:`CircuitBreaker.report`)."""
        return self._breaker(api).report(outcome, retry_after=retry_after, started_at=started_at)

    def call(
        self, api: str, *, caller_fault: Callable[[Exception], bool] | None = None
    ) -> TrackedCall:
        """A call to ``api`` starting now; report it with ``finish`` or as a context manager."""
        return TrackedCall(self, api, self._clock(), caller_fault)

    # ------------------------------------------------------------------ asking

    def state(self, api: str) -> BreakerState:
        return self._breaker(api).state

    def is_open(self, api: str) -> bool:
        """True while ``api`` is OPEN (cooling down). HALF_OPEN is not open: see may_probe."""
        return self.state(api) is BreakerState.OPEN

    def may_probe(self, api: str) -> bool:
        """True if ``api`` is HALF_OPEN with a probe slot free."""
        return self._breaker(api).may_probe()

    def blocked(self, apis: Iterable[str]) -> bool:
        """Whether a job needing all of ``apis`` cannot run now: one is OPEN, or HALF_OPEN
        with every probe slot taken."""
        return any(self._blocks(api) for api in apis)

    def failing(self, apis: Iterable[str]) -> bool:
        """Whether the last call reported for one of ``apis`` failed: an outage may be
        starting, which the breaker will tell once it has seen enough."""
        return any(self._breaker(api).failing for api in apis)

    def blocked_until(self, apis: Iterable[str]) -> float | None:
        """When a blocked job could next be admitted, on the tracker's clock; None if it is
        not blocked. An API out of probe slots gives "now": its probes may end any moment.
        """
        now = self._clock()
        until: float | None = None
        for api in apis:
            if self._blocks(api):
                next_probe_at = self._breaker(api).statistics().next_probe_at
                moment = now if next_probe_at is None else max(now, next_probe_at)
                until = moment if until is None else max(until, moment)
        return until

    def try_admit(self, apis: Iterable[str]) -> Permit | None:
        """A permit to run a job needing all of ``apis``, or None if it is blocked.

        The job becomes a probe of each HALF_OPEN API among them, holding one slot of each
        until the permit is released (all or none are taken).
        """
        wanted = sorted(set(apis))
        if self.blocked(wanted):
            return None
        slots: list[tuple[CircuitBreaker, ProbeSlot]] = []
        for api in wanted:
            breaker = self._breaker(api)
            if breaker.state is BreakerState.HALF_OPEN:
                slot = breaker.acquire_probe()
                if slot is None:  # cannot happen after blocked(); never hold a partial set
                    Permit(tuple(slots)).release()
                    return None
                slots.append((breaker, slot))
        return Permit(tuple(slots))

    # ------------------------------------------------------------------ watching

    def add_listener(self, listener: Callable[[Transition], None]) -> Callable[[], None]:
        """Call ``listener`` with every transition of every API; returns a remover."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def statistics(self) -> TrackerStatistics:
        return TrackerStatistics(
            tuple(self._breakers[api].statistics() for api in sorted(self._breakers))
        )

    # ------------------------------------------------------------------ internals

    def _blocks(self, api: str) -> bool:
        state = self.state(api)
        return state is BreakerState.OPEN or (
            state is BreakerState.HALF_OPEN and not self.may_probe(api)
        )

    def _breaker(self, api: str) -> CircuitBreaker:
        breaker = self._breakers.get(api)
        if breaker is None:
            declared = self._settings.get(api)
            breaker = CircuitBreaker(
                api,
                declared.breaker if declared is not None else self._default,
                clock=self._clock,
                rng=self._rng,
                on_transition=self._emit,
            )
            self._breakers[api] = breaker
        return breaker

    def _emit(self, transition: Transition) -> None:
        for listener in tuple(self._listeners):
            listener(transition)


def call_api(
    tracker: ApiTracker,
    name: str | None,
    host: str | None,
    caller_fault: Callable[[Exception], bool] | None = None,
    caller: Caller | None = None,
) -> TrackedCall:
    """``job.api(...)``: a call to the API ``name``, or to the one ``host`` belongs to
    (for ``caller``, the handler making it)."""
    if name is None:
        if host is None:
            raise TypeError("an API name or a host is needed")
        name = tracker.api_for_host(host, caller)
    elif caller is not None:
        tracker.check_declared(name, caller)
    return tracker.call(name, caller_fault=caller_fault)
