"""Worker processes for compute-profile pools (trio-parallel), owned by the pool.

Two things differ from trio-parallel's default context:

- The workers ignore SIGINT and SIGTERM. Service managers signal the whole process group
  (systemd's KillMode=mixed, supervisor's stopasgroup): the daemon drains and then closes
  this pool, so a worker that died of that signal would only turn a clean stop into a
  "graceful shutdown failed" traceback and a lost job result.
- The context lives in the pool's nursery, so it is closed (its workers stopped) when the
  pool stops, not at interpreter exit.

And handlers there can put jobs (``job.put_sync()``, or ``await job.put()`` under a
``trio.run`` of their own): each run carries the daemon's servers as plain data (a
:class:`PutRoute`), and the worker process keeps one blocking
:class:`~tubeworker.producer.Producer` per route, connected on first use and reused by the
jobs it runs next. A worker process does not know which server its job came from: its
puts go to the first of the daemon's servers that stores them, in their configured order.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    # Not at run time: a worker process imports this module (to unpickle the init below)
    # before that init ignores SIGTERM; the shorter that window, the fewer workers a
    # process-group stop that comes just then kills.
    from tubeworker.beanstalk.client import Address
    from tubeworker.producer import Producer

__all__ = ["Compute", "PutRoute", "WorkerStopped", "open_compute"]

_IDLE_TIMEOUT = 600.0  # an idle worker process exits after this long
_GRACE_PERIOD = 10.0  # closing waits this long for workers to exit before killing them


@dataclass(frozen=True, slots=True)
class PutRoute:
    """Where the puts of compute-profile handlers go: plain data, sent with each run."""

    servers: tuple[Address, ...]
    connect_timeout: float = 5.0
    reply_timeout: float = 10.0


def _ignore_stop_signals() -> bool:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return False  # trio-parallel's init contract: the value is unused


class Compute:
    """Runs a sync function in a worker process; a cancel kills the worker (the job is
    returned or retried by the lane; the process is replaced)."""

    def __init__(self, context: Any, route: PutRoute | None = None) -> None:
        self._context = context
        self._route = route  # None: handlers there have no job.put()

    async def run(
        self, func: Callable[..., Any], *args: Any, limiter: trio.CapacityLimiter | None
    ) -> Any:
        route = self._route
        if route is not None:
            args = (route, func, *args)
            func = _run_with_puts
        import trio_parallel  # loaded already: open_compute imported it

        try:
            return await self._context.run_sync(func, *args, kill_on_cancel=True, limiter=limiter)
        except trio_parallel.BrokenWorkerError as exc:
            signum = _stop_signal_of(exc)
            if signum is None:
                raise  # it crashed (a segfault, the OOM killer): the handler's failure
            raise WorkerStopped(
                f"its worker process was stopped by {signal.Signals(signum).name} "
                "(a stop sent to the whole process group)"
            ) from None


class WorkerStopped(Exception):
    """A worker process got the stop signal meant for the whole group (systemd's
    KillMode=mixed, supervisor's stopasgroup) before it could ignore it: the job is not
    at fault and goes back to beanstalkd without an outcome."""


_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def _stop_signal_of(exc: BaseException) -> int | None:
    """The stop signal that killed the worker process of a BrokenWorkerError, if one did
    (trio-parallel gives the process as an argument; its exitcode is -signum)."""
    for arg in exc.args:
        exitcode = getattr(arg, "exitcode", None)
        if isinstance(exitcode, int) and exitcode < 0 and -exitcode in _STOP_SIGNALS:
            return -exitcode
    return None


# ---- in the worker process

_producers: dict[PutRoute, Producer] = {}  # this worker process's, one per route


class _WorkerServices:
    """What a job rebuilt in a worker process reaches: puts through the process's producer.
    The job's connection (touch) and the daemon's HTTP client stay in the daemon."""

    __slots__ = ("_producer",)

    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    def put_sync(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int:
        return self._producer.put(tube, body, priority=priority, delay=delay, ttr=ttr)

    async def put(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int:
        put = partial(self.put_sync, body, tube=tube, priority=priority, delay=delay, ttr=ttr)
        return await trio.to_thread.run_sync(put)

    async def touch(self) -> None:
        raise RuntimeError(_ONLY_IN_THE_DAEMON.format(what="touch"))

    @property
    def http(self) -> Any:
        raise RuntimeError(_ONLY_IN_THE_DAEMON.format(what="http"))

    def api(self, name: str | None = None, **options: Any) -> Any:
        raise RuntimeError(_ONLY_IN_THE_DAEMON.format(what="api"))


_ONLY_IN_THE_DAEMON = (
    "job.{what}() is not available in a compute-profile worker process (the job's "
    "connection and the shared HTTP client are in the daemon); job.put_sync() is"
)


def _run_with_puts(route: PutRoute, func: Callable[..., Any], *args: Any) -> Any:
    """In a worker process: run ``func`` (which rebuilds the job from its record) with
    ``job.put()`` available."""
    from tubeworker.job import services_for_records
    from tubeworker.producer import Producer

    producer = _producers.get(route)
    if producer is None:
        producer = _producers[route] = Producer(
            route.servers,
            connect_timeout=route.connect_timeout,
            reply_timeout=route.reply_timeout,
        )
    with services_for_records(_WorkerServices(producer)):
        return func(*args)


@asynccontextmanager
async def open_compute(route: PutRoute | None = None) -> AsyncIterator[Compute]:
    """A pool's worker processes; ``route``: where their handlers' puts go."""
    import trio_parallel  # imported here: only compute pools pay for the process pool

    async with trio_parallel.open_worker_context(
        idle_timeout=_IDLE_TIMEOUT, init=_ignore_stop_signals, grace_period=_GRACE_PERIOD
    ) as context:
        yield Compute(context, route)
