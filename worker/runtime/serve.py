"""Run a pool: its lanes, its tube discovery, and (compute profile) its worker processes."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack

import trio

from tubeworker.config import PoolConfig
from tubeworker.runtime.lane import Lane
from tubeworker.runtime.pool import Pool
from tubeworker.runtime.processes import open_compute
from tubeworker.runtime.services import Services

__all__ = ["run_pool"]


async def run_pool(
    config: PoolConfig,
    services: Services,
    *,
    task_status: trio.TaskStatus[Sequence[Lane]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the pool until every lane has returned (drained).

    ``concurrency`` is split into lanes of at most ``jobs_per_connection`` jobs, with at
    least one lane per server, spread over the servers in turn.
    """
    async with AsyncExitStack() as stack:
        processes = None
        if config.profile == "compute":
            processes = await stack.enter_async_context(open_compute(services.put_route))
        pool = Pool(config, services, processes)
        servers = pool.servers
        lanes = [
            Lane(pool, i, servers[i % len(servers)], size)
            for i, size in enumerate(pool.lane_sizes())
        ]
        async with trio.open_nursery() as nursery:
            discovery = trio.CancelScope()
            if pool.patterns:

                async def discover() -> None:
                    with discovery:
                        await pool.discover_tubes()

                nursery.start_soon(discover)
            async with trio.open_nursery() as lane_nursery:
                for lane in lanes:
                    lane_nursery.start_soon(lane.run)
                task_status.started(lanes)
            discovery.cancel()
