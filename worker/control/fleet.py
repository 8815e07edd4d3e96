"""The dashboard's workers and APIs: each tubeworker daemon's ``/status``, read by one task
per process (``run_fleet_poller``) whatever the number of viewers.

The local daemon (when the dashboard is served by one) is read in-process; the others are
the control planes listed in ``[control] daemons`` (or ``tubeworker dashboard --daemon``),
read over HTTP with httpx. Only those addresses are ever contacted: a page names a worker
by its id, never by an address of its choosing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import structlog
import trio

from tubeworker.control import troubles as trouble
from tubeworker.observe.events import EventBus

__all__ = ["LOCAL", "Fleet", "daemon_url", "run_fleet_poller"]

log = structlog.get_logger("tubeworker")

LOCAL: Final = "local"
REQUEST_TIMEOUT: Final = 2.0
_RATE_WINDOW: Final = 60.0  # seconds of done counts kept for done/min

Status = dict[str, Any]


def daemon_url(text: str) -> str:
    """``HOST:PORT`` or ``http://HOST:PORT`` → ``http://HOST:PORT`` (no trailing slash)."""
    url = text.strip().rstrip("/")
    return url if url.startswith(("http://", "https://")) else f"http://{url}"


Counts = tuple[int, int]  # (succeeded, failed)
Buckets = tuple[tuple[str, int], ...]  # (upper bound, cumulative count), "+Inf" last


@dataclass(frozen=True, slots=True)
class _HandlerCounts:
    """One handler's totals in one daemon's ``/status``: outcomes and run time."""

    deleted: int = 0
    released: int = 0
    buried: int = 0
    runs: int = 0
    run_seconds: float = 0.0
    buckets: Buckets = ()


def _handler_counts(status: Status) -> dict[str, _HandlerCounts]:
    found: dict[str, _HandlerCounts] = {}
    handlers = status.get("handlers")
    for name, item in handlers.items() if isinstance(handlers, Mapping) else ():
        if not isinstance(item, Mapping):
            continue
        outcomes = item.get("outcomes")
        outcomes = outcomes if isinstance(outcomes, Mapping) else {}
        run = item.get("run_seconds")
        run = run if isinstance(run, Mapping) else {}
        found[str(name)] = _HandlerCounts(
            deleted=int(outcomes.get("deleted", 0)),
            released=int(outcomes.get("released", 0)),
            buried=int(outcomes.get("buried", 0)),
            runs=int(run.get("count", 0)),
            run_seconds=float(run.get("sum", 0.0)),
            buckets=tuple((str(bound), int(n)) for bound, n in run.get("buckets", ())),
        )
    return found


def _upper_quantile(buckets: Buckets, q: float) -> tuple[float | None, bool]:
    """The bucket bound under which ``q`` of the runs fell: (bound, False); (the last
    finite bound, True) when they fell above it; (None, False) without runs."""
    total = buckets[-1][1] if buckets else 0
    finite = [float(b) for b, _ in buckets if b != "+Inf"]
    for bound, cumulative in buckets if total > 0 else ():
        if cumulative >= q * total:
            if bound == "+Inf":
                return (finite[-1] if finite else None), True
            return float(bound), False
    return None, False


@dataclass
class _HandlerWindow:
    """One handler over the last minute, summed over the daemons that ran it."""

    tubes: set[str] = field(default_factory=set)
    workers: int = 0
    done: int = 0  # totals, since each daemon started
    failed: int = 0
    timed: bool = False  # some daemon was read twice: the rates are known
    per_min: dict[str, float] = field(
        default_factory=lambda: {"deleted": 0.0, "released": 0.0, "buried": 0.0}
    )
    runs: int = 0  # in the window
    run_seconds: float = 0.0
    buckets: dict[str, int] = field(default_factory=dict)

    def add(self, last: _HandlerCounts, first: _HandlerCounts, span: float) -> None:
        self.workers += 1
        self.done += last.deleted
        self.failed += last.released + last.buried
        if span <= 0:
            return
        self.timed = True
        for outcome in self.per_min:
            grew = getattr(last, outcome) - getattr(first, outcome)
            self.per_min[outcome] += max(0, grew) / span * 60
        self.runs += max(0, last.runs - first.runs)
        self.run_seconds += max(0.0, last.run_seconds - first.run_seconds)
        before = dict(first.buckets)
        for bound, cumulative in last.buckets:
            grew = max(0, cumulative - before.get(bound, 0))
            self.buckets[bound] = self.buckets.get(bound, 0) + grew

    def summary(self, name: str) -> dict[str, Any]:
        def rate(outcome: str) -> float | None:
            return round(self.per_min[outcome], 1) if self.timed else None

        p95, above = _upper_quantile(tuple(self.buckets.items()), 0.95)
        return {
            "handler": name,
            "tubes": sorted(self.tubes),
            "workers": self.workers,
            "done": self.done,
            "failed": self.failed,
            "done_per_min": rate("deleted"),
            "released_per_min": rate("released"),
            "buried_per_min": rate("buried"),
            "runs": self.runs if self.timed else None,
            "run_mean": round(self.run_seconds / self.runs, 6) if self.runs else None,
            "run_p95": p95,
            "run_p95_above": above,
        }


def _tube_outcomes(status: Status) -> dict[str, Counts]:
    """Tube → (succeeded, failed) totals of one daemon's ``/status``."""
    found: dict[str, Counts] = {}
    outcomes = status.get("tube_outcomes")
    for tube, counts in outcomes.items() if isinstance(outcomes, Mapping) else ():
        if isinstance(counts, Mapping):
            failed = int(counts.get("released", 0)) + int(counts.get("buried", 0))
            found[str(tube)] = (int(counts.get("deleted", 0)), failed)
    return found


@dataclass
class _Worker:
    id: str
    url: str | None
    status: Status | None = None
    error: str | None = None
    seen_at: float | None = None  # wall clock
    done: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    outcomes: dict[str, Counts] | None = None  # its tube outcomes at the last read
    #: (when, its handlers' totals) over the last minute.
    handlers: deque[tuple[float, dict[str, _HandlerCounts]]] = field(default_factory=deque)

    def record(self, status: Status, now: float) -> dict[str, Counts]:
        """Take a new ``/status``; the outcomes it counted since the last one, per tube
        (none at a first read: when its totals happened is not known)."""
        before, started = self.outcomes, (self.status or {}).get("started")
        self.status, self.error, self.seen_at = status, None, time.time()
        restarted = before is not None and status.get("started") != started
        self._record_done(status, now)
        self._record_handlers(status, now, restarted)
        self.outcomes = current = _tube_outcomes(status)
        if before is None:
            return {}
        if restarted:
            before = {}  # its totals are all new
        new = {}
        for tube, (succeeded, failed) in current.items():
            was = before.get(tube, (0, 0))
            counted = (max(0, succeeded - was[0]), max(0, failed - was[1]))
            if counted != (0, 0):
                new[tube] = counted
        return new

    def _record_done(self, status: Status, now: float) -> None:
        counters = status.get("counters")
        deleted = counters.get("deleted") if isinstance(counters, Mapping) else None
        if isinstance(deleted, int):
            if self.done and deleted < self.done[-1][1]:
                self.done.clear()  # restarted: its counts began again
            self.done.append((now, deleted))
        while self.done and now - self.done[0][0] > _RATE_WINDOW:
            self.done.popleft()

    def _record_handlers(self, status: Status, now: float, restarted: bool) -> None:
        if restarted:
            self.handlers.clear()  # its counts began again
        self.handlers.append((now, _handler_counts(status)))
        while len(self.handlers) > 2 and now - self.handlers[1][0] >= _RATE_WINDOW:
            self.handlers.popleft()  # keep the newest point at least a window old

    def handler_windows(self, windows: dict[str, _HandlerWindow]) -> None:
        """Add this daemon's handlers over its last minute to ``windows``."""
        if not self.handlers:
            return
        (first_at, first), (last_at, last) = self.handlers[0], self.handlers[-1]
        tubes = (self.status or {}).get("handlers")
        for name, counts in last.items():
            window = windows.setdefault(name, _HandlerWindow())
            window.add(counts, first.get(name, _HandlerCounts()), last_at - first_at)
            listed = tubes.get(name, {}).get("tubes") if isinstance(tubes, Mapping) else None
            if isinstance(listed, list):
                window.tubes.update(str(t) for t in listed)

    def done_per_min(self) -> float | None:
        if len(self.done) < 2:
            return None
        (t0, n0), (t1, n1) = self.done[0], self.done[-1]
        return round((n1 - n0) / (t1 - t0) * 60, 1) if t1 > t0 else None


def _pools(status: Status) -> list[dict[str, Any]]:
    pools = status.get("pools")
    out = []
    for name, pool in sorted(pools.items()) if isinstance(pools, Mapping) else ():
        if isinstance(pool, Mapping):
            out.append(
                {
                    "name": name,
                    "tubes": list(pool.get("tubes", [])),
                    "concurrency": pool.get("slots", 0),
                    "jobs": pool.get("jobs", 0),
                }
            )
    return out


class Fleet:
    """The daemons the dashboard shows, and their latest ``/status``."""

    def __init__(
        self,
        daemons: Sequence[str] = (),
        *,
        local_status: Callable[[], Status] | None = None,
        local_quiet: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local_status = local_status
        self.local_quiet = local_quiet
        self.clock = clock
        self.workers: dict[str, _Worker] = {}
        if local_status is not None:
            # This daemon started with its dashboard: every outcome it counts is new.
            self.workers[LOCAL] = _Worker(LOCAL, None, outcomes={})
        for text in daemons:
            url = daemon_url(text)
            self.workers.setdefault(url, _Worker(url, url))
        #: Tube → (succeeded, failed) outcomes seen to happen since the dashboard started,
        #: over every daemon: they only grow (a daemon's restart, or a first read, never
        #: makes them jump back or count what came before).
        self._outcomes: dict[str, Counts] = {}
        self._wake = trio.Event()
        self._refreshed = trio.Event()

    @property
    def unread(self) -> bool:
        """Some daemon was never asked yet (a first view may wait for it)."""
        return any(w.status is None and w.error is None for w in self.workers.values())

    async def wait_refreshed(self) -> None:
        """Until the next refresh has finished."""
        await self._refreshed.wait()

    def poke(self) -> None:
        """Read the daemons again now (after an action on one)."""
        self._wake.set()

    async def refresh(self, http: httpx.AsyncClient) -> None:
        """Every daemon's ``/status``, at the same time; an unreachable one keeps its last
        status, marked with the error."""
        async with trio.open_nursery() as nursery:
            for worker in self.workers.values():
                nursery.start_soon(self._refresh_one, http, worker)
        self._refreshed.set()
        self._refreshed = trio.Event()

    async def _refresh_one(self, http: httpx.AsyncClient, worker: _Worker) -> None:
        if worker.url is None:
            assert self.local_status is not None
            self._count(worker.record(self.local_status(), self.clock()))
            return
        try:
            response = await http.get(f"{worker.url}/status", timeout=REQUEST_TIMEOUT)
            response.raise_for_status()
            status = response.json()
            if not isinstance(status, dict):
                raise ValueError("/status is not a JSON object")
        except (httpx.HTTPError, ValueError) as exc:
            worker.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return
        self._count(worker.record(status, self.clock()))

    def _count(self, new: Mapping[str, Counts]) -> None:
        for tube, (succeeded, failed) in new.items():
            was = self._outcomes.get(tube, (0, 0))
            self._outcomes[tube] = (was[0] + succeeded, was[1] + failed)

    # ------------------------------------------------------------------ reading

    def summaries(self) -> list[dict[str, Any]]:
        out = []
        for worker in self.workers.values():
            status = worker.status or {}
            pools = _pools(status)
            out.append(
                {
                    "id": worker.id,
                    "url": worker.url,
                    "ok": worker.error is None and worker.status is not None,
                    "error": worker.error,
                    "seen_at": worker.seen_at,
                    "host": status.get("host"),
                    "pid": status.get("pid"),
                    "started": status.get("started"),
                    "pools": pools,
                    "concurrency": sum(int(p["concurrency"] or 0) for p in pools),
                    "in_flight": status.get("jobs_running"),
                    "done_per_min": worker.done_per_min(),
                    "draining": bool(status.get("draining")),
                    "drain_reason": status.get("drain_reason"),
                    "quiet": bool(status.get("quiet")),
                }
            )
        return out

    def apis(self) -> list[dict[str, Any]]:
        """Per API, each daemon's breaker (state, calls, failures, next probe)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for worker in self.workers.values():
            apis = (worker.status or {}).get("apis")
            for name, api in apis.items() if isinstance(apis, Mapping) else ():
                if isinstance(api, Mapping):
                    found.setdefault(str(name), []).append({"worker": worker.id, **api})
        order = {"open": 0, "half_open": 1, "closed": 2}
        return [
            {
                "api": name,
                "state": min(
                    (str(w.get("state", "closed")) for w in workers),
                    key=lambda state: order.get(state, 3),
                ),
                "workers": workers,
            }
            for name, workers in sorted(found.items())
        ]

    def statuses(self) -> dict[str, Status]:
        """Worker id → its latest ``/status`` (those read at least once)."""
        return {w.id: w.status for w in self.workers.values() if w.status is not None}

    def troubles(self) -> list[dict[str, Any]]:
        """What needs an operator now (see :mod:`tubeworker.control.troubles`)."""
        return trouble.troubles(self.statuses())

    def fleet_limits(self) -> list[dict[str, Any]]:
        """Each fleet limit's tokens, and whether some daemon reaches fewer."""
        return trouble.fleet_limits(self.statuses())

    def handlers(self) -> list[dict[str, Any]]:
        """Per handler, over every daemon: jobs done, released and buried per minute and
        their run time (mean, and the bucket 95 % fell under) over the last minute; the
        totals since each daemon started."""
        windows: dict[str, _HandlerWindow] = {}
        for worker in self.workers.values():
            worker.handler_windows(windows)
        return [windows[name].summary(name) for name in sorted(windows)]

    def flow_pauses(self) -> dict[str, list[str]]:
        """Tube → the open APIs whose flow control pauses it (per the daemons' status)."""
        pauses: dict[str, list[str]] = {}
        for worker in self.workers.values():
            flow = (worker.status or {}).get("flow_pauses")
            for api, tubes in flow.items() if isinstance(flow, Mapping) else ():
                for tube in tubes if isinstance(tubes, list) else ():
                    names = pauses.setdefault(str(tube), [])
                    if api not in names:
                        names.append(str(api))
        return pauses

    def outcomes(self) -> Mapping[str, Counts]:
        """Tube → (succeeded, failed) seen since the dashboard started, over every daemon
        (for failure rates: a tube not in it had none)."""
        return self._outcomes

    # ------------------------------------------------------------------ acting

    async def set_quiet(
        self, worker_id: str, quiet: bool, token: str, http: httpx.AsyncClient
    ) -> dict[str, Any]:
        """Quiet or resume one daemon (the bearer token is passed on to a remote one).
        KeyError: no such worker; httpx.HTTPError: it did not do it."""
        worker = self.workers[worker_id]
        if worker.url is None:
            assert self.local_quiet is not None
            self.local_quiet(quiet)
            return {"ok": True, "quiet": quiet}
        path = "/quiet" if quiet else "/resume"
        response = await http.post(
            f"{worker.url}{path}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=REQUEST_TIMEOUT,
        )
        response.raise_for_status()
        answer = response.json()
        return answer if isinstance(answer, dict) else {"ok": True}


async def run_fleet_poller(
    fleet: Fleet,
    events: EventBus,
    interval: float,
    *,
    watched: Callable[[], bool] = lambda: True,
) -> None:
    """Read every daemon's ``/status`` every ``interval`` (at least a second, or when poked)
    while the dashboard is ``watched``, forever, and tell listening pages (a ``workers``
    event)."""
    period = max(interval, 1.0)
    async with httpx.AsyncClient(trust_env=False) as http:
        while True:
            fleet._wake = trio.Event()
            if watched():
                await fleet.refresh(http)
                if events.listening:
                    events.publish(
                        "workers",
                        workers=fleet.summaries(),
                        apis=fleet.apis(),
                        handlers=fleet.handlers(),
                        troubles=fleet.troubles(),
                    )
            with trio.move_on_after(period):
                await fleet._wake.wait()
