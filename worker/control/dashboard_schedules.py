"""The dashboard's Schedules view: each schedule's tick (next and last fire, paused, its
state) and each heartbeat's last run, read from the tick server as ``tubeworker
schedules`` does; and its actions (token-guarded like the others): trigger one fire now,
pause for a while, resume.

    GET  /api/schedules
    POST /api/schedule {name, action: trigger|pause|resume, seconds (pause: how long)}
"""

from __future__ import annotations

import time
from typing import Any

from tubeworker.admin_ops import EX_NOINPUT, AdminError
from tubeworker.control.asgi import Response, json_response
from tubeworker.control.dashboard_context import (
    Action,
    BadRequest,
    DashboardContext,
    Read,
    seconds_of,
)
from tubeworker.schedule_ops import (
    heartbeat_rows,
    pause_schedule,
    read_rows,
    tick_server,
    trigger,
)

__all__ = ["DashboardSchedules"]

_STALE_AFTER = 3  # intervals without a run: stale (as TubeworkerHeartbeatStale says)


class DashboardSchedules:
    def __init__(self, context: DashboardContext) -> None:
        self.context = context

    def reads(self) -> dict[str, Read]:
        return {"/api/schedules": self.schedules}

    def actions(self) -> dict[str, Action]:
        return {"/api/schedule": self.act}

    def _when(self, name: str) -> str:
        schedule = next(s for s in self.context.schedules if s.name == name)
        if schedule.cron:
            return f"cron {schedule.cron} ({schedule.timezone})"
        return f"every {schedule.every:g} s"

    async def schedules(self, params: dict[str, str]) -> Response:
        del params
        ctx = self.context
        if not ctx.schedules:
            return json_response(200, {"server": None, "schedules": [], "heartbeats": []})
        address = await tick_server(ctx.clock_servers)
        now = time.time()
        rows = await read_rows(address, ctx.schedules)
        tubes = {s.name: s.tube for s in ctx.schedules}
        schedules = [
            {**row.as_json(now), "when": self._when(row.name), "tube": tubes[row.name]}
            for row in rows
        ]
        beats = await heartbeat_rows(address, ctx.heartbeats, now)
        for beat in beats:
            age, every = beat["age"], beat["every"]
            assert isinstance(every, float | int)
            beat["stale"] = isinstance(age, float | int) and age > _STALE_AFTER * every
        return json_response(
            200, {"server": str(address), "schedules": schedules, "heartbeats": beats}
        )

    async def act(self, data: dict[str, Any]) -> dict[str, Any]:
        ctx = self.context
        name, action = data.get("name"), data.get("action")
        schedule = next((s for s in ctx.schedules if s.name == name), None)
        if schedule is None:
            raise AdminError(f"no schedule named {name!r} here", EX_NOINPUT)
        address = await tick_server(ctx.clock_servers)
        if action == "trigger":
            job_id, key = await trigger(address, schedule)
            return {"id": job_id, "fire": key}
        if action == "pause":
            seconds = seconds_of(data, "seconds", 0)
            if seconds <= 0:
                raise BadRequest("seconds is needed: how long to pause")
            row = await pause_schedule(address, schedule, time.time() + seconds)
            return {"paused_until": row.as_json(time.time())["paused_until"]}
        if action == "resume":
            await pause_schedule(address, schedule, None)
            return {"paused_until": None}
        raise BadRequest("action must be trigger, pause or resume")
