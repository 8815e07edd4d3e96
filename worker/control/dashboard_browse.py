"""The dashboard's job browser (on a tube's view): a tube's jobs by state, a page at a
time, with a search over their bodies, by the id scan of tubeworker.browse_ops; and the
bulk actions (token-guarded like the others): move a tube's jobs of one state to another
tube, put a listed job again.

    GET  /api/jobs?server=&tube=&state=ready,delayed,buried&from=&limit=&grep=
    POST /api/move {server, tube, to, state, kick?, limit?}

A move of many jobs is sent by the page in chunks (``limit`` jobs a request), so that its
Stop button can end it between two chunks: every job is put into the other tube before it
is deleted from this one, so a move stopped (or cut) midway leaves each job in one tube or
the other, never none.
"""

from __future__ import annotations

from typing import Any

from tubeworker.admin_ops import admin_client, render_body
from tubeworker.browse_ops import STATES, list_jobs, move_jobs
from tubeworker.control.asgi import Response, json_response
from tubeworker.control.dashboard_context import (
    Action,
    BadRequest,
    DashboardContext,
    Read,
    number_of,
    tube_of,
)

__all__ = ["DashboardBrowse"]

_MAX_PAGE = 200
_MAX_MOVE = 10_000  # jobs one /api/move request may move (the page sends 200 at a time)
_PREVIEW = 300  # characters of a body shown in the list (View shows it all)


def _states(value: object) -> tuple[str, ...]:
    states = tuple(s for s in str(value or "ready,delayed,buried").split(",") if s)
    if not states or any(s not in STATES for s in states):
        raise BadRequest(f"state must be among {', '.join(STATES)}")
    return states


class DashboardBrowse:
    def __init__(self, context: DashboardContext) -> None:
        self.context = context

    def reads(self) -> dict[str, Read]:
        return {"/api/jobs": self.jobs}

    def actions(self) -> dict[str, Action]:
        return {"/api/move": self.move}

    async def jobs(self, params: dict[str, str]) -> Response:
        address, tube = self.context.server(params), tube_of(params)
        limit = number_of(params, "limit", 50, high=_MAX_PAGE) or 50
        start = number_of(params, "from", 1) or 1
        async with admin_client(address) as client:
            page = await list_jobs(
                client, tube, _states(params.get("state")), start=start, limit=limit,
                grep=params.get("grep") or None,
            )  # fmt: skip
        jobs = [
            {
                "id": job.id,
                "state": job.stats.state,
                "priority": job.stats.pri,
                "age": job.stats.age,
                "time_left": job.stats.time_left,
                "reserves": job.stats.reserves,
                "bytes": len(job.body),
                "preview": render_body(job.body, _PREVIEW).text,
            }
            for job in page.jobs
        ]
        return json_response(
            200, {"jobs": jobs, "next_from": page.next_from, "scanned": page.scanned}
        )

    async def move(self, data: dict[str, Any]) -> dict[str, Any]:
        address, tube = self.context.server(data), tube_of(data)
        to = tube_of({"tube": data.get("to")})
        states = _states(data.get("state"))
        limit = number_of(data, "limit", 0, high=_MAX_MOVE) or None
        async with admin_client(address) as client, admin_client(address) as reader:
            result = await move_jobs(
                client,
                tube,
                to,
                states=states,
                kick=bool(data.get("kick")),
                reader=reader,
                limit=limit,
            )
        self.context.depths.poke()
        return {
            "moved": len(result.moved),
            "skipped": len(result.skipped),
            "matched": result.matched,
            "limit": limit,
        }
