"""Flow control's metrics: each API's breaker, each limit's admissions and waits, each
fleet limit's tokens (read at scrape time from the daemon's state). A mixin of
:class:`~tubeworker.control.metrics.WorkerCollector`, whose ``collect`` yields them in
its order; see tubeworker.control.metrics for the rest."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tubeworker.runtime.state import WorkerState

__all__ = ["FlowFamilies"]

_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class FlowFamilies:
    """APIs, limits and fleet tokens, for :class:`WorkerCollector` (which holds ``state``)."""

    state: WorkerState

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
