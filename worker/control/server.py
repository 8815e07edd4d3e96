"""Serve the control plane beside the daemon: hypercorn's Trio worker running ControlApp,
the loop ticker /healthz reads, the tube poller /metrics and the dashboard read, and the
fleet poller (this daemon's and ``[control] daemons``' status) the dashboard reads.

Why hypercorn: a well-kept ASGI server with a native Trio worker (no second event loop, no
thread), HTTP/1.1 and WebSocket from the same port, and an ASGI app small enough to write
without a framework.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from tubeworker.admin_ops import install_redact
from tubeworker.beanstalk.client import Address
from tubeworker.config import Config
from tubeworker.control.access import Access
from tubeworker.control.app import ControlApp
from tubeworker.control.board import TubeBoard
from tubeworker.control.dashboard import Dashboard
from tubeworker.control.fleet import Fleet, run_fleet_poller
from tubeworker.control.metrics import TubeDepths, build_registry, run_tube_poller
from tubeworker.flow.apis import tube_apis
from tubeworker.runtime.state import WorkerState
from tubeworker.schedule import clock_schedules

__all__ = ["hypercorn_config", "read_token", "run_control_plane"]

log = structlog.get_logger("tubeworker")


def read_token(config: Config, path: Path | None = None) -> str | None:
    path = config.control.token_file if path is None else path
    if path is None:
        return None
    token = path.read_text(encoding="utf-8").strip()
    return token or None


def build_access(config: Config, operator: str | None) -> Access:
    """The roles of [control]: the operator's token, and the viewer's and metrics' files."""
    control = config.control
    viewer = read_token(config, control.read_token_file) if control.read_token_file else None
    metrics = read_token(config, control.metrics_token_file) if control.metrics_token_file else None
    return Access(operator, viewer, metrics, bodies_to=control.show_bodies_to)


def hypercorn_config(listen: Address) -> tuple[HypercornConfig, str]:
    """Hypercorn's settings to serve on ``listen``, and the host as a URL writes it."""
    server = HypercornConfig()
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    server.bind = [f"{host}:{listen.port}"]
    server.accesslog = None
    server.errorlog = None  # we say what matters ourselves, as structured lines
    server.graceful_timeout = 1.0
    return server, host


async def run_control_plane(
    config: Config,
    state: WorkerState,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``started()`` with the URL it listens on."""
    listen = config.control.listen
    assert listen is not None
    interval = config.control.metrics_interval
    depths = TubeDepths()
    token = read_token(config)
    access = build_access(config, token)
    install_redact(config.control.redact)
    board = TubeBoard(depths, state.events, sample_every=max(5.0, interval))
    app = ControlApp(
        state,
        build_registry(
            state,
            depths,
            tube_apis(config),
            max_connections=config.control.server_max_connections,
        ),
        token,
        paused_by_api={api.name: api.tubes for api in config.apis if api.pause_tubes},
        access=access,
        audit_to=config.servers[0] if config.servers else None,
    )
    fleet = Fleet(
        config.control.daemons, local_status=app.status_document, local_quiet=state.set_quiet
    )
    board.outcomes = fleet.outcomes
    app.dashboard = Dashboard(
        servers=config.servers,
        depths=depths,
        board=board,
        fleet=fleet,
        events=state.events,
        token=token,
        interval=interval,
        allowed_hosts=(*config.control.allowed_hosts, listen.host),
        schedules=clock_schedules(config.schedules, config.heartbeats),
        heartbeats=config.heartbeats,
        access=access,
    )
    state.events.job_events_per_second = config.control.events_per_second
    state.counters.detailed = True  # /metrics reads the labelled counts and histograms
    server, host = hypercorn_config(listen)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.run_ticker)
        nursery.start_soon(
            partial(
                run_tube_poller,
                state,
                depths,
                interval,
                config.connect_timeout,
                servers=config.servers,
            )
        )
        nursery.start_soon(
            partial(
                run_fleet_poller, fleet, state.events, interval, watched=lambda: depths.every_tube
            )
        )
        binds: list[str] = await nursery.start(serve, app, server)
        url = binds[0] if binds else f"http://{host}:{listen.port}"
        log.info("control plane listening", url=url, token=app.token is not None)
        task_status.started(url)
