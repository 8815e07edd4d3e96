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

    def record(self, status: Status, now: float) -> dict[str, Counts]:
        """Take a new ``/status``; the outcomes it counted since the last one, per tube
        (none at a first read: when its totals happened is not known)."""
        before, started = self.outcomes, (self.status or {}).get("started")
        self.status, self.error, self.seen_at = status, None, time.time()
        self._record_done(status, now)
        self.outcomes = current = _tube_outcomes(status)
        if before is None:
            return {}
        if status.get("started") != started:
            before = {}  # restarted since: its totals are all new
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
                    events.publish("workers", workers=fleet.summaries(), apis=fleet.apis())
            with trio.move_on_after(period):
                await fleet._wake.wait()
