"""The clock's metrics: each schedule's fires, misfires and lateness, and each
heartbeat's age (read at scrape time from the clock's statistics; see
tubeworker.control.metrics for the rest)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tubeworker.runtime.state import WorkerState
from tubeworker.schedule import next_fire

__all__ = ["ClockCollector"]


class ClockCollector(Collector):
    """Schedules and heartbeats, from the clock's statistics at scrape time."""

    def __init__(
        self, state: WorkerState, tube_apis: Mapping[str, frozenset[str]] | None = None
    ) -> None:
        self.state = state
        self.tube_apis = dict(tube_apis or {})  # a tube's heartbeat is held while they are open

    def collect(self) -> Iterable[Metric]:
        yield from self._schedules()
        yield from self._heartbeats()

    def _schedules(self) -> Iterator[Metric]:
        clock = self.state.clock
        now = time.time()
        following = GaugeMetricFamily(
            "tubeworker_schedule_next_fire_timestamp_seconds",
            "The schedule's next fire time (Unix seconds), by its definition",
            labels=["schedule"],
        )
        last = GaugeMetricFamily(
            "tubeworker_schedule_last_fire_timestamp_seconds",
            "The latest fire time this process put (Unix seconds)",
            labels=["schedule"],
        )
        fires = CounterMetricFamily(
            "tubeworker_schedule_fires",
            "Fires this process put (the fleet's: sum over daemons)",
            labels=["schedule"],
        )
        misfires = CounterMetricFamily(
            "tubeworker_schedule_misfires",
            "Fires missed by more than 1 s and skipped or coalesced, by misfire policy",
            labels=["schedule", "policy"],
        )
        held_back = CounterMetricFamily(
            "tubeworker_schedule_held_back",
            "Fires not run on purpose: while paused, or while the previous run was "
            "unfinished (overlap = skip)",
            labels=["schedule", "reason"],
        )
        lateness = HistogramMetricFamily(
            "tubeworker_schedule_lateness_seconds",
            "From a fire time to its job's put being answered",
            labels=["schedule"],
        )
        for schedule in clock.definitions:
            counts = clock.of(schedule.name)
            following.add_metric([schedule.name], next_fire(schedule, now))
            if counts.last_fire is not None:
                last.add_metric([schedule.name], counts.last_fire)
            fires.add_metric([schedule.name], counts.fires)
            misfires.add_metric([schedule.name, schedule.misfire], counts.misfires)
            held_back.add_metric([schedule.name, "paused"], counts.paused)
            held_back.add_metric([schedule.name, "overlap"], counts.overlapped)
            histogram = counts.lateness
            lateness.add_metric([schedule.name], histogram.cumulative(), histogram.total)
        yield from (following, last, fires, misfires, held_back, lateness)

    def _heartbeats(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "tubeworker_heartbeat_age_seconds",
            "Seconds since a heartbeat of the tube last ran, anywhere in the fleet (from its "
            "records in beanstalkd; since this daemon started when none is recorded)",
            labels=["tube"],
        )
        every = GaugeMetricFamily(
            "tubeworker_heartbeat_interval_seconds",
            "How often the tube's heartbeat is put ([[heartbeat]] every)",
            labels=["tube"],
        )
        held = GaugeMetricFamily(
            "tubeworker_heartbeat_held",
            "1 while the tube is held on purpose (paused on its server, or an API its jobs "
            "need is open here): its heartbeat is late, not stale",
            labels=["tube"],
        )
        now = time.time()
        tracker = self.state.tracker
        for tube, seen in sorted(self.state.clock.heartbeats.items()):
            age.add_metric([tube], seen.age(now))
            every.add_metric([tube], seen.heartbeat.every)
            apis = self.tube_apis.get(tube)
            blocked = bool(apis) and tracker is not None and tracker.blocked(apis or ())
            held.add_metric([tube], 1.0 if seen.paused or blocked else 0.0)
        yield from (age, every, held)
