"""The dashboard's Batches view (docs/workflows.md#batches): every batch of every server
the dashboard knows, read from beanstalkd as ``batch_ops`` reads them (nothing is
changed: no action here), and one batch with its callbacks.

    GET /api/batches                    every batch, newest first; each server's error apart
    GET /api/batch?server=&id=          one batch (404 when the server has no such batch)

A server that cannot be read is one entry of ``errors`` (and its row of ``servers`` says
why): the batches of the others are still answered. Each server is read on its own
connection, all of them at once, within ``SERVER_DEADLINE``.
"""

from __future__ import annotations

import time
from typing import Final

import trio

from tubeworker.admin_ops import EX_NOINPUT, EXPECTED, AdminError, admin_client, error_line
from tubeworker.batch_ops import MAX_LISTED, BatchRow, batch_row, list_batches
from tubeworker.beanstalk.client import Address
from tubeworker.control.asgi import Response, json_response
from tubeworker.control.dashboard_context import BadRequest, DashboardContext, Read
from tubeworker.envelope import valid_batch_id

__all__ = ["SERVER_DEADLINE", "DashboardBatches"]

#: A server that has not answered the listing within this long is reported, not waited for
#: (below the route's own deadline, so that the others are still answered).
SERVER_DEADLINE: Final = 15.0


class DashboardBatches:
    def __init__(self, context: DashboardContext) -> None:
        self.context = context

    def reads(self) -> dict[str, Read]:
        return {"/api/batches": self.batches, "/api/batch": self.batch}

    async def batches(self, params: dict[str, str]) -> Response:
        del params
        servers = self.context.servers
        found: dict[str, list[BatchRow]] = {}
        errors: dict[str, str] = {}

        async def read(name: str, address: Address) -> None:
            with trio.move_on_after(SERVER_DEADLINE):
                try:
                    async with admin_client(address) as client:
                        found[name] = await list_batches(client, address)
                except EXPECTED as exc:
                    errors[name] = error_line(exc)[0]
                return
            errors[name] = f"no answer within {SERVER_DEADLINE:g} s"

        async with trio.open_nursery() as nursery:
            for name, address in servers.items():
                nursery.start_soon(read, name, address)
        rows = [row for listed in found.values() for row in listed]
        rows.sort(key=lambda row: (row.created is None, -(row.created or 0.0), row.id))
        return json_response(
            200,
            {
                "batches": [row.as_json() for row in rows],
                "servers": [
                    {
                        "server": name,
                        "batches": len(found.get(name, ())),
                        "capped": len(found.get(name, ())) >= MAX_LISTED,
                        "error": errors.get(name),
                    }
                    for name in sorted(servers)
                ],
                "errors": errors,
                "limit": MAX_LISTED,
                "now": round(time.time(), 3),
            },
        )

    async def batch(self, params: dict[str, str]) -> Response:
        address = self.context.server(params)
        batch_id = params.get("id", "")
        if not batch_id:
            raise BadRequest("a batch id is needed (id=)")
        if not valid_batch_id(batch_id):
            raise BadRequest(f"{batch_id!r} is not a batch id (lowercase letters and digits)")
        async with admin_client(address) as client:
            row = await batch_row(client, address, batch_id)
        if row is None:
            raise AdminError(
                f"no batch {batch_id} on {address}: never opened there, or forgotten after "
                "its retention",
                EX_NOINPUT,
            )
        return json_response(200, {**row.as_json(), "now": round(time.time(), 3)})
