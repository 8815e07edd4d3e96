"""The dashboard's read routes (``GET /api/...``, no token): tubes from the board, buried jobs
and bodies from beanstalkd, workers and APIs from the fleet. Listed in ``control.dashboard``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import quote

import greenstalk
import trio

from tubeworker.admin_ops import (
    admin_client,
    attempts,
    buried_records,
    peek_job,
    redacting,
    render_body,
    task_of,
)
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address
from tubeworker.control.asgi import Response, json_response
from tubeworker.control.dashboard_context import (
    FIRST_ROUND_WAIT,
    BadRequest,
    DashboardContext,
    Read,
    job_id_of,
    number_of,
    tube_of,
)
from tubeworker.redact import redact_body
from tubeworker.tubes import INTERNAL_PREFIX

__all__ = ["DETAIL_LIMIT", "PREVIEW_LIMIT", "DashboardReads"]

PREVIEW_LIMIT: Final = 240  # characters of a buried job's body in the list
DETAIL_LIMIT: Final = 16 * 1024  # of a job's body in its detail; the rest is a download
BURIED_READ_LIMIT: Final = 1000  # burial records read per request
DOWNLOAD_HINT: Final = "download it for the whole body"

Params = dict[str, str]


def _rendered(body: bytes, limit: int) -> dict[str, Any]:
    shown = render_body(body, limit, hint=DOWNLOAD_HINT)
    return {"kind": shown.kind, "text": shown.text, "note": shown.note, "size": len(body)}


class DashboardReads:
    """``GET /api/overview``, ``tubes``, ``tube``, ``buried``, ``job``, ``job/body``,
    ``peek``, ``workers`` and ``apis``."""

    def __init__(self, context: DashboardContext) -> None:
        self.context = context

    def routes(self) -> dict[str, Read]:
        return {
            "/api/overview": self.overview,
            "/api/tubes": self.tubes,
            "/api/tube": self.tube,
            "/api/buried": self.buried,
            "/api/job": self.job,
            "/api/job/body": self.job_body,
            "/api/peek": self.peek,
            "/api/workers": self.workers,
            "/api/apis": self.apis,
        }

    # ------------------------------------------------------------------ tubes

    async def overview(self, params: Params) -> Response:
        ctx = self.context
        await ctx.wait_for_every_tube()
        return json_response(
            200,
            {
                "round": ctx.board.round,
                "totals": ctx.board.totals(),
                "trend": list(ctx.board.history.totals),
                "history": ctx.board.history.describe(),
                "servers": sorted(ctx.servers),
                "errors": dict(ctx.depths.server_errors),
                "interval": ctx.interval,
                "sample_every": ctx.board.sample_every,
                "token_configured": ctx.token is not None,
                "actions_enabled": ctx.actions_enabled,
                "internal_prefix": INTERNAL_PREFIX,
                "workers": len(ctx.fleet.workers),
                "troubles": ctx.fleet.troubles(),
                "now": round(time.time(), 3),
            },
        )

    async def tubes(self, params: Params) -> Response:
        board = self.context.board
        await self.context.wait_for_every_tube()
        page = board.page(
            q=params.get("q", ""),
            sort=params.get("sort", "tube"),
            desc=params.get("desc", "") in ("1", "true"),
            page=number_of(params, "page", 1),
            per_page=number_of(params, "per_page", 50),
            internal=params.get("internal", "") in ("1", "true"),
        )
        return json_response(200, {**page, "totals": board.totals()})

    async def tube(self, params: Params) -> Response:
        ctx = self.context
        address, tube = ctx.server(params), tube_of(params)
        key = (str(address), tube)
        depths = ctx.depths
        if key not in depths.tubes:  # new since the last round: ask for one soon
            depths.poke()
            with trio.move_on_after(FIRST_ROUND_WAIT):
                await depths.wait_round()
                if key not in depths.tubes:
                    await depths.wait_round()  # the round asked before the poke
        depth = depths.tubes.get(key)
        if depth is None:
            return json_response(404, {"error": f"tube {tube!r} not seen on {address}"})
        return json_response(
            200,
            {
                **ctx.board.row(key, depth),
                "round": ctx.board.round,
                "trend": ctx.board.history.trend(key),
                "sample_every": ctx.board.sample_every,
                "pause_reason": ctx.pause_reason(*key),
            },
        )

    # ------------------------------------------------------------------ jobs

    async def buried(self, params: Params) -> Response:
        address, tube = self.context.server(params), tube_of(params)
        offset = number_of(params, "offset", 0)
        limit = max(1, min(number_of(params, "limit", 50), 200))
        count, records = await buried_records(address, tube, limit=BURIED_READ_LIMIT)
        records.sort(key=lambda pair: pair[0].job_id)
        shown = records[offset : offset + limit]
        previews = await self._previews(address, [record.job_id for record, _ in shown])
        capped = len(records) >= BURIED_READ_LIMIT
        jobs = [
            {
                "id": record.job_id,
                "age": stats.age,
                "attempts": attempts(stats),
                "kicks": stats.kicks,
                "priority": stats.pri,
                "cause": record.cause,
                "reason": record.reason,
                "traceback": record.traceback or None,
                "id_key": record.id_key,
                "buried_at": record.buried_at,
                "preview": previews.get(record.job_id),
            }
            for record, stats in shown
        ]
        return json_response(
            200,
            {
                "server": str(address),
                "tube": tube,
                "buried": count,
                "recorded": len(records),
                "capped": capped,
                "unrecorded": None if capped else max(0, count - len(records)),
                "offset": offset,
                "limit": limit,
                "jobs": jobs,
            },
        )

    @staticmethod
    async def _previews(address: Address, ids: Sequence[int]) -> dict[int, Any]:
        previews: dict[int, Any] = {}
        if not ids:
            return previews
        async with admin_client(address) as client:
            for job_id in ids:
                try:
                    found = await client.peek(job_id)
                except greenstalk.NotFoundError:
                    continue
                previews[job_id] = _rendered(found.body, PREVIEW_LIMIT)
        return previews

    @staticmethod
    def _job_document(address: Address, found: p.Found, stats: p.JobStats | None) -> dict[str, Any]:
        return {
            "server": str(address),
            "id": found.id,
            "stats": dataclasses.asdict(stats) if stats is not None else None,
            "task": task_of(found.body),
            "body": _rendered(found.body, DETAIL_LIMIT),
            "download": f"/api/job/body?server={quote(str(address))}&id={found.id}",
        }

    async def job(self, params: Params) -> Response:
        address = self.context.server(params)
        found, stats = await peek_job(address, str(job_id_of(params)), None)
        return json_response(200, self._job_document(address, found, stats))

    async def job_body(self, params: Params) -> Response:
        address, job_id = self.context.server(params), job_id_of(params)
        found, _ = await peek_job(address, str(job_id), None)
        disposition = f'attachment; filename="job-{job_id}.bin"'.encode()
        body = redact_body(found.body, redacting())  # [control] redact: downloads too
        return 200, "application/octet-stream", body, ((b"content-disposition", disposition),)

    async def peek(self, params: Params) -> Response:
        address, tube = self.context.server(params), tube_of(params)
        state = params.get("state", "")
        if state not in ("ready", "delayed", "buried"):
            raise BadRequest("state must be ready, delayed or buried")
        found, stats = await peek_job(address, tube, state)
        return json_response(200, self._job_document(address, found, stats))

    # ------------------------------------------------------------------ daemons

    async def _wait_for_fleet(self) -> None:
        fleet = self.context.fleet
        if fleet.unread:
            with trio.move_on_after(FIRST_ROUND_WAIT):
                await fleet.wait_refreshed()

    async def workers(self, params: Params) -> Response:
        await self._wait_for_fleet()
        fleet = self.context.fleet
        return json_response(200, {"workers": fleet.summaries(), "handlers": fleet.handlers()})

    async def apis(self, params: Params) -> Response:
        ctx = self.context
        await self._wait_for_fleet()
        await ctx.wait_for_every_tube()
        paused = [
            {
                "server": server,
                "tube": tube,
                "pause": depth.pause,
                "pause_left": depth.pause_left,
                "reason": ctx.pause_reason(server, tube),
            }
            for (server, tube), depth in sorted(ctx.depths.tubes.items())
            if depth.pause_left > 0
        ]
        fleet = ctx.fleet
        return json_response(
            200,
            {
                "apis": fleet.apis(),
                "paused": paused,
                "fleet_limits": fleet.fleet_limits(),
                "troubles": fleet.troubles(),
            },
        )
