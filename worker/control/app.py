"""The control plane's ASGI app: a handful of routes, no framework.

- ``GET /metrics``: Prometheus text format.
- ``GET /healthz``: 200 while the event loop ticks (a task stamps the time every half
  second; a loop blocked by a handler stops stamping, so this turns 503 even if the
  request itself gets through late), else 503.
- ``GET /readyz``: 200 when a lane is connected and the daemon is not draining, else 503.
- ``GET /status``: JSON: pools and lanes, jobs in flight, counters, drain and quiet state,
  per tube and per handler outcomes (and each handler's run times).
- ``POST /quiet``, ``/resume``, ``/drain``: change the daemon's state; they need
  ``Authorization: Bearer <token>`` with the token from ``[control] token_file``, and
  answer 401 without it (always, when no token file is configured), 403 to a viewer's.
  Each is on the audit trail: an ``audit`` log line and a record in ``tubeworker.audit``
  on the daemon's first server.
- WebSocket ``/events``: JSON events (job outcomes, rate-limited; drain, quiet, connection
  losses; the dashboard's ``tubes``, ``workers`` and ``action`` events). A client that
  falls behind loses old events (it is told how many); one that takes no data for
  ``SEND_DEADLINE`` is disconnected.
- The dashboard (``control.dashboard``): ``/``, ``/static/*`` and ``/api/*``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from tubeworker.audit import record
from tubeworker.beanstalk.client import Address
from tubeworker.contracts import schema_document
from tubeworker.control.access import Access
from tubeworker.control.asgi import (
    Receive,
    Scope,
    Send,
    query,
    respond,
    run_lifespan,
    serve_events,
)
from tubeworker.control.dashboard import Dashboard
from tubeworker.runtime.state import WorkerState
from tubeworker.schedule import next_fire

__all__ = ["ControlApp"]

log = structlog.get_logger("tubeworker")

_HEALTHY_TICK_AGE = 5.0  # seconds since the loop's last tick that still counts as alive
_AUDIT_DEADLINE = 10.0  # the most an action's reply waits for its audit record


class ControlApp:
    def __init__(
        self,
        state: WorkerState,
        registry: CollectorRegistry,
        token: str | None,
        *,
        dashboard: Dashboard | None = None,
        paused_by_api: Mapping[str, tuple[str, ...]] | None = None,
        access: Access | None = None,
        audit_to: Address | None = None,
    ) -> None:
        self.state = state
        self.registry = registry
        self.token = token
        #: Who may read and act (roles by token; reads open without a viewer token).
        self.access = access or Access(token)
        self.dashboard = dashboard
        #: The server whose ``tubeworker.audit`` keeps the record of each action.
        self.audit_to = audit_to
        #: API → the tubes its flow control pauses while it is open (``pause_tubes``).
        self.paused_by_api = dict(paused_by_api or {})
        self.last_tick = time.monotonic()
        self.started = time.time()
        self.host = socket.gethostname()

    async def run_ticker(self) -> None:
        """Stamp the time from the event loop: what /healthz reads."""
        while True:
            self.last_tick = time.monotonic()
            await trio.sleep(0.5)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    # ---- HTTP

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if self.dashboard is not None and self.dashboard.handles(path):
            await self.dashboard.handle(scope, receive, send)
            return
        refused = self.access.check_read(scope, path) if method == "GET" else None
        if refused is not None:
            status, content_type, body = _json(refused[0], {"error": refused[1]})
        elif method == "GET" and path in _GETS:
            status, content_type, body = _GETS[path](self)
        elif method == "POST" and path in _ACTIONS:
            status, content_type, body = await self._action(scope, path)
        elif path in _GETS or path in _ACTIONS:
            status, content_type, body = _json(405, {"error": f"{method} not allowed here"})
        else:
            status, content_type, body = _json(404, {"error": f"no such path: {path}"})
        await respond(send, (status, content_type, body, ()))

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def _healthz(self) -> tuple[int, str, bytes]:
        age = time.monotonic() - self.last_tick
        ok = age < _HEALTHY_TICK_AGE
        return _json(200 if ok else 503, {"ok": ok, "loop_tick_age": round(age, 3)})

    def _readyz(self) -> tuple[int, str, bytes]:
        state = self.state
        connected = any(lane.statistics().connected for lane in state.lanes)
        ready = connected and not state.draining
        body = {"ready": ready, "connected": connected, "draining": state.draining}
        return _json(200 if ready else 503, body)

    def _status(self) -> tuple[int, str, bytes]:
        return _json(200, self.status_document())

    def _schemas(self) -> tuple[int, str, bytes]:
        """Each typed task's payload schema and version (``tubeworker schemas``)."""
        return _json(200, schema_document())

    def status_document(self) -> dict[str, Any]:
        """What ``/status`` answers (and the dashboard shows of this daemon)."""
        state = self.state
        lanes = [lane.statistics() for lane in state.lanes]
        pools: dict[str, dict[str, Any]] = {}
        for lane in lanes:
            pool = pools.setdefault(
                lane.pool, {"tubes": list(lane.tubes), "slots": 0, "jobs": 0, "lanes": []}
            )
            pool["slots"] += lane.slots
            pool["jobs"] += lane.jobs
            pool["lanes"].append({**asdict(lane), "address": str(lane.address)})
        apis = _apis(state)
        return {
            "host": self.host,
            "pid": os.getpid(),
            "started": round(self.started, 3),
            "draining": state.draining,
            "drain_reason": state.drain_reason,
            "quiet": state.quiet,
            "jobs_running": state.running_jobs,
            "in_flight_by_tube": state.in_flight_by_tube(),
            "counters": state.counters.totals(),
            "pools": pools,
            "apis": apis,
            "flow_pauses": {
                api: list(tubes)
                for api, tubes in self.paused_by_api.items()
                if apis.get(api, {}).get("state") == "open"
            },
            "tube_outcomes": _tube_outcomes(state),
            "handlers": _handlers(state),
            "limits": [asdict(stats) for stats in state.limits.statistics()]
            if state.limits is not None
            else [],
            "binlogs": {
                server: {
                    "full": health.full,
                    "since": health.since,
                    "held": health.held,
                    "refusals": health.refusals,
                }
                for server, health in state.binlogs.items()
            },
            "fleet_tokens": [
                {**asdict(tokens), "degraded": tokens.degraded} for tokens in state.fleet_tokens()
            ],
            **_clock(state),
        }

    async def _action(self, scope: Scope, path: str) -> tuple[int, str, bytes]:
        client = str((scope.get("client") or ("?",))[0])
        refused = self.access.check_action(scope)
        if refused is not None:
            status, error, why = refused
            log.warning("control plane action refused", action=path.lstrip("/"), peer=client,
                        why=why)  # fmt: skip
            return _json(status, {"error": error})
        state = self.state
        if path == "/quiet":
            state.set_quiet(True)
        elif path == "/resume":
            state.set_quiet(False)
        else:
            state.begin_drain("control plane: drain requested")
        log.info("control plane action", action=path.lstrip("/"))
        who = f"{self.access.who(scope)} (control plane)"
        target = f"daemon {self.host} pid {os.getpid()}"
        what = path.lstrip("/")
        if self.audit_to is None:
            log.info("audit", who=who, where=client, what=what, target=target, result="ok")
        else:
            with trio.CancelScope(shield=True), trio.move_on_after(_AUDIT_DEADLINE):
                await record(
                    self.audit_to, who=who, where=client, what=what, target=target, result="ok"
                )
        return _json(200, {"ok": True, "quiet": state.quiet, "draining": state.draining})

    # ---- WebSocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The dashboard's page asks for /events?view=dashboard: while it listens, the tube
        # poller keeps asking for every tube (``tubeworker top`` does not need them).
        refused = self.access.check_read(scope, "/events")
        if refused is not None:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 4401, "reason": refused[1]})
            return
        watching = None
        if self.dashboard is not None and query(scope).get("view") == "dashboard":
            watching = self.dashboard.keep_watching
        await serve_events(self.state.events, scope, receive, send, while_connected=watching)


def _apis(state: WorkerState) -> dict[str, dict[str, Any]]:
    if state.tracker is None:
        return {}
    now = trio.current_time()
    return {
        stats.api: {
            "state": stats.state.value,
            "calls": stats.calls,
            "failures": stats.failures,
            "trips": stats.trips,
            "next_probe_in": (
                round(max(0.0, stats.next_probe_at - now), 1)
                if stats.next_probe_at is not None and stats.state.value == "open"
                else None
            ),
        }
        for stats in state.tracker.statistics().apis
    }


def _tube_outcomes(state: WorkerState) -> dict[str, dict[str, int]]:
    """Per tube, how this process's jobs ended (deleted, released, buried, ...)."""
    by_tube: dict[str, dict[str, int]] = {}
    for (tube, _handler, outcome, _cause), count in list(state.counters.outcomes.items()):
        counts = by_tube.setdefault(tube, {})
        counts[outcome] = counts.get(outcome, 0) + count
    return by_tube


def _handlers(state: WorkerState) -> dict[str, dict[str, Any]]:
    """Per handler, since the daemon started: its tubes, how its jobs ended, and its run
    time (count, sum and cumulative buckets, as ``tubeworker_job_duration_seconds``)."""
    counters = state.counters
    found: dict[str, dict[str, Any]] = {}

    def entry(handler: str) -> dict[str, Any]:
        return found.setdefault(handler, {"tubes": [], "outcomes": {}, "run_seconds": None})

    for (tube, handler, outcome, _cause), count in list(counters.outcomes.items()):
        item = entry(handler)
        if tube not in item["tubes"]:
            item["tubes"].append(tube)
        item["outcomes"][outcome] = item["outcomes"].get(outcome, 0) + count
    for handler, histogram in list(counters.durations.items()):
        entry(handler)["run_seconds"] = {
            "count": histogram.count,
            "sum": round(histogram.total, 6),
            "buckets": histogram.cumulative(),
        }
    return found


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()


_GETS: dict[str, Callable[[ControlApp], tuple[int, str, bytes]]] = {
    "/metrics": ControlApp._metrics,
    "/healthz": ControlApp._healthz,
    "/readyz": ControlApp._readyz,
    "/status": ControlApp._status,
    "/schemas": ControlApp._schemas,
}
_ACTIONS = ("/quiet", "/resume", "/drain")


def _clock(state: WorkerState) -> dict[str, Any]:
    """The schedules this daemon's clock serves (what it put) and each heartbeat's age."""
    clock = state.clock
    now = time.time()
    schedules = []
    for schedule in clock.definitions:
        counts = clock.of(schedule.name)
        schedules.append(
            {
                "name": schedule.name,
                "tube": schedule.tube,
                "next_fire": next_fire(schedule, now),
                "last_fire": counts.last_fire,
                "fires": counts.fires,
                "misfires": counts.misfires,
                "paused": counts.paused,
                "overlapped": counts.overlapped,
            }
        )
    heartbeats = [
        {
            "tube": tube,
            "every": seen.heartbeat.every,
            "age": round(seen.age(now), 3),
            "last_run": seen.ran,
            "by": seen.by,
            "held": seen.paused,
            "stale": not seen.paused and seen.age(now) > 3 * seen.heartbeat.every,
        }
        for tube, seen in sorted(clock.heartbeats.items())
    ]
    return {"schedule_server": clock.server, "schedules": schedules, "heartbeats": heartbeats}
