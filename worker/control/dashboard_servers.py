"""The dashboard's Servers view: beanstalkd itself, per server, as the poller last read
it (``stats``): up or why not, version, uptime, connections, jobs, job timeouts,
draining, binlog files and records, CPU, host name and id; and the history of its
connections, jobs and CPU over the last 30 minutes (gaps while it was down).

    GET /api/servers
"""

from __future__ import annotations

import dataclasses
import time

from tubeworker.control.asgi import Response, json_response
from tubeworker.control.dashboard_context import DashboardContext, Read

__all__ = ["DashboardServers"]


class DashboardServers:
    def __init__(self, context: DashboardContext) -> None:
        self.context = context

    def reads(self) -> dict[str, Read]:
        return {"/api/servers": self.servers}

    async def servers(self, params: dict[str, str]) -> Response:
        del params
        ctx = self.context
        await ctx.wait_for_every_tube()  # a round of polls has read every server
        now = time.time()
        rows = []
        for name in sorted({*ctx.servers, *ctx.depths.servers}):
            seen = ctx.depths.servers.get(name)
            stats = None if seen is None or seen.stats is None else seen.stats
            rows.append(
                {
                    "server": name,
                    "up": bool(seen and seen.up),
                    "error": None if seen is None else seen.error,
                    "read_ago": None if seen is None or not seen.at else round(now - seen.at, 1),
                    "stats": None if stats is None else dataclasses.asdict(stats),
                    "history": ctx.board.server_history.describe(name),
                }
            )
        return json_response(200, {"servers": rows})
