"""``tubeworker top [URL ...]``: a live view of one or several daemons, through their control
planes (``tubeworker run --control HOST:PORT``).

Two halves, kept apart:

- **The model** (:class:`TopModel`) and **the renderer** (:func:`render`,
  :func:`summary_line`): pure. Events from ``/events``, ``/status`` documents and
  ``/metrics`` snapshots go in, with the time passed by the caller; per daemon, per tube and
  per handler aggregates come out, then lines of text with fixed column widths. No I/O, no
  clock of their own: the tests feed them.
- **The I/O** (:func:`top`): per daemon, a trio-websocket client of ``/events`` and a poll of
  ``GET /status`` and ``GET /metrics`` (httpx) every interval; a daemon that cannot be
  reached, or goes away, is shown as unreachable with the error and retried with backoff.
  On a terminal the screen is redrawn in place (the alternate screen, restored at exit);
  otherwise one summary line is printed per interval. ``--once`` prints one snapshot.

Where the figures come from:

- DONE and the failure totals: the daemon's own counters (``tubeworker_jobs_total`` in
  ``/metrics``, since the daemon started) plus the job events seen since that scrape; the
  events alone when ``/metrics`` is missing.
- Rates (jobs done per second over 10 s and 1 min, released and buried per minute): job
  events, counted as they arrive; the window is shorter while the stream is younger. Above
  the daemon's ``events_per_second`` the daemon sends per-second sums without tube or
  handler: they are shown on a row of their own, ``(summarised)``, so the rows still add up.
- In flight: ``/status`` gives jobs held per pool; a tube gets its pool's count when it is
  the only known tube of that pool (else "—").
- READY and BACKLOG: ``/status`` when it has a ``tubes`` section, else ``/metrics``
  (``tubeworker_tube_jobs{state="ready"}``, ``tubeworker_tube_backlog_seconds``), summed
  over servers.
- API: breaker state, "—" until flow control reports it; :class:`ApiView` and the ``apis``
  section are where it goes (read from a ``/status`` ``apis`` list or mapping when present).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Final, TextIO

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from tubeworker.backoff import exponential_delay

__all__ = [
    "ApiView",
    "DaemonView",
    "Flow",
    "MetricsSnapshot",
    "PoolView",
    "RateWindow",
    "Row",
    "TopModel",
    "TubeFacts",
    "describe_error",
    "normalize_url",
    "parse_metrics",
    "render",
    "summary_line",
    "top",
]

DEFAULT_URL: Final = "http://127.0.0.1:9090"
EX_OK: Final = 0
EX_USAGE: Final = 64
EX_UNAVAILABLE: Final = 69  # --once: some daemon could not be reached

DASH: Final = "—"
INFINITY: Final = "∞"
SUMMARISED: Final = "(summarised)"

_HORIZON: Final = 60.0  # the longest window kept, seconds
_COALESCE: Final = 0.1  # events seen this close together share one mark
_SHORT: Final = 10.0
_LONG: Final = 60.0

_REQUEST_TIMEOUT: Final = 3.0
_MIN_DRAW: Final = 0.2  # at most five redraws a second
_MIN_POLL: Final = 0.5
_STABLE_SESSION: Final = 5.0  # a session this long resets the backoff
_RETRY_BASE: Final = 0.5
_RETRY_CAP: Final = 10.0
_ERROR_WIDTH: Final = 120


# --------------------------------------------------------------------------- the model


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


@dataclass(frozen=True)
class PoolView:
    name: str
    tubes: tuple[str, ...]  # names or glob patterns
    slots: int
    jobs: int  # held now
    lanes: int
    lanes_connected: int


@dataclass(frozen=True)
class TubeFacts:
    ready: int | None = None
    backlog_seconds: float | None = None


@dataclass(frozen=True)
class ApiView:
    """One external API's breaker, as flow control reports it."""

    name: str
    state: str  # closed, open, half_open
    calls: int | None = None
    failures: int | None = None


@dataclass(frozen=True)
class MetricsSnapshot:
    """What ``top`` reads of ``/metrics``."""

    jobs: dict[tuple[str, str, str], int] = field(default_factory=dict)  # tube, handler, outcome
    tubes: dict[str, TubeFacts] = field(default_factory=dict)


def parse_metrics(text: str) -> MetricsSnapshot:
    """Job totals per tube, handler and outcome (causes summed), and per tube the ready jobs
    and backlog seconds (servers summed). Raises ValueError on text that is not Prometheus'."""
    jobs: dict[tuple[str, str, str], int] = {}
    ready: dict[str, float] = {}
    backlog: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "tubeworker_jobs_total":
                key = (labels.get("tube", ""), labels.get("handler", ""), labels.get("outcome", ""))
                jobs[key] = jobs.get(key, 0) + int(sample.value)
            elif sample.name == "tubeworker_tube_jobs" and labels.get("state") == "ready":
                tube = labels.get("tube", "")
                ready[tube] = ready.get(tube, 0.0) + sample.value
            elif sample.name == "tubeworker_tube_backlog_seconds":
                tube = labels.get("tube", "")
                backlog[tube] = backlog.get(tube, 0.0) + sample.value
    tubes = {
        tube: TubeFacts(
            ready=int(ready[tube]) if tube in ready else None,
            backlog_seconds=backlog.get(tube),
        )
        for tube in sorted(set(ready) | set(backlog))
    }
    return MetricsSnapshot(jobs=jobs, tubes=tubes)


@dataclass
class DaemonView:
    """Everything known of one daemon."""

    url: str
    state: str = "connecting"  # connecting, up, unreachable
    error: str | None = None
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
    pools: list[PoolView] = field(default_factory=list)
    status_tubes: dict[str, TubeFacts] = field(default_factory=dict)
    apis: dict[str, ApiView] = field(default_factory=dict)
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
            self.drain_reason = _as_str(event.get("reason"))
        elif kind in ("quiet", "resume"):
            self.quiet = kind == "quiet"
        elif kind == "connection_lost":
            self.connections_lost += 1
            self.last_lost = (
                f"{event.get('pool', '?')} lane {event.get('lane', '?')}: {event.get('error', '')}"
            )

    def on_status(self, status: Mapping[str, Any], now: float, wall: float) -> None:
        self.state, self.error, self.retry_at, self.attempt = "up", None, None, 0
        self.last_seen = now
        self.pid = status.get("pid") if isinstance(status.get("pid"), int) else self.pid
        started = status.get("started")
        if isinstance(started, int | float):
            self.up_since = now - max(0.0, wall - float(started))
        self.draining = bool(status.get("draining"))
        self.drain_reason = _as_str(status.get("drain_reason"))
        self.quiet = bool(status.get("quiet"))
        running = status.get("jobs_running")
        self.jobs_running = running if isinstance(running, int) else None
        self.pools = _pools(status.get("pools"))
        self.status_tubes = _status_tubes(status.get("tubes"))
        self.apis = _apis(status.get("apis"))

    def on_metrics(self, snapshot: MetricsSnapshot | None, error: str | None = None) -> None:
        self.metrics, self.metrics_error = snapshot, error
        for flow in self.flows.values():
            flow.seen_at_scrape = dict(flow.seen)

    def on_unreachable(self, error: str, now: float, retry_at: float | None, attempt: int) -> None:
        self.state, self.error = "unreachable", error
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
        """Every (tube, handler) known, sorted; tubes with no jobs yet have handler ""."""
        keys = set(self.flows)
        if self.metrics is not None:
            keys |= {(tube, handler) for tube, handler, _ in self.metrics.jobs}
        tubes = {tube for tube, _ in keys} | set(self.tube_facts())
        tubes |= {t for pool in self.pools for t in pool.tubes if not _is_pattern(t)}
        keys |= {(tube, "") for tube in tubes if not any(k[0] == tube for k in keys)}
        return sorted(keys)

    def is_placeholder(self, tube: str, handler: str) -> bool:
        """The ("tube", "") key of a tube known only from its depth or its pool."""
        if handler or (tube, "") in self.flows:
            return False
        jobs = self.metrics.jobs if self.metrics is not None else {}
        return not any(t == tube and h == "" for t, h, _ in jobs)

    def tube_facts(self) -> dict[str, TubeFacts]:
        if self.status_tubes:
            return self.status_tubes
        return dict(self.metrics.tubes) if self.metrics is not None else {}

    def in_flight(self, tube: str, tubes: set[str]) -> int | None:
        """Jobs held for this tube: its pool's, when it is that pool's only known tube."""
        held = None
        for pool in self.pools:
            if not any(fnmatchcase(tube, pattern) for pattern in pool.tubes):
                continue
            mine = {t for t in tubes if any(fnmatchcase(t, p) for p in pool.tubes)}
            if mine != {tube}:
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

    def on_status(self, url: str, status: object, now: float, wall: float) -> None:
        if not isinstance(status, Mapping):
            raise ValueError("/status did not answer a JSON object")
        self.daemons[url].on_status(status, now, wall)

    def on_metrics(self, url: str, snapshot: MetricsSnapshot | None, error: str | None) -> None:
        self.daemons[url].on_metrics(snapshot, error)

    def on_unreachable(
        self, url: str, error: str, now: float, *, retry_at: float | None = None, attempt: int = 0
    ) -> None:
        self.daemons[url].on_unreachable(error, now, retry_at, attempt)


def _as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _is_pattern(tube: str) -> bool:
    return any(char in tube for char in "*?[")


def _pools(pools: object) -> list[PoolView]:
    if not isinstance(pools, Mapping):
        return []
    views = []
    for name, pool in sorted(pools.items()):
        if not isinstance(pool, Mapping):
            continue
        lanes = [lane for lane in pool.get("lanes") or [] if isinstance(lane, Mapping)]
        views.append(
            PoolView(
                name=str(name),
                tubes=tuple(str(t) for t in pool.get("tubes") or []),
                slots=_as_int(pool.get("slots")),
                jobs=_as_int(pool.get("jobs")),
                lanes=len(lanes),
                lanes_connected=sum(1 for lane in lanes if lane.get("connected")),
            )
        )
    return views


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _status_tubes(tubes: object) -> dict[str, TubeFacts]:
    """``/status`` ``tubes``, when the daemon has it: {tube: {ready, backlog_seconds}}."""
    if not isinstance(tubes, Mapping):
        return {}
    facts = {}
    for tube, data in tubes.items():
        if isinstance(data, Mapping):
            ready = _number(data.get("ready"))
            facts[str(tube)] = TubeFacts(
                ready=int(ready) if ready is not None else None,
                backlog_seconds=_number(data.get("backlog_seconds")),
            )
    return facts


def _apis(apis: object) -> dict[str, ApiView]:
    """``/status`` ``apis``, when flow control reports it: a list of {api, state, calls,
    failures} or a mapping of name to {state, ...}."""
    items: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(apis, Mapping):
        items = [(str(k), v) for k, v in apis.items() if isinstance(v, Mapping)]
    elif isinstance(apis, list):
        items = [(str(a.get("api", "?")), a) for a in apis if isinstance(a, Mapping)]
    views = {}
    for name, data in items:
        calls, failures = _number(data.get("calls")), _number(data.get("failures"))
        views[name] = ApiView(
            name=name,
            state=str(data.get("state", "?")),
            calls=int(calls) if calls is not None else None,
            failures=int(failures) if failures is not None else None,
        )
    return dict(sorted(views.items()))


# --------------------------------------------------------------------------- the renderer


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
    backlog: float | None = None
    api: str = DASH
    tube_level: bool = True  # in flight, ready and backlog belong to tubes


# (header, width, align)
_COLUMNS: Final = (
    ("TUBE / HANDLER", 24, "<"),
    ("DONE", 8, ">"),
    ("10s/s", 7, ">"),
    ("1m/s", 7, ">"),
    ("REL/m", 6, ">"),
    ("BUR/m", 6, ">"),
    ("FLIGHT", 7, ">"),
    ("READY", 7, ">"),
    ("BACKLOG", 8, ">"),
    ("API", 6, "<"),
)
_INDENT: Final = "  "


def tube_rows(view: DaemonView, now: float) -> list[Row]:
    """The table of one daemon: per tube a row, then one per handler; the summarised last."""
    keys = view.known_keys()
    tubes = sorted({tube for tube, _ in keys})
    facts = view.tube_facts()
    rows: list[Row] = []
    for tube in tubes:
        handlers = [handler for t, handler in keys if t == tube]
        flows = [view.flows[tube, h] for h in handlers if (tube, h) in view.flows]
        fact = facts.get(tube, TubeFacts())
        done = sum(view.total(tube, h, "deleted") for h in handlers)
        rows.append(
            dataclasses.replace(
                _row(view, tube, 0, flows, done, now),
                in_flight=view.in_flight(tube, set(tubes)),
                ready=fact.ready,
                backlog=fact.backlog_seconds,
            )
        )
        for handler in handlers:
            if view.is_placeholder(tube, handler):
                continue  # an idle tube: its own row says it all
            flow = [view.flows[tube, handler]] if (tube, handler) in view.flows else []
            done = view.total(tube, handler, "deleted")
            rows.append(_row(view, handler or "(no handler)", 1, flow, done, now))
    if view.summarised.seen:
        rows.append(_summarised_row(view, now))
    return rows


def _row(
    view: DaemonView, name: str, level: int, flows: list[Flow], done: int | None, now: float
) -> Row:
    return Row(
        name=name,
        level=level,
        done=done,
        rate_short=view.rate(flows, "done", now, _SHORT),
        rate_long=view.rate(flows, "done", now, _LONG),
        released_per_min=_per_minute(view.rate(flows, "released", now, _LONG)),
        buried_per_min=_per_minute(view.rate(flows, "buried", now, _LONG)),
        tube_level=level == 0 and name != SUMMARISED,
    )


def _summarised_row(view: DaemonView, now: float) -> Row:
    # With /metrics, the summarised jobs are in their tubes' totals already.
    done = None if view.metrics is not None else view.summarised.seen.get("deleted", 0)
    return _row(view, SUMMARISED, 0, [view.summarised], done, now)


def _per_minute(rate: float | None) -> float | None:
    return None if rate is None else rate * 60


def format_rate(rate: float | None) -> str:
    if rate is None:
        return DASH
    return f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"


def format_count(count: int | None, width: int = 8) -> str:
    if count is None:
        return DASH
    text = str(count)
    if len(text) <= width:
        return text
    for divisor, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        scaled = count / divisor
        if scaled >= 1000:
            continue
        for text in (f"{scaled:.1f}{suffix}", f"{scaled:.0f}{suffix}"):
            if len(text) <= width:
                return text
    return "many"


def format_seconds(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return DASH
    if math.isinf(seconds):
        return INFINITY
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _line(cells: Sequence[str]) -> str:
    text = _INDENT
    for index, ((_, width, align), cell) in enumerate(zip(_COLUMNS, cells, strict=True)):
        cell = _fit(cell, width)
        if index:  # two spaces before a left-aligned column, so it never touches a number
            text += "  " if align == "<" else " "
        text += cell.ljust(width) if align == "<" else cell.rjust(width)
    return text.rstrip()


def _row_line(row: Row) -> str:
    name = "  " * row.level + row.name
    tube_cells = (
        (format_count(row.in_flight, 7), format_count(row.ready, 7), format_seconds(row.backlog))
        if row.tube_level
        else ("", "", "")
    )
    return _line(
        (
            name,
            "" if row.done is None and row.name == SUMMARISED else format_count(row.done),
            format_rate(row.rate_short),
            format_rate(row.rate_long),
            format_rate(row.released_per_min),
            format_rate(row.buried_per_min),
            *tube_cells,
            row.api,
        )
    )


def _state_word(view: DaemonView) -> str:
    if view.draining:
        return "draining"
    return "quiet" if view.quiet else "running"


def _header(view: DaemonView, now: float) -> str:
    if view.state == "connecting":
        return f"{view.url}  connecting…"
    if view.state == "unreachable":
        text = f"{view.url}  unreachable: {view.error}"
        if view.retry_at is not None:
            text += f"  (retry in {format_seconds(math.ceil(max(0.0, view.retry_at - now)))}"
            text += f", attempt {view.attempt})" if view.attempt else ")"
        if view.last_seen is not None:
            text += f"  last seen {format_seconds(now - view.last_seen)} ago"
        return text
    flows = [*view.flows.values(), view.summarised]
    lanes = sum(p.lanes for p in view.pools)
    connected = sum(p.lanes_connected for p in view.pools)
    parts = [
        view.url,
        f"pid {view.pid if view.pid is not None else DASH}",
        _state_word(view),
        f"jobs {format_count(view.jobs_running)}",
        f"lanes {connected}/{lanes}",
        f"up {format_seconds(None if view.up_since is None else now - view.up_since)}",
        f"10s {format_rate(view.rate(flows, 'done', now, _SHORT))}/s",
        f"1m {format_rate(view.rate(flows, 'done', now, _LONG))}/s",
    ]
    return "  ".join(parts)


def _pool_line(pool: PoolView) -> str:
    tubes = ", ".join(pool.tubes) or DASH
    return (
        f"{_INDENT}pool {_fit(pool.name, 16):<16} tubes {_fit(tubes, 30):<30}"
        f" lanes {pool.lanes_connected}/{pool.lanes}  jobs {pool.jobs}/{pool.slots}"
    )


def _notes(view: DaemonView) -> list[str]:
    notes = []
    if view.draining and view.drain_reason:
        notes.append(f"draining: {view.drain_reason}")
    if view.stream_since is None:
        notes.append("events: not connected, so no rates")
    if view.dropped or view.summarised.seen:
        notes.append(
            f"events: {view.dropped} missed (this viewer fell behind), "
            f"{sum(view.summarised.seen.values())} summarised (over events_per_second)"
        )
    if view.connections_lost:
        notes.append(f"beanstalkd connections lost: {view.connections_lost} ({view.last_lost})")
    if view.metrics_error:
        notes.append(f"metrics: {view.metrics_error}")
    return [f"{_INDENT}note: {note}" for note in notes]


def _api_lines(view: DaemonView) -> list[str]:
    if not view.apis:
        return []
    lines = [f"{_INDENT}{'API':<24} {'STATE':<10} {'CALLS':>8} {'FAILURES':>8}"]
    for api in view.apis.values():
        lines.append(
            f"{_INDENT}{_fit(api.name, 24):<24} {_fit(api.state, 10):<10}"
            f" {format_count(api.calls):>8} {format_count(api.failures):>8}"
        )
    return lines


def render_daemon(view: DaemonView, now: float) -> list[str]:
    lines = [_header(view, now)]
    if view.state != "up":
        return lines
    lines += [_pool_line(pool) for pool in view.pools]
    lines.append(_line([header for header, _, _ in _COLUMNS]))
    lines += [_row_line(row) for row in tube_rows(view, now)]
    lines += _api_lines(view)
    lines += _notes(view)
    return lines


def render(model: TopModel, now: float, *, stamp: str, interval: float) -> list[str]:
    """The whole screen, as lines (no trailing spaces, no escape sequences)."""
    count = len(model.daemons)
    every = f"{interval:g}s"
    title = f"tubeworker top  {count} daemon{'s' if count != 1 else ''}  every {every}  {stamp}"
    lines = [title.rstrip()]
    for view in model.daemons.values():
        lines.append("")
        lines += render_daemon(view, now)
    return lines


def _daemon_summary(view: DaemonView, now: float) -> str:
    if view.state != "up":
        return _header(view, now)
    flows = [*view.flows.values(), view.summarised]
    totals = {
        outcome: sum(view.total(t, h, outcome) for t, h in view.known_keys())
        for outcome in ("deleted", "released", "buried")
    }
    if view.metrics is None:
        totals = {o: n + view.summarised.seen.get(o, 0) for o, n in totals.items()}
    lanes = sum(p.lanes for p in view.pools)
    connected = sum(p.lanes_connected for p in view.pools)
    return (
        f"{view.url} pid {view.pid if view.pid is not None else DASH} {_state_word(view)}"
        f" jobs {format_count(view.jobs_running)} lanes {connected}/{lanes}"
        f" done {totals['deleted']} released {totals['released']} buried {totals['buried']}"
        f" 10s {format_rate(view.rate(flows, 'done', now, _SHORT))}/s"
        f" 1m {format_rate(view.rate(flows, 'done', now, _LONG))}/s"
    )


def summary_line(model: TopModel, now: float, *, stamp: str) -> str:
    """One line for every daemon, for logs and pipes."""
    return stamp + "  " + " | ".join(_daemon_summary(v, now) for v in model.daemons.values())


# --------------------------------------------------------------------------- the I/O


def normalize_url(url: str) -> str:
    """``host:port`` → ``http://host:port``; no trailing slash. ValueError if not http(s)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    scheme = url.partition("://")[0].lower()
    if scheme not in ("http", "https") or not url.partition("://")[2]:
        raise ValueError(f"not a control-plane URL (http://HOST:PORT): {url}")
    return url


def events_url(url: str) -> str:
    return "ws" + url.removeprefix("http") + "/events"


def describe_error(exc: BaseException) -> str:
    """One line for an error: what it was, never a traceback."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        exc = (leaves or list(exc.exceptions))[0]
    text = _describe_leaf(exc)
    return _fit(" ".join(text.split()), _ERROR_WIDTH)


def _describe_leaf(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        if reason is None:
            return "events stream closed"
        return f"events stream closed ({reason.name}, code {reason.code})"
    if isinstance(exc, HandshakeError):
        return f"events stream: {type(exc).__name__} {exc}".strip()
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.request.url.path} answered {exc.response.status_code}"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {_REQUEST_TIMEOUT:g}s ({type(exc).__name__})"
    if isinstance(exc, httpx.HTTPError):
        os_error = _root_os_error(exc)
        detail = os.strerror(os_error.errno) if os_error and os_error.errno else str(exc)
        return f"{type(exc).__name__}: {detail or 'failed'}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _root_os_error(exc: BaseException, depth: int = 0) -> OSError | None:
    """The OSError with an errno under an exception (its causes, the groups among them):
    "Connection refused" rather than "all attempts to connect failed"."""
    if depth > 10:
        return None
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return exc
    below: list[BaseException] = []
    if isinstance(exc, BaseExceptionGroup):
        below += exc.exceptions
    below += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    for inner in below:
        found = _root_os_error(inner, depth + 1)
        if found is not None:
            return found
    return None


async def poll_daemon(model: TopModel, http: httpx.AsyncClient, url: str) -> None:
    """``/status`` (its failure is the daemon's), then ``/metrics`` (its failure is noted)."""
    response = await http.get(url + "/status")
    response.raise_for_status()
    model.on_status(url, response.json(), time.monotonic(), time.time())
    try:
        response = await http.get(url + "/metrics")
        response.raise_for_status()
        snapshot = parse_metrics(response.text)
    except (httpx.HTTPError, ValueError) as exc:
        model.on_metrics(url, None, describe_error(exc))
    else:
        model.on_metrics(url, snapshot, None)


async def poll_once(model: TopModel, http: httpx.AsyncClient, url: str) -> None:
    try:
        await poll_daemon(model, http, url)
    except Exception as exc:  # any failure is this daemon's state, shown, never raised
        model.on_unreachable(url, describe_error(exc), time.monotonic())


async def _poll_forever(model: TopModel, http: httpx.AsyncClient, url: str, every: float) -> None:
    while True:
        await trio.sleep(every)
        await poll_daemon(model, http, url)


async def _session(model: TopModel, http: httpx.AsyncClient, url: str, every: float) -> None:
    """Until the daemon goes away: the events stream read, ``/status`` polled."""
    await poll_daemon(model, http, url)
    async with (
        open_websocket_url(
            events_url(url), connect_timeout=_REQUEST_TIMEOUT, disconnect_timeout=1.0
        ) as ws,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_poll_forever, model, http, url, every)
        while True:
            message = await ws.get_message()
            try:
                event = json.loads(message)
            except ValueError:
                continue
            model.on_event(url, event, time.monotonic())


async def watch_daemon(
    model: TopModel,
    http: httpx.AsyncClient,
    url: str,
    every: float,
    *,
    rng: random.Random | None = None,
) -> None:
    """Forever: a session with the daemon, and between sessions a backoff (0.5 s doubling
    to 10 s, jittered), the daemon shown as unreachable with the error meanwhile."""
    rng = rng or random.Random()
    failures = 0
    while True:
        began = time.monotonic()
        try:
            await _session(model, http, url, every)
            error = "the daemon closed the events stream"
        except Exception as exc:  # any failure is this daemon's state, shown, never raised
            error = describe_error(exc)
        now = time.monotonic()
        failures = 1 if now - began >= _STABLE_SESSION else failures + 1
        delay = exponential_delay(failures, base=_RETRY_BASE, cap=_RETRY_CAP)
        delay *= rng.uniform(0.5, 1.0)
        model.on_unreachable(url, error, now, retry_at=now + delay, attempt=failures)
        await trio.sleep(delay)


class Screen:
    """Where the view goes: redrawn in place on a terminal, one line per interval otherwise."""

    _ENTER: Final = "\x1b[?1049h\x1b[?25l"  # the alternate screen, cursor hidden
    _LEAVE: Final = "\x1b[?25h\x1b[?1049l"
    _HOME: Final = "\x1b[H"
    _CLEAR_LINE: Final = "\x1b[K"
    _CLEAR_BELOW: Final = "\x1b[J"

    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self.out = out
        self.tty = tty

    def __enter__(self) -> Screen:
        if self.tty:
            self.out.write(self._ENTER)
            self.out.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tty:
            self.out.write(self._LEAVE)
            self.out.flush()

    def draw(self, lines: list[str]) -> None:
        size = shutil.get_terminal_size()
        # One column short of the edge: a character in the last column would be erased by
        # the clear-to-end-of-line that follows it on many terminals.
        width, height = max(size.columns - 1, 1), max(size.lines, 1)
        if len(lines) > height:
            lines = [*lines[: height - 1], f"… {len(lines) - height + 1} more lines"]
        body = "\r\n".join(f"{line[:width]}{self._CLEAR_LINE}" for line in lines)
        self.out.write(self._HOME + body + self._CLEAR_BELOW)
        self.out.flush()

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _stamp(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


async def _draw_forever(model: TopModel, screen: Screen, interval: float) -> None:
    every = max(interval, _MIN_DRAW)
    if not screen.tty:  # one line per interval, the first after the first poll
        await trio.sleep(every)
    while True:
        now, stamp = time.monotonic(), _stamp(time.time())
        if screen.tty:
            screen.draw(render(model, now, stamp=stamp, interval=interval))
        else:
            screen.line(summary_line(model, now, stamp=stamp))
        await trio.sleep(every)


async def _until_signal(cancel: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            cancel()
            return


async def run_live(urls: Sequence[str], interval: float, screen: Screen) -> int:
    model = TopModel(urls)
    poll_every = max(interval, _MIN_POLL)
    async with httpx.AsyncClient(timeout=_REQUEST_TIMEOUT) as http:
        with screen:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_signal, nursery.cancel_scope.cancel)
                for url in urls:
                    nursery.start_soon(watch_daemon, model, http, url, poll_every)
                nursery.start_soon(_draw_forever, model, screen, interval)
    return EX_OK


async def run_once(urls: Sequence[str], interval: float, out: TextIO) -> int:
    model = TopModel(urls)
    async with (
        httpx.AsyncClient(timeout=_REQUEST_TIMEOUT) as http,
        trio.open_nursery() as nursery,
    ):
        for url in urls:
            nursery.start_soon(poll_once, model, http, url)
    lines = render(model, time.monotonic(), stamp=_stamp(time.time()), interval=interval)
    out.write("\n".join(lines) + "\n")
    out.flush()
    reachable = all(view.state == "up" for view in model.daemons.values())
    return EX_OK if reachable else EX_UNAVAILABLE


def _only(group: BaseExceptionGroup[BaseException], kind: type[BaseException]) -> bool:
    return group.split(kind)[1] is None


def _quiet_broken_pipe() -> None:
    # Python flushes stdout at exit: point it at /dev/null so that raises nothing more.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def top(args: argparse.Namespace) -> int:
    try:
        urls = [normalize_url(url) for url in (args.urls or [DEFAULT_URL])]
    except ValueError as exc:
        print(f"tubeworker top: {exc}", file=sys.stderr)
        return EX_USAGE
    interval = float(args.interval)
    if not (math.isfinite(interval) and interval > 0):
        print("tubeworker top: --interval must be a positive number of seconds", file=sys.stderr)
        return EX_USAGE
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # "—" on a terminal that cannot show it
    try:
        if args.once:
            return trio.run(run_once, urls, interval, sys.stdout)
        return trio.run(run_live, urls, interval, Screen(sys.stdout, tty=sys.stdout.isatty()))
    except KeyboardInterrupt:  # before the signal receiver was installed
        return EX_OK
    except BrokenPipeError:  # `tubeworker top | head`
        _quiet_broken_pipe()
        return EX_OK
    except BaseExceptionGroup as group:
        if _only(group, KeyboardInterrupt):
            return EX_OK
        if _only(group, BrokenPipeError):
            _quiet_broken_pipe()
            return EX_OK
        raise
