"""Serve the control plane beside the daemon: hypercorn's Trio worker running ControlApp,
the loop ticker /healthz reads, and the tube poller /metrics reads.

Why hypercorn: a well-kept ASGI server with a native Trio worker (no second event loop, no
thread), HTTP/1.1 and WebSocket from the same port, and an ASGI app small enough to write
without a framework.
"""

from __future__ import annotations

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from tubeworker.config import Config
from tubeworker.control.app import ControlApp
from tubeworker.control.metrics import TubeDepths, build_registry, run_tube_poller
from tubeworker.runtime.state import WorkerState

__all__ = ["run_control_plane"]

log = structlog.get_logger("tubeworker")


def read_token(config: Config) -> str | None:
    path = config.control.token_file
    if path is None:
        return None
    token = path.read_text(encoding="utf-8").strip()
    return token or None


async def run_control_plane(
    config: Config,
    state: WorkerState,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``started()`` with the URL it listens on."""
    listen = config.control.listen
    assert listen is not None
    depths = TubeDepths()
    app = ControlApp(state, build_registry(state, depths), read_token(config))
    state.events.job_events_per_second = config.control.events_per_second
    state.counters.detailed = True  # /metrics reads the labelled counts and histograms
    server = HypercornConfig()
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    server.bind = [f"{host}:{listen.port}"]
    server.accesslog = None
    server.errorlog = None  # we say what matters ourselves, as structured lines
    server.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.run_ticker)
        nursery.start_soon(
            run_tube_poller,
            state,
            depths,
            config.control.metrics_interval,
            config.connect_timeout,
        )
        binds: list[str] = await nursery.start(serve, app, server)
        url = binds[0] if binds else f"http://{host}:{listen.port}"
        log.info("control plane listening", url=url, token=app.token is not None)
        task_status.started(url)
