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

from collections.abc import Iterable, Iterator, Mapping

import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from tubeworker.control.metrics_clock import ClockCollector
from tubeworker.control.metrics_flow import FlowFamilies
from tubeworker.control.metrics_servers import ServerCollector
from tubeworker.control.poller import TubeDepth, TubeDepths, run_tube_poller
from tubeworker.observe.counters import Histogram
from tubeworker.runtime.state import WorkerState

__all__ = ["TubeDepth", "TubeDepths", "WorkerCollector", "build_registry", "run_tube_poller"]

log = structlog.get_logger("tubeworker")


def _histogram(
    name: str, doc: str, label: str, histograms: dict[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for key, histogram in sorted(histograms.items()):
        family.add_metric([key], histogram.cumulative(), histogram.total)
    return family


class WorkerCollector(FlowFamilies, Collector):
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
        yield from self._batches()
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

    def _batches(self) -> Iterator[Metric]:
        counters = self.state.counters
        fired = CounterMetricFamily(
            "tubeworker_batch_callbacks",
            "Batch callbacks this process fired, by kind (success, complete, death)",
            labels=["callback"],
        )
        for kind in ("success", "complete", "death"):
            fired.add_metric([kind], counters.batch_fired.get(kind, 0))
        yield fired
        completion = HistogramMetricFamily(
            "tubeworker_batch_completion_seconds",
            "Time from a batch's opening to its on_complete firing (batches this process "
            "completed)",
        )
        histogram = counters.batch_completion
        completion.add_metric([], histogram.cumulative(), histogram.total)
        yield completion

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
    *,
    max_connections: int = 0,
) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one): one per daemon.
    ``max_connections``: the servers' connection limit ([control] server_max_connections)."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(state, depths, tube_apis))
    registry.register(ClockCollector(state, tube_apis))
    registry.register(ServerCollector(depths, max_connections))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
