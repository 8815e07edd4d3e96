"""Helpers to run the daemon in-process against a real beanstalkd and watch the broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import greenstalk
import trio

from tests.support.waiting import wait_until
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import open_client, parse_address
from tubeworker.config import Config, LoggingConfig, PoolConfig, RetrySettings
from tubeworker.job import Middleware
from tubeworker.registry import Registry
from tubeworker.runtime.state import WorkerState
from tubeworker.service.daemon import run_daemon

__all__ = [
    "make_config",
    "prefill",
    "running_daemon",
    "tube_totals",
    "wait_tubes_empty",
]


def make_config(
    address: str,
    tubes: Sequence[str] = ("jobs",),
    *,
    concurrency: int = 4,
    handler: str | None = None,
    retry: RetrySettings | None = None,
    pool_timeout: float | None = None,
    **worker: Any,
) -> Config:
    pool = PoolConfig(
        name="test",
        tubes=tuple(tubes),
        concurrency=concurrency,
        handler=handler,
        timeout=pool_timeout,
        retry=retry or RetrySettings(max_attempts=3, backoff_base=1.0, backoff_cap=1.0),
    )
    config = Config(
        pools=(pool,),
        servers=(parse_address(address),),
        drain_timeout=5.0,
        logging=LoggingConfig(format="json", job_lines=True),
        source="test",
    )
    return replace(config, **worker) if worker else config


@asynccontextmanager
async def running_daemon(
    config: Config,
    functions: dict[str, Callable[..., Any]],
    *,
    middleware: Sequence[Middleware] = (),
) -> AsyncIterator[WorkerState]:
    """Run the daemon in a nursery; on exit, drain it and wait until it has stopped."""
    registry = Registry.from_functions(functions)
    registry.middleware = tuple(middleware)
    async with trio.open_nursery() as nursery:
        state: WorkerState = await nursery.start(partial(run_daemon, config, registry))
        try:
            yield state
        finally:
            state.begin_drain("test finished")


async def prefill(
    address: str,
    tube: str,
    bodies: Iterable[bytes],
    *,
    priority: int = 1024,
    delay: int = 0,
    ttr: int = 60,
    batch: int = 500,
) -> list[int]:
    """Put bodies with pipelined writes; returns their ids in order."""
    ids: list[int] = []
    async with open_client(address) as client:
        await client.use(tube)
        chunk: list[p.Command] = []

        async def flush() -> None:
            for reply in await client.pipeline(chunk):
                assert isinstance(reply, p.Inserted), reply
                ids.append(reply.id)
            chunk.clear()

        for body in bodies:
            chunk.append(p.Put(body, priority, delay, ttr))
            if len(chunk) >= batch:
                await flush()
        if chunk:
            await flush()
    return ids


async def tube_totals(address: str, tubes: Iterable[str]) -> dict[str, int]:
    totals = {"ready": 0, "reserved": 0, "delayed": 0, "buried": 0}
    async with open_client(address) as client:
        for tube in tubes:
            try:
                stats = await client.stats_tube(tube)
            except greenstalk.NotFoundError:  # no jobs and no watchers: the tube is gone
                continue
            totals["ready"] += stats.current_jobs_ready
            totals["reserved"] += stats.current_jobs_reserved
            totals["delayed"] += stats.current_jobs_delayed
            totals["buried"] += stats.current_jobs_buried
    return totals


async def wait_tubes_empty(
    address: str,
    tubes: Iterable[str],
    *,
    timeout: float = 30.0,
    buried: int | None = None,
    delayed_ok: bool = False,
) -> None:
    """Until no job is ready, reserved or delayed (and, if given, ``buried`` are buried);
    ``delayed_ok``: jobs released for later count as handled."""
    names = list(tubes)

    async def empty() -> bool:
        t = await tube_totals(address, names)
        done = t["ready"] + t["reserved"] + (0 if delayed_ok else t["delayed"]) == 0
        return done and (buried is None or t["buried"] == buried)

    await wait_until(empty, timeout=timeout, what=f"tubes {names} to empty")
