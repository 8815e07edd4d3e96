"""The poller: one task per process that reads beanstalkd's own figures for /metrics,
the dashboard and the fleet view. Each round asks every configured server for ``stats``
(the server's health: up, connections, jobs, binlog, draining) and ``stats-tube`` for the
tubes the pools work on (every tube of the servers while the dashboard is watched), at
``metrics_interval`` with jitter; it can be woken early (``TubeDepths.poke``), never more
often than every ``min_gap``: the rate is the poller's, whatever the viewers."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import greenstalk
import structlog
import trio

from tubeworker.batches.model import BATCH_PREFIX
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect, raise_for_reply
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.runtime.state import WorkerState

__all__ = ["ServerSeen", "TubeDepth", "TubeDepths", "run_tube_poller"]

log = structlog.get_logger("tubeworker")

_THROUGHPUT_WEIGHT = 0.3  # how fast the per-tube throughput estimate follows new polls
_PIPELINE: Final = 500  # stats-tube commands per write


@dataclass
class ServerSeen:
    """A server as the last poll found it: its ``stats``, or why it did not answer."""

    stats: p.ServerStats | None = None  # the last answer (kept while it is down)
    batches: int = 0  # batches it keeps (its tubeworker.batch.* tubes)
    up: bool = False
    error: str | None = None
    at: float = 0.0  # wall clock of the last poll


@dataclass
class TubeDepth:
    ready: int = 0
    reserved: int = 0
    delayed: int = 0
    buried: int = 0
    urgent: int = 0
    waiting: int = 0
    pause_left: int = 0
    throughput: float = 0.0  # jobs deleted per second by this process, recent
    pause: int = 0  # the pause's length (pause_left is what remains of it)
    total_jobs: int = 0  # put since the tube was created
    watching: int = 0  # connections watching it (stats-tube current-watching), not ours
    deletes: int = 0  # stats-tube cmd-delete: deletes by every client since then
    pooled: bool = True  # a tube this process's pools work on: exported in /metrics
    _deleted: int = 0
    _at: float = 0.0

    @property
    def backlog_seconds(self) -> float:
        """How long the ready jobs would take at the recent rate: the figure to scale on."""
        if self.ready == 0:
            return 0.0
        return self.ready / self.throughput if self.throughput > 0 else math.inf


@dataclass
class TubeDepths:
    """The latest ``stats-tube`` per (server, tube), and what the poller is asked to do."""

    tubes: dict[tuple[str, str], TubeDepth] = field(default_factory=dict)
    polls: int = 0
    errors: int = 0
    rounds: int = 0  # rounds finished (every server asked once)
    every_tube_rounds: int = 0  # of them, rounds that asked for every tube
    last_round_every_tube: bool = False
    #: Server → why its last poll failed (absent when it answered).
    server_errors: dict[str, str] = field(default_factory=dict)
    #: Every configured server's own ``stats`` (its health), by address.
    servers: dict[str, ServerSeen] = field(default_factory=dict)
    #: Called after every round (the dashboard's board reads the new depths).
    listeners: list[Callable[[], None]] = field(default_factory=list)
    _every_tube_until: float = 0.0  # monotonic
    _wake: trio.Event = field(default_factory=trio.Event)
    _start_now: trio.Event = field(default_factory=trio.Event)  # skips min_gap once
    _round_done: trio.Event = field(default_factory=trio.Event)

    @property
    def every_tube(self) -> bool:
        return time.monotonic() < self._every_tube_until

    def watch_every_tube(self, seconds: float) -> None:
        """Poll every tube of the servers (not only the pools') for the next ``seconds``:
        the dashboard is being watched. Starting it wakes the poller."""
        starting = not self.every_tube
        self._every_tube_until = max(self._every_tube_until, time.monotonic() + seconds)
        if starting:  # a first view waits for this round: not for the minimum gap too
            self._start_now.set()
            self.poke()

    def poke(self) -> None:
        """Poll again soon (not before the poller's ``min_gap``)."""
        self._wake.set()

    async def wait_round(self) -> None:
        """Until the next round of polls has finished."""
        await self._round_done.wait()

    def _finished_round(self, every_tube: bool) -> None:
        self.rounds += 1
        self.every_tube_rounds += every_tube
        self.last_round_every_tube = every_tube
        for listener in tuple(self.listeners):
            listener()
        self._round_done.set()
        self._round_done = trio.Event()


def _deleted_by_tube(state: WorkerState) -> dict[str, int]:
    deleted: dict[str, int] = {}
    for (tube, _handler, outcome, _cause), count in state.counters.outcomes.items():
        if outcome == "deleted":
            deleted[tube] = deleted.get(tube, 0) + count
    return deleted


def _apply(depth: TubeDepth, stats: p.TubeStats, done: int, now: float) -> None:
    depth.ready = stats.current_jobs_ready
    depth.reserved = stats.current_jobs_reserved
    depth.delayed = stats.current_jobs_delayed
    depth.buried = stats.current_jobs_buried
    depth.urgent = stats.current_jobs_urgent
    depth.waiting = stats.current_waiting
    depth.pause_left = stats.pause_time_left
    depth.pause = stats.pause
    depth.total_jobs = stats.total_jobs
    # The poller's own connection watches "default" (every connection does) while it asks.
    depth.watching = stats.current_watching - (stats.name == "default")
    depth.deletes = stats.cmd_delete
    if depth._at:
        rate = (done - depth._deleted) / max(now - depth._at, 1e-3)
        w = _THROUGHPUT_WEIGHT
        depth.throughput = (1 - w) * depth.throughput + w * rate
    depth._deleted, depth._at = done, now


async def _stats_tubes(client: Client, tubes: Sequence[str]) -> dict[str, p.TubeStats]:
    """``stats-tube`` of each tube, pipelined; tubes gone meanwhile are left out."""
    found: dict[str, p.TubeStats] = {}
    for start in range(0, len(tubes), _PIPELINE):
        chunk = tubes[start : start + _PIPELINE]
        replies = await client.pipeline([p.StatsTube(tube) for tube in chunk])
        for tube, reply in zip(chunk, replies, strict=True):
            if isinstance(reply, p.TubeStats):
                found[tube] = reply
            elif not isinstance(reply, p.NotFound):  # no jobs and no watchers: gone for now
                raise_for_reply(reply)
    return found


async def _poll_server(
    address: Address,
    pooled: set[str],
    every_tube: bool,
    depths: TubeDepths,
    deleted: dict[str, int],
    timeout: float,
) -> None:
    now = time.monotonic()
    server = str(address)
    with trio.fail_after(timeout * 2):
        client = await connect(address, connect_timeout=timeout, reply_timeout=timeout)
        try:
            seen = depths.servers.setdefault(server, ServerSeen())
            seen.stats = await client.stats()
            every = await client.list_tubes()  # one reply: the batches it keeps, counted
            seen.batches = sum(1 for tube in every if tube.startswith(BATCH_PREFIX))
            wanted = set(pooled)
            if every_tube:  # tubeworker's own too: the dashboard shows them when asked
                wanted.update(every)
            found = await _stats_tubes(client, sorted(wanted))
        finally:
            await client.aclose()
    for key in [k for k in depths.tubes if k[0] == server and k[1] not in found]:
        del depths.tubes[key]  # gone, or no longer asked for
    for tube, stats in found.items():
        depth = depths.tubes.setdefault((server, tube), TubeDepth())
        depth.pooled = tube in pooled
        _apply(depth, stats, deleted.get(tube, 0), now)


async def run_tube_poller(
    state: WorkerState | None,
    depths: TubeDepths,
    interval: float,
    connect_timeout: float,
    *,
    servers: Sequence[Address] = (),
    min_gap: float = 0.5,
    rng: random.Random | None = None,
) -> None:
    """Read ``stats-tube`` for the pools' tubes on their servers, forever: one task per
    process however many lanes and viewers there are; jittered so a fleet does not poll
    in step. ``servers``: asked for every tube while ``depths.every_tube`` (the
    dashboard's; without a ``state``, as ``tubeworker dashboard`` runs it, those are all
    it asks)."""
    rng = rng or random.Random()
    while True:
        depths._wake = trio.Event()  # a poke from now on asks for the next round
        depths._start_now = trio.Event()
        every_tube = depths.every_tube
        pooled: dict[Address, set[str]] = {}
        for lane in state.lanes if state is not None else ():
            stats = lane.statistics()
            pooled.setdefault(stats.address, set()).update(stats.tubes)
        # Every configured server is asked for its own stats; its tubes only where pools
        # work (or every tube while the dashboard is watched).
        addresses = list(pooled) + [a for a in servers if a not in pooled]
        deleted = _deleted_by_tube(state) if state is not None else {}
        for address in addresses:
            try:
                await _poll_server(
                    address,
                    pooled.get(address, set()),
                    every_tube,
                    depths,
                    deleted,
                    connect_timeout,
                )
                depths.polls += 1
                depths.server_errors.pop(str(address), None)
                seen = depths.servers.setdefault(str(address), ServerSeen())
                seen.up, seen.error, seen.at = True, None, time.time()
            except (
                ConnectionLostError,
                ProtocolError,
                trio.TooSlowError,
                OSError,
                greenstalk.Error,
            ) as exc:
                depths.errors += 1
                error = str(exc) or type(exc).__name__
                depths.server_errors[str(address)] = error
                seen = depths.servers.setdefault(str(address), ServerSeen())
                seen.up, seen.error, seen.at = False, error, time.time()
                log.debug("tube stats unavailable", server=str(address), error=str(exc))
        if not every_tube:  # the dashboard's tubes of servers no pool works on: not kept
            polled = {str(address) for address in pooled}
            for key in [k for k in depths.tubes if k[0] not in polled]:
                del depths.tubes[key]
        depths._finished_round(every_tube)
        with trio.move_on_after(interval * rng.uniform(0.8, 1.2)):
            with trio.move_on_after(min_gap):  # a poke waits out the minimum gap...
                await depths._start_now.wait()  # ...unless a first view is waiting
            await depths._wake.wait()
