"""``tubeworker top``, the model: per daemon, what its events, ``/status`` and ``/metrics``
say, aggregated per tube and handler into :class:`Row`\\ s. Pure: the caller passes the
time, the tests feed it.

Where the figures come from:

- DONE and the failure totals: the daemon's own counters (``tubeworker_jobs_total``,
  since the daemon started) plus the job events seen since that scrape; the events alone
  when ``/metrics`` is missing.
- Rates (jobs done per second over 10 s and 1 min, released and buried per minute over
  1 min): job events, counted as they arrive; the window is shorter while the stream is
  younger. Above the daemon's ``events_per_second`` the daemon sends per-second sums
  without tube or handler: they get a row of their own, ``(summarised)``, so the rows
  still add up (and the tubes' rates leave them out).
- FLIGHT: jobs held now, ``/status`` ``in_flight_by_tube``. A daemon older than it gives
  jobs held per pool only: a tube gets its pool's count when it is the pool's only known
  tube (else unknown).
- READY and BURIED: ``tubeworker_tube_jobs`` in ``/metrics``, servers summed.
- BACKLOG: READY ÷ the 1-minute rate of the same row, so the two never disagree (0 with no
  ready job, ∞ when ready jobs are not moving). With no events stream there is no rate:
  then it is the daemon's own estimate (``tubeworker_tube_backlog_seconds``: ready ÷ a
  moving average of its throughput over its tube polls).
- APIs: the breaker's state and window from ``/status``; calls and failures since the
  daemon started from ``/metrics`` (``tubeworker_api_calls_total``).

Tubes of tubeworker's own (``tubeworker.*``: burial records, limit tokens) are not work:
they get no row.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from tubeworker.cli.top_feed import (
    ApiTotals,
    ApiView,
    HeartbeatView,
    MetricsSnapshot,
    PoolView,
    StatusSnapshot,
    TubeFacts,
)
from tubeworker.tubes import is_internal, is_pattern, matches_any

__all__ = [
    "LONG",
    "SHORT",
    "SUMMARISED",
    "DaemonView",
    "Flow",
    "RateWindow",
    "Row",
    "State",
    "TopModel",
    "backlog_seconds",
    "tube_rows",
]

SUMMARISED: Final = "(summarised)"
SHORT: Final = 10.0  # seconds of the short rate
LONG: Final = 60.0  # seconds of the long rate, the per-minute ones and the backlog's

_HORIZON: Final = LONG  # the longest window kept, seconds
_COALESCE: Final = 0.1  # events seen this close together share one mark

#: connecting: not heard from yet; up: its /status read; unreachable: no answer (refused,
#: timed out, reset, a 5xx); not_control_plane: an HTTP answer, not a tubeworker /status.
State = Literal["connecting", "up", "unreachable", "not_control_plane"]


class RateWindow:
    """How many events were seen over the last minute, by when (to a tenth of a second)."""

    __slots__ = ("_marks",)

    def __init__(self) -> None:
        self._marks: deque[list[float]] = deque()  # [seen at, count], oldest first

    def add(self, now: float, count: int = 1) -> None:
        marks = self._marks
        if marks and now - marks[-1][0] < _COALESCE:
            marks[-1][1] += count
        else:
            marks.append([now, float(count)])
        while marks and marks[0][0] <= now - _HORIZON:
            marks.popleft()

    def count(self, now: float, window: float) -> int:
        """Events seen in (now - window, now]."""
        return int(sum(n for at, n in self._marks if now - window < at <= now))

    def clear(self) -> None:
        self._marks.clear()


@dataclass
class Flow:
    """Job outcomes of one tube and handler (or the daemon's summarised remainder)."""

    seen: dict[str, int] = field(default_factory=dict)  # outcome → count, from events
    seen_at_scrape: dict[str, int] = field(default_factory=dict)  # ``seen`` at the last scrape
    done: RateWindow = field(default_factory=RateWindow)
    released: RateWindow = field(default_factory=RateWindow)
    buried: RateWindow = field(default_factory=RateWindow)

    def window(self, which: str) -> RateWindow:
        """``done``, ``released`` or ``buried``."""
        return {"done": self.done, "released": self.released, "buried": self.buried}[which]

    def record(self, outcome: str, now: float, count: int = 1) -> None:
        self.seen[outcome] = self.seen.get(outcome, 0) + count
        if outcome in ("deleted", "released", "buried"):
            self.window("done" if outcome == "deleted" else outcome).add(now, count)

    def clear_windows(self) -> None:
        for window in (self.done, self.released, self.buried):
            window.clear()


@dataclass
class DaemonView:
    """Everything known of one daemon."""

    url: str
    state: State = "connecting"
    error: str | None = None  # why it is not up
    retry_at: float | None = None
    attempt: int = 0
    last_seen: float | None = None
    # /status
    pid: int | None = None
    up_since: float | None = None  # on the caller's monotonic clock
    draining: bool = False
    drain_reason: str | None = None
    quiet: bool = False
    jobs_running: int | None = None
    pools: tuple[PoolView, ...] = ()
    apis: Mapping[str, ApiView] = field(default_factory=dict)
    in_flight_by_tube: Mapping[str, int] | None = None
    heartbeats: tuple[HeartbeatView, ...] = ()
    # /metrics
    metrics: MetricsSnapshot | None = None
    metrics_error: str | None = None
    # /events
    stream_since: float | None = None  # when the events stream (re)started: rates' origin
    flows: dict[tuple[str, str], Flow] = field(default_factory=dict)
    summarised: Flow = field(default_factory=Flow)
    dropped: int = 0
    connections_lost: int = 0
    last_lost: str | None = None

    # ---- what comes in

    def on_event(self, event: Mapping[str, Any], now: float) -> None:
        kind = event.get("type")
        if kind == "job":
            key = (str(event.get("tube", "")), str(event.get("handler", "")))
            self.flows.setdefault(key, Flow()).record(str(event.get("outcome", "")), now)
        elif kind == "jobs_summarised":
            outcomes = event.get("outcomes")
            for outcome, count in outcomes.items() if isinstance(outcomes, Mapping) else ():
                self.summarised.record(str(outcome), now, _as_int(count))
        elif kind == "dropped":
            self.dropped += _as_int(event.get("count"))
        elif kind == "hello":
            self._stream_started(event, now)
        else:
            self._on_state_event(kind, event)

    def _stream_started(self, event: Mapping[str, Any], now: float) -> None:
        # Events missed while disconnected would make the old windows lie: start afresh.
        self.stream_since = now
        for flow in (*self.flows.values(), self.summarised):
            flow.clear_windows()
        if isinstance(event.get("pid"), int):
            self.pid = event["pid"]

    def _on_state_event(self, kind: object, event: Mapping[str, Any]) -> None:
        if kind == "drain":
            self.draining = True
            reason = event.get("reason")
            self.drain_reason = reason if isinstance(reason, str) else None
        elif kind in ("quiet", "resume"):
            self.quiet = kind == "quiet"
        elif kind == "connection_lost":
            self.connections_lost += 1
            self.last_lost = (
                f"{event.get('pool', '?')} lane {event.get('lane', '?')}: {event.get('error', '')}"
            )

    def on_status(self, status: StatusSnapshot, now: float, wall: float) -> None:
        self.state, self.error, self.retry_at, self.attempt = "up", None, None, 0
        self.last_seen = now
        self.pid = status.pid
        if status.started is not None:
            self.up_since = now - max(0.0, wall - status.started)
        self.draining, self.drain_reason = status.draining, status.drain_reason
        self.quiet = status.quiet
        self.jobs_running = status.jobs_running
        self.pools = status.pools
        self.apis = status.apis
        self.in_flight_by_tube = status.in_flight_by_tube
        self.heartbeats = status.heartbeats

    def on_metrics(self, snapshot: MetricsSnapshot | None, error: str | None = None) -> None:
        self.metrics, self.metrics_error = snapshot, error
        for flow in self.flows.values():
            flow.seen_at_scrape = dict(flow.seen)

    def on_down(
        self, state: State, error: str, now: float, retry_at: float | None, attempt: int
    ) -> None:
        """Not up: ``unreachable`` or ``not_control_plane``, with why."""
        self.state, self.error = state, error
        self.retry_at, self.attempt = retry_at, attempt
        self.stream_since = None

    # ---- what goes out

    def rate(self, flows: Iterable[Flow], which: str, now: float, window: float) -> float | None:
        """Events per second over the window (shorter while the stream is younger)."""
        if self.stream_since is None:
            return None
        span = min(window, max(now - self.stream_since, 1.0))
        return sum(flow.window(which).count(now, window) for flow in flows) / span

    def total(self, tube: str, handler: str, outcome: str) -> int:
        """The daemon's count at the last scrape plus the events seen since (the events
        alone without ``/metrics``)."""
        flow = self.flows.get((tube, handler))
        seen = flow.seen.get(outcome, 0) if flow else 0
        if self.metrics is None:
            return seen
        since = seen - (flow.seen_at_scrape.get(outcome, 0) if flow else 0)
        return self.metrics.jobs.get((tube, handler, outcome), 0) + max(0, since)

    def known_keys(self) -> list[tuple[str, str]]:
        """Every (tube, handler) known, sorted, tubeworker's own tubes left out; tubes with
        no jobs yet have handler ""."""
        keys = set(self.flows)
        if self.metrics is not None:
            keys |= {(tube, handler) for tube, handler, _ in self.metrics.jobs}
        tubes = {tube for tube, _ in keys} | set(self.tube_facts())
        tubes |= {t for pool in self.pools for t in pool.tubes if not is_pattern(t)}
        keys |= {(tube, "") for tube in tubes if not any(k[0] == tube for k in keys)}
        return sorted(key for key in keys if not is_internal(key[0]))

    def is_placeholder(self, tube: str, handler: str) -> bool:
        """The ("tube", "") key of a tube known only from its depth or its pool."""
        if handler or (tube, "") in self.flows:
            return False
        jobs = self.metrics.jobs if self.metrics is not None else {}
        return not any(t == tube and h == "" for t, h, _ in jobs)

    def tube_facts(self) -> dict[str, TubeFacts]:
        return dict(self.metrics.tubes) if self.metrics is not None else {}

    def api_totals(self, api: str) -> ApiTotals | None:
        return self.metrics.apis.get(api) if self.metrics is not None else None

    def in_flight(self, tube: str, tubes: set[str]) -> int | None:
        """Jobs held now for this tube (``tubes``: every tube shown)."""
        if self.in_flight_by_tube is not None:
            return self.in_flight_by_tube.get(tube, 0)
        # A daemon older than in_flight_by_tube: its pool's count, when it is that pool's
        # only known tube.
        held = None
        for pool in self.pools:
            if not matches_any(tube, pool.tubes):
                continue
            if {t for t in tubes if matches_any(t, pool.tubes)} != {tube}:
                return None
            held = (held or 0) + pool.jobs
        return held


class TopModel:
    """The daemons, by URL, in the order given."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.daemons: dict[str, DaemonView] = {url: DaemonView(url) for url in urls}

    def on_event(self, url: str, event: object, now: float) -> None:
        if isinstance(event, Mapping):
            self.daemons[url].on_event(event, now)

    def on_status(self, url: str, status: StatusSnapshot, now: float, wall: float) -> None:
        self.daemons[url].on_status(status, now, wall)

    def on_metrics(self, url: str, snapshot: MetricsSnapshot | None, error: str | None) -> None:
        self.daemons[url].on_metrics(snapshot, error)

    def on_down(
        self,
        url: str,
        state: State,
        error: str,
        now: float,
        *,
        retry_at: float | None = None,
        attempt: int = 0,
    ) -> None:
        self.daemons[url].on_down(state, error, now, retry_at, attempt)


def _as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    """One line of the table: a tube (its handlers summed), a handler, or the summarised."""

    name: str
    level: int  # 0 a tube, 1 a handler under it
    done: int | None
    rate_short: float | None
    rate_long: float | None
    released_per_min: float | None
    buried_per_min: float | None
    in_flight: int | None = None
    ready: int | None = None
    buried: int | None = None
    backlog: float | None = None
    api: str | None = None
    tube_level: bool = True  # in flight, ready, buried and backlog belong to tubes


def backlog_seconds(ready: int | None, rate: float | None, estimate: float | None) -> float | None:
    """How long the ready jobs take at ``rate`` (per second); without a rate, the daemon's
    ``estimate``."""
    if ready is None:
        return None
    if ready == 0:
        return 0.0
    if rate is None:
        return estimate
    return ready / rate if rate > 0 else math.inf


def tube_rows(view: DaemonView, now: float) -> list[Row]:
    """The table of one daemon: per tube a row, then one per handler; the summarised last."""
    keys = view.known_keys()
    tubes = sorted({tube for tube, _ in keys})
    facts = view.tube_facts()
    rows: list[Row] = []
    for tube in tubes:
        handlers = [handler for t, handler in keys if t == tube]
        flows = [view.flows[tube, h] for h in handlers if (tube, h) in view.flows]
        done = sum(view.total(tube, h, "deleted") for h in handlers)
        fact = facts.get(tube, TubeFacts())
        rows.append(_tube_row(view, tube, flows, done, fact, set(tubes), now))
        for handler in handlers:
            if view.is_placeholder(tube, handler):
                continue  # an idle tube: its own row says it all
            flow = [view.flows[tube, handler]] if (tube, handler) in view.flows else []
            done = view.total(tube, handler, "deleted")
            rows.append(_row(view, handler or "(no handler)", 1, flow, done, now))
    if view.summarised.seen:
        rows.append(_summarised_row(view, now))
    return rows


def _tube_row(
    view: DaemonView,
    tube: str,
    flows: list[Flow],
    done: int,
    fact: TubeFacts,
    tubes: set[str],
    now: float,
) -> Row:
    row = _row(view, tube, 0, flows, done, now)
    return replace(
        row,
        in_flight=view.in_flight(tube, tubes),
        ready=fact.ready,
        buried=fact.buried,
        backlog=backlog_seconds(fact.ready, row.rate_long, fact.backlog_seconds),
    )


def _row(
    view: DaemonView, name: str, level: int, flows: list[Flow], done: int | None, now: float
) -> Row:
    return Row(
        name=name,
        level=level,
        done=done,
        rate_short=view.rate(flows, "done", now, SHORT),
        rate_long=view.rate(flows, "done", now, LONG),
        released_per_min=_per_minute(view.rate(flows, "released", now, LONG)),
        buried_per_min=_per_minute(view.rate(flows, "buried", now, LONG)),
        tube_level=level == 0 and name != SUMMARISED,
    )


def _summarised_row(view: DaemonView, now: float) -> Row:
    # With /metrics, the summarised jobs are in their tubes' totals already.
    done = None if view.metrics is not None else view.summarised.seen.get("deleted", 0)
    return _row(view, SUMMARISED, 0, [view.summarised], done, now)


def _per_minute(rate: float | None) -> float | None:
    return None if rate is None else rate * 60
