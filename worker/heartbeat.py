"""The heartbeat: the built-in task ``tubeworker.heartbeat`` that ``[[heartbeat]]`` puts
into a tube. Running it proves the tube's whole path (put → reserve → run → delete); it
records the run where every daemon reads it back (``tubeworker.heartbeat.TUBE``), then
pings ``ping_url`` if one is set (a dead-man's switch outside the fleet)."""

from __future__ import annotations

import os
import socket
import time

import httpx

from tubeworker.job import Job, handler
from tubeworker.schedule import HeartbeatRecord, record_tube

__all__ = ["heartbeat"]

_PING_TIMEOUT = 10.0
_RECORD_TTR = 60


@handler()
async def heartbeat(job: Job) -> None:
    payload = job.payload if isinstance(job.payload, dict) else {}
    record = HeartbeatRecord(
        tube=job.tube,
        ran=time.time(),
        fire=job.id_key,
        by=f"{socket.gethostname()}:{os.getpid()}",
    )
    await job.put(
        record.encode(), tube=record_tube(job.tube), priority=record.priority, ttr=_RECORD_TTR
    )
    url = payload.get("ping_url")
    if isinstance(url, str) and url:
        try:
            response = await job.http.get(url, timeout=_PING_TIMEOUT)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            # The run is recorded: a ping that fails is the pinged service's problem to
            # notice (it alerts on missing pings), not a reason to run the heartbeat again.
            job.log.warning("heartbeat ping failed", url=url, error=str(exc) or type(exc).__name__)
