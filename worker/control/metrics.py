"""Prometheus metrics, read at scrape time from what the daemon already counts.

The hot path pays nothing here: the collector turns the process's plain counters
(``JobCounters``) and the latest tube depths into metric families when ``/metrics`` is
scraped. Tube depths come from one task per process (:func:`run_tube_poller`) that asks
``stats-tube`` for every tube the pools work on, at ``metrics_interval`` with jitter. Where
the dashboard is served it asks for every tube of the servers too (``list-tubes``, then
one pipelined write of ``stats-tube``s), and it can be woken early (``TubeDepths.poke``),
never more often than every ``min_gap``: the rate is the poller's, whatever the viewers.

Labels are bounded: tube, handler, outcome, cause, server, state, pool. Never a job id.
Only the pools' tubes are exported; the others are the dashboard's.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import greenstalk
import structlog
import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect, raise_for_reply
from tubeworker.control.metrics_clock import ClockCollector
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.observe.counters import Histogram
from tubeworker.runtime.state import WorkerState

__all__ = ["TubeDepths", "WorkerCollector", "build_registry", "run_tube_poller"]

log = structlog.get_logger("tubeworker")

_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_THROUGHPUT_WEIGHT = 0.3  # how fast the per-tube throughput estimate follows new polls
_PIPELINE: Final = 500  # stats-tube commands per write


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


def _histogram(
    name: str, doc: str, label: str, histograms: dict[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for key, histogram in sorted(histograms.items()):
        family.add_metric([key], histogram.cumulative(), histogram.total)
    return family


class WorkerCollector(Collector):
    """Every tubeworker metric, from the daemon's state at scrape time."""

    def __init__(
        self,
        state: WorkerState,
        depths: TubeDepths,
        tube_apis: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.state = state
        self.depths = depths
        #: The APIs every job of a tube needs ([api.NAME] tubes): its effective backlog.
        self.tube_apis = dict(tube_apis or {})

    def collect(self) -> Iterable[Metric]:
        yield from self._jobs()
        yield from self._daemon()
        yield from self._tubes()
        yield from self._apis()
        yield from self._limits()
        yield from self._binlogs()

    def _binlogs(self) -> Iterator[Metric]:
        full = GaugeMetricFamily(
            "tubeworker_server_binlog_full",
            "1 while a server's binlog has no room (failures are held in the worker)",
            labels=["server"],
        )
        held = GaugeMetricFamily(
            "tubeworker_binlog_held_jobs",
            "Jobs held because their server's binlog has no room",
            labels=["server"],
        )
        refusals = CounterMetricFamily(
            "tubeworker_binlog_refusals",
            "Outcomes and puts a server refused for want of binlog room",
            labels=["server"],
        )
        for server, health in sorted(self.state.binlogs.items()):
            full.add_metric([server], int(health.full))
            held.add_metric([server], health.held)
            refusals.add_metric([server], health.refusals)
        yield from (full, held, refusals)

    def _limits(self) -> Iterator[Metric]:
        yield from self._fleet_tokens()
        limits = self.state.limits
        if limits is None or not limits:
            return
        running = GaugeMetricFamily(
            "tubeworker_limit_running", "Jobs running under a limit now", labels=["limit"]
        )
        waiting = GaugeMetricFamily(
            "tubeworker_limit_waiting", "Jobs waiting for room under a limit", labels=["limit"]
        )
        admitted = CounterMetricFamily(
            "tubeworker_limit_admitted", "Jobs admitted under a limit", labels=["limit"]
        )
        waits = CounterMetricFamily(
            "tubeworker_limit_waits", "Jobs that had to wait for a limit", labels=["limit"]
        )
        deferred = CounterMetricFamily(
            "tubeworker_limit_deferred",
            "Jobs deferred (a delayed copy) rather than wait longer for a limit",
            labels=["limit"],
        )
        for stats in limits.statistics():
            running.add_metric([stats.name], stats.running)
            waiting.add_metric([stats.name], stats.waiting)
            admitted.add_metric([stats.name], stats.admitted)
            waits.add_metric([stats.name], stats.waits)
            deferred.add_metric([stats.name], stats.deferred)
        yield from (running, waiting, admitted, waits, deferred)

    def _fleet_tokens(self) -> Iterator[Metric]:
        found = self.state.fleet_tokens()  # families without series when there is none
        tokens = GaugeMetricFamily(
            "tubeworker_limit_tokens",
            "A fleet limit's tokens, over every server",
            labels=["limit", "tube"],
        )
        reachable = GaugeMetricFamily(
            "tubeworker_limit_tokens_reachable",
            "A fleet limit's tokens on servers this worker reaches now (fewer: degraded)",
            labels=["limit", "tube"],
        )
        degraded = GaugeMetricFamily(
            "tubeworker_limit_degraded",
            "1 while some of a fleet limit's token servers are out of reach",
            labels=["limit"],
        )
        worst: dict[str, int] = {}
        for group in found:
            tokens.add_metric([group.limit, group.tube], group.tokens)
            reachable.add_metric([group.limit, group.tube], group.reachable)
            worst[group.limit] = max(worst.get(group.limit, 0), int(group.degraded is not None))
        for limit, value in worst.items():
            degraded.add_metric([limit], value)
        yield from (tokens, reachable, degraded)

    def _apis(self) -> Iterator[Metric]:
        tracker = self.state.tracker
        state = GaugeMetricFamily(
            "tubeworker_api_state",
            "Breaker state per API: 0 closed, 1 half-open, 2 open",
            labels=["api"],
        )
        calls = CounterMetricFamily(
            "tubeworker_api_calls", "Calls reported per API, by result", labels=["api", "result"]
        )
        trips = CounterMetricFamily(
            "tubeworker_api_trips", "Times an API's breaker opened", labels=["api"]
        )
        for stats in tracker.statistics().apis if tracker is not None else ():
            state.add_metric([stats.api], _STATE_VALUES[stats.state.value])
            calls.add_metric([stats.api, "success"], stats.successes_total)
            calls.add_metric([stats.api, "failure"], stats.failures_total)
            calls.add_metric([stats.api, "caller_fault"], stats.caller_faults_total)
            trips.add_metric([stats.api], stats.trips)
        yield from (state, calls, trips)
        yield CounterMetricFamily(
            "tubeworker_api_waits",
            "Jobs held because an API they need was open (no attempt burned)",
            value=self.state.counters.api_waits,
        )

    def _jobs(self) -> Iterator[Metric]:
        counters = self.state.counters
        jobs = CounterMetricFamily(
            "tubeworker_jobs",
            "Jobs that ended, by tube, handler, outcome and cause",
            labels=["tube", "handler", "outcome", "cause"],
        )
        for (tube, handler, outcome, cause), count in sorted(counters.outcomes.items()):
            jobs.add_metric([tube, handler, outcome, cause], count)
        yield jobs
        yield _histogram(
            "tubeworker_job_duration_seconds",
            "Handler run time, reserve to outcome",
            "handler",
            counters.durations,
        )
        yield _histogram(
            "tubeworker_queue_latency_seconds",
            "Time from put to reserve (beanstalkd's job age, whole seconds)",
            "tube",
            counters.latency,
        )
        yield _histogram(
            "tubeworker_job_attempt",
            "Which attempt each run was (1: the first; from beanstalkd's counters)",
            "tube",
            counters.attempts,
        )
        yield CounterMetricFamily(
            "tubeworker_jobs_reserved", "Jobs reserved", value=counters.reserved
        )
        yield CounterMetricFamily(
            "tubeworker_redeliveries",
            "Deliveries that followed one that ended with no outcome",
            value=counters.redeliveries,
        )
        yield CounterMetricFamily(
            "tubeworker_jobs_skipped",
            "Jobs reserved but no longer ours when asked about",
            value=counters.skipped,
        )
        yield GaugeMetricFamily(
            "tubeworker_jobs_in_flight", "Handlers running now", value=counters.in_flight
        )

    def _daemon(self) -> Iterator[Metric]:
        state = self.state
        counters = state.counters
        yield CounterMetricFamily(
            "tubeworker_connections_lost",
            "beanstalkd connections lost (dead, hung or closed)",
            value=counters.connections_lost,
        )
        yield CounterMetricFamily(
            "tubeworker_loop_stalls", "Times the event loop was blocked", value=counters.loop_stalls
        )
        yield GaugeMetricFamily(
            "tubeworker_draining", "1 while the daemon drains", value=int(state.draining)
        )
        yield GaugeMetricFamily(
            "tubeworker_quiet", "1 while the daemon does not fetch", value=int(state.quiet)
        )
        connected = GaugeMetricFamily(
            "tubeworker_lanes_connected", "Lanes with a live connection", labels=["pool"]
        )
        per_pool: dict[str, int] = {}
        for lane in state.lanes:
            stats = lane.statistics()
            per_pool[stats.pool] = per_pool.get(stats.pool, 0) + int(stats.connected)
        for pool, count in sorted(per_pool.items()):
            connected.add_metric([pool], count)
        yield connected

    def _tubes(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "tubeworker_tube_jobs",
            "Jobs in a tube by state (stats-tube)",
            labels=["server", "tube", "state"],
        )
        waiting = GaugeMetricFamily(
            "tubeworker_tube_waiting", "Clients blocked in reserve", labels=["server", "tube"]
        )
        paused = GaugeMetricFamily(
            "tubeworker_tube_pause_seconds", "Pause time left", labels=["server", "tube"]
        )
        backlog = GaugeMetricFamily(
            "tubeworker_tube_backlog_seconds",
            "Ready jobs divided by this process's recent throughput on the tube",
            labels=["server", "tube"],
        )
        effective = GaugeMetricFamily(
            "tubeworker_tube_effective_backlog_seconds",
            "The backlog of ready jobs whose APIs are not open (0 while an API of the tube "
            "is open: more workers would not run them)",
            labels=["server", "tube"],
        )
        tracker = self.state.tracker
        for (server, tube), depth in sorted(self.depths.tubes.items()):
            if not depth.pooled:
                continue  # polled for the dashboard: not a series of this process
            for name in ("ready", "reserved", "delayed", "buried", "urgent"):
                jobs.add_metric([server, tube, name], getattr(depth, name))
            waiting.add_metric([server, tube], depth.waiting)
            paused.add_metric([server, tube], depth.pause_left)
            backlog.add_metric([server, tube], depth.backlog_seconds)
            apis = self.tube_apis.get(tube)
            blocked = bool(apis) and tracker is not None and tracker.blocked(apis or ())
            effective.add_metric([server, tube], 0.0 if blocked else depth.backlog_seconds)
        yield from (jobs, waiting, paused, backlog, effective)


def build_registry(
    state: WorkerState,
    depths: TubeDepths,
    tube_apis: Mapping[str, frozenset[str]] | None = None,
) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one): one per daemon."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(state, depths, tube_apis))
    registry.register(ClockCollector(state, tube_apis))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


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
            wanted = set(pooled)
            if every_tube:  # tubeworker's own too: the dashboard shows them when asked
                wanted.update(await client.list_tubes())
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
        addresses = list(pooled) + [a for a in servers if every_tube and a not in pooled]
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
            except (ConnectionLostError, ProtocolError, trio.TooSlowError, greenstalk.Error) as exc:
                depths.errors += 1
                depths.server_errors[str(address)] = str(exc) or type(exc).__name__
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
