"""The dashboard on its own (``tubeworker dashboard --server HOST:PORT``), for a host with no
daemon: the same page and JSON endpoints as the control plane's, its own ``/events``
stream, the same tube poller (asking for every tube of the servers) and the fleet poller
for the daemons it is given. No daemon state, no metrics. With a viewer's token
(``--read-token-file``) its reads and ``/events`` need a token as the control plane's do
(control/access.py)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import structlog
import trio
from hypercorn.trio import serve

from tubeworker.beanstalk.client import Address
from tubeworker.control.access import Access
from tubeworker.control.asgi import (
    Receive,
    Scope,
    Send,
    json_response,
    respond,
    run_lifespan,
    serve_events,
)
from tubeworker.control.board import TubeBoard
from tubeworker.control.dashboard import Dashboard
from tubeworker.control.fleet import Fleet, run_fleet_poller
from tubeworker.control.poller import TubeDepths, run_tube_poller
from tubeworker.control.server import hypercorn_config
from tubeworker.observe.events import EventBus

__all__ = ["DashboardApp", "run_dashboard"]

log = structlog.get_logger("tubeworker")


class DashboardApp:
    """ASGI: the dashboard's routes, ``/events`` and ``/healthz``."""

    def __init__(self, dashboard: Dashboard, events: EventBus) -> None:
        self.dashboard = dashboard
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
        elif scope["type"] == "websocket":
            refused = self.dashboard.access.check_read(scope, "/events")
            if refused is not None:  # --read-token-file: the live events are a read too
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 4401, "reason": refused[1]})
                return
            await serve_events(
                self.events,
                scope,
                receive,
                send,
                while_connected=self.dashboard.keep_watching,
            )
        elif scope["type"] == "http":
            path = scope["path"]
            if self.dashboard.handles(path):
                await self.dashboard.handle(scope, receive, send)
            elif path == "/healthz":
                await respond(send, json_response(200, {"ok": True}))
            else:
                await respond(send, json_response(404, {"error": f"no such path: {path}"}))


async def run_dashboard(
    servers: Sequence[Address],
    listen: Address,
    *,
    token: str | None,
    access: Access | None = None,
    daemons: Sequence[str] = (),
    interval: float = 2.0,
    connect_timeout: float = 5.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard until cancelled; ``started()`` with its URL."""
    events = EventBus()
    depths = TubeDepths()
    board = TubeBoard(depths, events, sample_every=max(5.0, interval))
    fleet = Fleet(daemons)
    board.outcomes = fleet.outcomes
    dashboard = Dashboard(
        servers=servers,
        depths=depths,
        board=board,
        fleet=fleet,
        events=events,
        token=token,
        interval=interval,
        allowed_hosts=(listen.host,),
        access=access,
    )
    server, host = hypercorn_config(listen)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                run_tube_poller, None, depths, interval, connect_timeout, servers=tuple(servers)
            )
        )
        nursery.start_soon(
            partial(run_fleet_poller, fleet, events, interval, watched=lambda: depths.every_tube)
        )
        binds: list[str] = await nursery.start(serve, DashboardApp(dashboard, events), server)
        url = binds[0] if binds else f"http://{host}:{listen.port}"
        log.info(
            "dashboard listening",
            url=url,
            servers=[str(s) for s in servers],
            daemons=list(daemons),
            token=token is not None,
            read_token=access is not None and not access.reads_open,
        )
        task_status.started(url)
