"""The control plane's ASGI app: a handful of routes, no framework.

- ``GET /metrics``: Prometheus text format.
- ``GET /healthz``: 200 while the event loop ticks (a task stamps the time every half
  second; a loop blocked by a handler stops stamping, so this turns 503 even if the
  request itself gets through late), else 503.
- ``GET /readyz``: 200 when a lane is connected and the daemon is not draining, else 503.
- ``GET /status``: JSON: pools and lanes, jobs in flight, counters, drain and quiet state.
- ``POST /quiet``, ``/resume``, ``/drain``: change the daemon's state; they need
  ``Authorization: Bearer <token>`` with the token from ``[control] token_file``, and
  answer 401 without it (always, when no token file is configured).
- WebSocket ``/events``: JSON events (job outcomes, rate-limited; drain, quiet, connection
  losses). A client that falls behind loses old events (it is told how many); one that
  takes no data for ``_SEND_DEADLINE`` is disconnected.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict
from typing import Any

import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from tubeworker.runtime.state import WorkerState

__all__ = ["ControlApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = structlog.get_logger("tubeworker")

_HEALTHY_TICK_AGE = 5.0  # seconds since the loop's last tick that still counts as alive
_SEND_DEADLINE = 10.0  # a WebSocket client that takes nothing for this long is dropped


class ControlApp:
    def __init__(self, state: WorkerState, registry: CollectorRegistry, token: str | None) -> None:
        self.state = state
        self.registry = registry
        self.token = token
        self.last_tick = time.monotonic()
        self.started = time.time()

    async def run_ticker(self) -> None:
        """Stamp the time from the event loop: what /healthz reads."""
        while True:
            self.last_tick = time.monotonic()
            await trio.sleep(0.5)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    # ---- HTTP

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if method == "GET" and path in _GETS:
            status, content_type, body = _GETS[path](self)
        elif method == "POST" and path in _ACTIONS:
            status, content_type, body = self._action(scope, path)
        elif path in _GETS or path in _ACTIONS:
            status, content_type, body = _json(405, {"error": f"{method} not allowed here"})
        else:
            status, content_type, body = _json(404, {"error": f"no such path: {path}"})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

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
        return _json(
            200,
            {
                "pid": os.getpid(),
                "started": round(self.started, 3),
                "draining": state.draining,
                "drain_reason": state.drain_reason,
                "quiet": state.quiet,
                "jobs_running": state.running_jobs,
                "counters": state.counters.totals(),
                "pools": pools,
                "apis": _apis(state),
            },
        )

    def _action(self, scope: Scope, path: str) -> tuple[int, str, bytes]:
        if not self._authorized(scope):
            return _json(401, {"error": "a bearer token from [control] token_file is needed"})
        state = self.state
        if path == "/quiet":
            state.set_quiet(True)
        elif path == "/resume":
            state.set_quiet(False)
        else:
            state.begin_drain("control plane: drain requested")
        log.info("control plane action", action=path.lstrip("/"))
        return _json(200, {"ok": True, "quiet": state.quiet, "draining": state.draining})

    def _authorized(self, scope: Scope) -> bool:
        if self.token is None:
            return False
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                given = value.decode("latin-1")
                return hmac.compare_digest(given, f"Bearer {self.token}")
        return False

    # ---- WebSocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != "/events":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 4404})
            return
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        with self.state.events.subscribe() as subscription:
            async with trio.open_nursery() as nursery:

                async def until_disconnect() -> None:
                    while (await receive())["type"] != "websocket.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_disconnect)
                hello = {"type": "hello", "pid": os.getpid(), "at": round(time.time(), 3)}
                await send({"type": "websocket.send", "text": json.dumps(hello)})
                while True:
                    events = await subscription.next_batch()
                    if not events:
                        break
                    with trio.move_on_after(_SEND_DEADLINE) as slow:
                        for event in events:
                            await send({"type": "websocket.send", "text": json.dumps(event)})
                    if slow.cancelled_caught:
                        log.warning("events client too slow: disconnected")
                        break
                nursery.cancel_scope.cancel()
        with trio.move_on_after(1):
            await send({"type": "websocket.close", "code": 1000})


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


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()


_GETS: dict[str, Callable[[ControlApp], tuple[int, str, bytes]]] = {
    "/metrics": ControlApp._metrics,
    "/healthz": ControlApp._healthz,
    "/readyz": ControlApp._readyz,
    "/status": ControlApp._status,
}
_ACTIONS = ("/quiet", "/resume", "/drain")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
