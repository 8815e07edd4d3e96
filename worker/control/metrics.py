"""Prometheus metrics, read at scrape time from what the daemon already counts.

The hot path pays nothing here: the collector turns the process's plain counters
(``JobCounters``) and the latest tube depths into metric families when ``/metrics`` is
scraped. Tube depths come from one task per process (:func:`run_tube_poller`) that asks
``stats-tube`` for every tube the pools work on, at ``metrics_interval`` with jitter.

Labels are bounded: tube, handler, outcome, cause, server, state, pool. Never a job id.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

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

from tubeworker.beanstalk.client import Address, connect
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.observe.counters import Histogram
from tubeworker.runtime.state import WorkerState

__all__ = ["TubeDepths", "WorkerCollector", "build_registry", "run_tube_poller"]

log = structlog.get_logger("tubeworker")

_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_THROUGHPUT_WEIGHT = 0.3  # how fast the per-tube throughput estimate follows new polls


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
    """The latest ``stats-tube`` per (server, tube)."""

    tubes: dict[tuple[str, str], TubeDepth] = field(default_factory=dict)
    polls: int = 0
    errors: int = 0


def _histogram(
    name: str, doc: str, label: str, histograms: dict[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for key, histogram in sorted(histograms.items()):
        family.add_metric([key], histogram.cumulative(), histogram.total)
    return family


class WorkerCollector(Collector):
    """Every tubeworker metric, from the daemon's state at scrape time."""

    def __init__(self, state: WorkerState, depths: TubeDepths) -> None:
        self.state = state
        self.depths = depths

    def collect(self) -> Iterable[Metric]:
        yield from self._jobs()
        yield from self._daemon()
        yield from self._tubes()
        yield from self._apis()

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
        for (server, tube), depth in sorted(self.depths.tubes.items()):
            for name in ("ready", "reserved", "delayed", "buried", "urgent"):
                jobs.add_metric([server, tube, name], getattr(depth, name))
            waiting.add_metric([server, tube], depth.waiting)
            paused.add_metric([server, tube], depth.pause_left)
            backlog.add_metric([server, tube], depth.backlog_seconds)
        yield from (jobs, waiting, paused, backlog)


def build_registry(state: WorkerState, depths: TubeDepths) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one): one per daemon."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(state, depths))
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


async def _poll_server(
    address: Address, tubes: set[str], depths: TubeDepths, deleted: dict[str, int], timeout: float
) -> None:
    now = time.monotonic()
    with trio.fail_after(timeout * 2):
        client = await connect(address, connect_timeout=timeout, reply_timeout=timeout)
        try:
            for tube in sorted(tubes):
                try:
                    stats = await client.stats_tube(tube)
                except greenstalk.NotFoundError:  # no jobs and no watchers: gone for now
                    depths.tubes.pop((str(address), tube), None)
                    continue
                depth = depths.tubes.setdefault((str(address), tube), TubeDepth())
                depth.ready = stats.current_jobs_ready
                depth.reserved = stats.current_jobs_reserved
                depth.delayed = stats.current_jobs_delayed
                depth.buried = stats.current_jobs_buried
                depth.urgent = stats.current_jobs_urgent
                depth.waiting = stats.current_waiting
                depth.pause_left = stats.pause_time_left
                done = deleted.get(tube, 0)
                if depth._at:
                    rate = (done - depth._deleted) / max(now - depth._at, 1e-3)
                    w = _THROUGHPUT_WEIGHT
                    depth.throughput = (1 - w) * depth.throughput + w * rate
                depth._deleted, depth._at = done, now
        finally:
            await client.aclose()


async def run_tube_poller(
    state: WorkerState,
    depths: TubeDepths,
    interval: float,
    connect_timeout: float,
    *,
    rng: random.Random | None = None,
) -> None:
    """Read ``stats-tube`` for the pools' tubes on their servers, forever: one task per
    process however many lanes and viewers there are; jittered so a fleet does not poll
    in step."""
    rng = rng or random.Random()
    while True:
        wanted: dict[Address, set[str]] = {}
        for lane in state.lanes:
            stats = lane.statistics()
            wanted.setdefault(stats.address, set()).update(stats.tubes)
        deleted = _deleted_by_tube(state)
        for address, tubes in wanted.items():
            try:
                await _poll_server(address, tubes, depths, deleted, connect_timeout)
                depths.polls += 1
            except (ConnectionLostError, ProtocolError, trio.TooSlowError) as exc:
                depths.errors += 1
                log.debug("tube stats unavailable", server=str(address), error=str(exc))
        await trio.sleep(interval * rng.uniform(0.8, 1.2))
