"""The dashboard's action routes (``POST /api/...``): kick, delete, pause, put, quiet or
resume a worker. The router (``control.dashboard``) checks the token, reads the JSON body
and writes the log line; each method here does one thing and says what it did."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tubeworker.admin_ops import (
    EX_NOINPUT,
    EX_UNAVAILABLE,
    AdminError,
    admin_client,
    delete_job,
    kick_buried,
    kick_by_reason,
    kick_job,
    pause_tube,
    put_job,
)
from tubeworker.beanstalk.protocol import DEFAULT_PRIORITY, DEFAULT_TTR, MAX_INT
from tubeworker.contracts import PayloadInvalid, TooNew, declared
from tubeworker.control.dashboard_context import (
    Action,
    BadRequest,
    DashboardContext,
    job_id_of,
    number_of,
    seconds_of,
    tube_of,
)
from tubeworker.envelope import BadEnvelope, read_envelope

__all__ = ["DashboardActions", "check_payload"]

Data = dict[str, Any]


def check_payload(body: bytes) -> None:
    """An envelope of a typed task (one whose handler this process loaded) must fit its
    payload type, as a producer's put must: the reason names each failing field. Any
    other body goes as it is."""
    try:
        envelope = read_envelope(body)
    except BadEnvelope:
        return  # a raw body, for a pool bound to one handler
    contract = declared(envelope.task)
    if contract is None:
        return
    try:
        contract.accept(envelope.payload, envelope.v, task=envelope.task)
    except PayloadInvalid as exc:
        raise BadRequest(str(exc)) from None
    except TooNew:
        return  # for newer workers than this process knows: theirs to check


class DashboardActions:
    """``POST /api/kick``, ``kick-job``, ``kick-reason``, ``delete``, ``pause``, ``put`` and
    ``worker``."""

    def __init__(self, context: DashboardContext) -> None:
        self.context = context

    def routes(self) -> dict[str, Action]:
        return {
            "/api/kick": self.kick,
            "/api/kick-job": self.kick_job,
            "/api/kick-reason": self.kick_reason,
            "/api/delete": self.delete,
            "/api/pause": self.pause,
            "/api/put": self.put,
            "/api/worker": self.worker,
        }

    async def kick(self, data: Data) -> Data:
        address, tube = self.context.server(data), tube_of(data)
        bound = number_of(data, "count", MAX_INT) or MAX_INT
        kicked = await kick_buried(address, tube, bound)
        if kicked is None:
            raise AdminError(f"tube {tube!r} not found on {address}", EX_NOINPUT)
        self.context.depths.poke()
        return {"kicked": kicked}

    async def kick_job(self, data: Data) -> Data:
        address, job_id = self.context.server(data), job_id_of(data)
        await kick_job(address, job_id)
        self.context.depths.poke()
        return {"kicked": 1}

    async def kick_reason(self, data: Data) -> Data:
        address, tube = self.context.server(data), tube_of(data)
        text = data.get("reason")
        if not isinstance(text, str) or not text:
            raise BadRequest("a reason (text, or a cause) is needed")
        kicked = await kick_by_reason(address, tube, text)
        self.context.depths.poke()
        return {"kicked": kicked}

    async def delete(self, data: Data) -> Data:
        address, job_id = self.context.server(data), job_id_of(data)
        async with admin_client(address) as client:
            deleted = await delete_job(client, job_id)
        if not deleted:
            raise AdminError(
                f"job {job_id} not found (or reserved by a worker: only its connection may "
                "delete it)",
                EX_NOINPUT,
            )
        self.context.depths.poke()
        return {"deleted": 1}

    async def pause(self, data: Data) -> Data:
        ctx = self.context
        address, tube = ctx.server(data), tube_of(data)
        seconds = seconds_of(data, "seconds", -1)
        if seconds < 0:
            raise BadRequest("seconds is needed (0 resumes)")
        if not await pause_tube(address, tube, seconds):
            raise AdminError(f"tube {tube!r} not found on {address}", EX_NOINPUT)
        if seconds:
            ctx.paused_here[(str(address), tube)] = (seconds, time.time())
        else:
            ctx.paused_here.pop((str(address), tube), None)
        ctx.depths.poke()
        return {"paused": seconds}

    async def put(self, data: Data) -> Data:
        address, tube = self.context.server(data), tube_of(data)
        body = data.get("body")
        if not isinstance(body, str):
            raise BadRequest("body must be text")
        check_payload(body.encode())
        job_id = await put_job(
            address,
            tube,
            body.encode(),
            priority=number_of(data, "priority", DEFAULT_PRIORITY),
            delay=seconds_of(data, "delay", 0),
            ttr=seconds_of(data, "ttr", DEFAULT_TTR) or 1,
        )
        self.context.depths.poke()
        return {"id": job_id, "bytes": len(body.encode())}

    async def worker(self, data: Data) -> Data:
        ctx = self.context
        worker, action = data.get("worker"), data.get("action")
        if worker not in ctx.fleet.workers:
            raise BadRequest(f"unknown worker {worker!r}")
        if action not in ("quiet", "resume"):
            raise BadRequest("action must be quiet or resume")
        assert ctx.token is not None  # authorized
        try:
            async with httpx.AsyncClient(trust_env=False) as http:
                answer = await ctx.fleet.set_quiet(str(worker), action == "quiet", ctx.token, http)
        except httpx.HTTPError as exc:
            raise AdminError(f"worker {worker} did not {action}: {exc}", EX_UNAVAILABLE) from None
        ctx.fleet.poke()
        return {"quiet": bool(answer.get("quiet", action == "quiet"))}
