"""Worker processes for compute-profile pools (trio-parallel), owned by the pool.

Two things differ from trio-parallel's default context:

- The workers ignore SIGINT and SIGTERM. Service managers signal the whole process group
  (systemd's KillMode=mixed, supervisor's stopasgroup): the daemon drains and then closes
  this pool, so a worker that died of that signal would only turn a clean stop into a
  "graceful shutdown failed" traceback and a lost job result.
- The context lives in the pool's nursery, so it is closed (its workers stopped) when the
  pool stops, not at interpreter exit.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

__all__ = ["Compute", "open_compute"]

_IDLE_TIMEOUT = 600.0  # an idle worker process exits after this long
_GRACE_PERIOD = 10.0  # closing waits this long for workers to exit before killing them


def _ignore_stop_signals() -> bool:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return False  # trio-parallel's init contract: the value is unused


class Compute:
    """Runs a sync function in a worker process; a cancel kills the worker (the job is
    returned or retried by the lane; the process is replaced)."""

    def __init__(self, context: Any) -> None:
        self._context = context

    async def run(
        self, func: Callable[..., Any], *args: Any, limiter: trio.CapacityLimiter | None
    ) -> Any:
        return await self._context.run_sync(func, *args, kill_on_cancel=True, limiter=limiter)


@asynccontextmanager
async def open_compute() -> AsyncIterator[Compute]:
    import trio_parallel  # imported here: only compute pools pay for the process pool

    async with trio_parallel.open_worker_context(
        idle_timeout=_IDLE_TIMEOUT, init=_ignore_stop_signals, grace_period=_GRACE_PERIOD
    ) as context:
        yield Compute(context)
