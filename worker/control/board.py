"""The dashboard's tubes: the tube poller's latest depths (``control.metrics``), with a short
history per tube for sparklines and rates over the last minutes; filtered, sorted and paged
for the overview; and the ``tubes`` event that keeps open pages up to date.

Nothing here does I/O. The board is fed after every round of the poller (one task per
process, whatever the number of viewers) and by the fleet's job counts; a page asks for
one page of rows (``page``) and is then sent the rows that changed (``tubes`` events on
the event bus, built only while someone listens).

- *done/min*: deletes per minute, from ``stats-tube``'s ``cmd-delete`` (every client's:
  workers of any language, and admin deletes), over the history (up to ``HISTORY_POINTS``
  times ``sample_every``, 5 minutes by default).
- *failure rate*: of the job outcomes the known tubeworker daemons counted for the tube
  over the same window, the share released or buried; None when no daemon reported any.
- *backlog seconds*: ready ÷ done per second (None when ready jobs are not moving).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tubeworker.control.metrics import TubeDepth, TubeDepths
from tubeworker.observe.events import EventBus

__all__ = ["SORTS", "Point", "TubeBoard"]

HISTORY_POINTS: Final = 60
EVENT_ROWS: Final = 200  # rows per ``tubes`` event; more changed: the page asks again
MAX_PER_PAGE: Final = 500
#: Sort keys the overview offers.
SORTS: Final = (
    "tube",
    "ready",
    "reserved",
    "delayed",
    "buried",
    "urgent",
    "paused",
    "done",
    "failure",
    "backlog",
)

Key = tuple[str, str]  # (server, tube)
Outcomes = Mapping[str, tuple[int, int]]  # tube → (succeeded, failed) totals


@dataclass(frozen=True, slots=True)
class Point:
    at: float  # the board's clock
    ready: int
    buried: int
    deletes: int  # stats-tube cmd-delete at that time


@dataclass(frozen=True, slots=True)
class _OutcomePoint:
    at: float
    succeeded: int
    failed: int


def _rate_per_minute(count: float, seconds: float) -> float:
    return count / seconds * 60 if seconds > 0 else 0.0


class TubeBoard:
    """What the overview shows, kept fresh by the tube poller's rounds."""

    def __init__(
        self,
        depths: TubeDepths,
        events: EventBus,
        *,
        sample_every: float = 5.0,
        points: int = HISTORY_POINTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.depths = depths
        self.events = events
        self.sample_every = sample_every
        self.points = points
        self.clock = clock
        self.trends: dict[Key, deque[Point]] = {}
        self.totals_trend: deque[dict[str, float]] = deque(maxlen=points)
        self._outcome_trends: dict[str, deque[_OutcomePoint]] = {}
        self._published: dict[Key, tuple[object, ...]] = {}
        self._last_sample = -math.inf
        self.round = 0
        #: The fleet's outcome totals per tube (set by the fleet poller; empty without one).
        self.outcomes: Callable[[], Outcomes] = dict
        depths.listeners.append(self.on_round)

    # ------------------------------------------------------------------ feeding

    def on_round(self) -> None:
        """After every round of the poller: history points when due, then the event."""
        now = self.clock()
        self.round += 1
        sampled = now - self._last_sample >= self.sample_every
        if sampled:
            self._last_sample = now
        self._record(now, sampled)
        if not (self.events.listening and self.depths.every_tube):
            # Nobody looks at the dashboard (``tubeworker top`` ignores these): the next
            # page fetches its rows, then gets every row in its first event.
            self._published = {}
            return
        self.events.publish("tubes", **self._event(now, sampled))

    def _record(self, now: float, sampled: bool) -> None:
        tubes = self.depths.tubes
        for key in [k for k in self.trends if k not in tubes]:
            del self.trends[key]
        for key, depth in tubes.items():
            trend = self.trends.get(key)
            if trend is not None and trend and depth.deletes < trend[-1].deletes:
                trend.clear()  # the tube was freed and made again: its counters restarted
            if trend is None:
                trend = self.trends[key] = deque(maxlen=self.points)
            if sampled or not trend:
                trend.append(Point(now, depth.ready, depth.buried, depth.deletes))
        self._record_outcomes(now, sampled)
        if sampled and self.depths.last_round_every_tube:  # totals of every tube, not a few
            totals = self.totals()
            self.totals_trend.append(
                {
                    "at": round(time.time(), 3),
                    "ready": totals["ready"],
                    "buried": totals["buried"],
                    "done_per_min": totals["done_per_min"],
                    "failure_rate": totals["failure_rate"] if totals["failure_rate"] else 0.0,
                }
            )

    def _record_outcomes(self, now: float, sampled: bool) -> None:
        outcomes = self.outcomes()
        for tube in [t for t in self._outcome_trends if t not in outcomes]:
            del self._outcome_trends[tube]
        for tube, (succeeded, failed) in outcomes.items():
            trend = self._outcome_trends.get(tube)
            if trend and (succeeded < trend[-1].succeeded or failed < trend[-1].failed):
                trend.clear()  # a daemon restarted: its totals began again
            if trend is None:
                trend = self._outcome_trends[tube] = deque(maxlen=self.points)
            if sampled or not trend:
                trend.append(_OutcomePoint(now, succeeded, failed))

    # ------------------------------------------------------------------ reading

    def done_per_min(self, key: Key, depth: TubeDepth) -> float | None:
        trend = self.trends.get(key)
        if not trend:
            return None
        first = trend[0]
        span = self.clock() - first.at
        if span < 1.0:
            return None
        return _rate_per_minute(max(0, depth.deletes - first.deletes), span)

    def failure_rate(self, tube: str) -> float | None:
        """Failed share of the outcomes the daemons counted over the history window."""
        trend = self._outcome_trends.get(tube)
        current = self.outcomes().get(tube)
        if not trend or current is None:
            return None
        first = trend[0]
        failed = current[1] - first.failed
        total = failed + current[0] - first.succeeded
        return failed / total if total > 0 else None

    def row(self, key: Key, depth: TubeDepth) -> dict[str, Any]:
        server, tube = key
        done = self.done_per_min(key, depth)
        failure = self.failure_rate(tube)
        if depth.ready == 0:
            backlog: float | None = 0.0
        elif done:
            backlog = round(depth.ready / (done / 60), 1)
        else:
            backlog = None  # ready jobs that are not moving
        return {
            "key": f"{server}|{tube}",
            "server": server,
            "tube": tube,
            "ready": depth.ready,
            "reserved": depth.reserved,
            "delayed": depth.delayed,
            "buried": depth.buried,
            "urgent": depth.urgent,
            "waiting": depth.waiting,
            "pause_left": depth.pause_left,
            "pause": depth.pause,
            "total_jobs": depth.total_jobs,
            "done_per_min": None if done is None else round(done, 1),
            "failure_rate": None if failure is None else round(failure, 4),
            "backlog_seconds": backlog,
        }

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(key, depth) for key, depth in self.depths.tubes.items()]

    def spark(self, key: Key) -> list[int]:
        return [point.ready for point in self.trends.get(key, ())]

    def trend(self, key: Key) -> list[dict[str, float]]:
        """The tube's history: ready, buried and done/min between points."""
        points = list(self.trends.get(key, ()))
        out: list[dict[str, float]] = []
        for before, point in zip([None, *points], points, strict=False):
            done = (
                0.0
                if before is None
                else _rate_per_minute(max(0, point.deletes - before.deletes), point.at - before.at)
            )
            out.append(
                {
                    "ago": round(self.clock() - point.at, 1),
                    "ready": point.ready,
                    "buried": point.buried,
                    "done_per_min": round(done, 1),
                }
            )
        return out

    def totals(self) -> dict[str, Any]:
        rows = self.rows()
        done = [r["done_per_min"] for r in rows if r["done_per_min"] is not None]
        failed = succeeded = 0
        for tube, trend in self._outcome_trends.items():
            current = self.outcomes().get(tube)
            if trend and current is not None:
                succeeded += current[0] - trend[0].succeeded
                failed += current[1] - trend[0].failed
        return {
            "tubes": len(rows),
            "servers": len({r["server"] for r in rows}),
            "ready": sum(r["ready"] for r in rows),
            "reserved": sum(r["reserved"] for r in rows),
            "delayed": sum(r["delayed"] for r in rows),
            "buried": sum(r["buried"] for r in rows),
            "urgent": sum(r["urgent"] for r in rows),
            "paused": sum(1 for r in rows if r["pause_left"] > 0),
            "done_per_min": round(sum(done), 1),
            "failure_rate": round(failed / (failed + succeeded), 4) if failed + succeeded else None,
        }

    def page(
        self,
        *,
        q: str = "",
        sort: str = "tube",
        desc: bool = False,
        page: int = 1,
        per_page: int = 50,
    ) -> dict[str, Any]:
        """One page of the overview: rows whose tube name contains ``q``, sorted."""
        per_page = max(1, min(per_page, MAX_PER_PAGE))
        needle = q.strip().lower()
        rows = [r for r in self.rows() if needle in r["tube"].lower()]
        rows.sort(key=_sort_key(sort), reverse=desc)
        pages = max(1, math.ceil(len(rows) / per_page))
        page = max(1, min(page, pages))
        shown = rows[(page - 1) * per_page : page * per_page]
        for row in shown:
            row["spark"] = self.spark((row["server"], row["tube"]))
        return {
            "round": self.round,
            "total": len(rows),
            "page": page,
            "pages": pages,
            "per_page": per_page,
            "sort": sort,
            "desc": desc,
            "q": q,
            "rows": shown,
        }

    # ------------------------------------------------------------------ events

    def _event(self, now: float, sampled: bool) -> dict[str, Any]:
        changed: list[dict[str, Any]] = []
        current: dict[Key, tuple[object, ...]] = {}
        for key, depth in self.depths.tubes.items():
            row = self.row(key, depth)
            fingerprint = tuple(row.values())
            current[key] = fingerprint
            if self._published.get(key) != fingerprint:
                changed.append(row)
        removed = [f"{s}|{t}" for s, t in self._published if (s, t) not in current]
        self._published = current
        return {
            "round": self.round,
            "sampled": sampled,
            "totals": self.totals(),
            "rows": changed[:EVENT_ROWS],
            "more": max(0, len(changed) - EVENT_ROWS) + max(0, len(removed) - EVENT_ROWS),
            "removed": removed[:EVENT_ROWS],
            "errors": dict(self.depths.server_errors),
        }


def _sort_key(sort: str) -> Callable[[dict[str, Any]], Any]:
    field = {
        "done": "done_per_min",
        "failure": "failure_rate",
        "backlog": "backlog_seconds",
        "paused": "pause_left",
    }.get(sort, sort if sort in SORTS else "tube")
    if field == "tube":
        return lambda row: (row["tube"], row["server"])

    def key(row: dict[str, Any]) -> tuple[float, str, str]:
        value = row[field]
        if value is None:  # unknown (or, for backlog, not moving): as the largest
            value = math.inf
        return (float(value), row["tube"], row["server"])

    return key
