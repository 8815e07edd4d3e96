"""The dashboard's tubes: the tube poller's latest depths (``control.metrics``), with a
history per tube (sparklines, a tube's charts) and of the totals (the overview's charts),
rates over the last minutes; filtered, sorted and paged for the overview; and the ``tubes``
event that keeps open pages up to date.

Nothing here does I/O. The board is fed after every round of the poller (one task per
process, whatever the number of viewers, and whether or not a page is open: the history a
page shows when it opens was kept before it) and by the fleet's job counts; a page asks for
one page of rows (``page``) and is then sent the rows that changed (``tubes`` events on
the event bus, built only while a page listens).

History is sampled every ``sample_every`` seconds into bounded rings: the totals for
``HISTORY_SECONDS`` (30 minutes), each tube for ``TUBE_HISTORY_SECONDS`` (15 minutes, in
arrays of numbers: about 6 KB a tube). Until a ring is full, it says since when it collects.

- *done/min*: deletes per minute, from ``stats-tube``'s ``cmd-delete`` (every client's:
  workers of any language, and admin deletes), over the last ``RATE_WINDOW`` (5 minutes).
- *failure rate*: of the job outcomes the known tubeworker daemons counted for the tube
  over the same window, the share released or buried; None when no daemon reported any.
- *backlog seconds*: ready ÷ done per second (None when ready jobs are not moving).
- *unwatched*: ready jobs, and no connection watches the tube (``current-watching`` 0, the
  poller's own connection not counted): no worker will take them until one watches it.
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from tubeworker.control.metrics import TubeDepth, TubeDepths
from tubeworker.observe.events import EventBus
from tubeworker.tubes import is_internal

__all__ = ["HISTORY_SECONDS", "RATE_WINDOW", "SORTS", "TUBE_HISTORY_SECONDS", "TubeBoard"]

HISTORY_SECONDS: Final = 30 * 60  # the totals' history (the overview's charts)
TUBE_HISTORY_SECONDS: Final = 15 * 60  # each tube's (its charts)
RATE_WINDOW: Final = 5 * 60  # done/min and failure rates are over this window
SPARK_POINTS: Final = 60  # a row's sparkline: its last points
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


class _Ring:
    """Columns of numbers sampled together, oldest first, at most ``size`` rows; the first
    column is the time. Arrays of floats (exact for counts below 2**53): 8 bytes a number,
    where a deque of objects costs about ten times that, for every tube."""

    __slots__ = ("columns", "size")

    def __init__(self, size: int, width: int) -> None:
        self.size = size
        self.columns = tuple(array("d") for _ in range(width))

    def __len__(self) -> int:
        return len(self.columns[0])

    def append(self, *values: float) -> None:
        if len(self) >= self.size:
            for column in self.columns:
                del column[0]
        for column, value in zip(self.columns, values, strict=True):
            column.append(value)

    def clear(self) -> None:
        for column in self.columns:
            del column[:]

    def last(self, column: int) -> float:
        return self.columns[column][-1]

    def first_since(self, start: float) -> int | None:
        """The oldest row at or after ``start`` (None if none)."""
        index = bisect_left(self.columns[0], start)
        return index if index < len(self) else None

    def rows(self, start: int = 0) -> Iterator[tuple[float, ...]]:
        return zip(*(column[start:] for column in self.columns), strict=True)


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
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.depths = depths
        self.events = events
        self.sample_every = sample_every
        self.clock = clock
        self.wall = wall
        #: Points kept: of the totals, and of each tube.
        self.points = max(2, math.ceil(HISTORY_SECONDS / sample_every))
        self.tube_points = max(2, math.ceil(TUBE_HISTORY_SECONDS / sample_every))
        #: When the board began to collect (wall clock): its history starts no earlier.
        self.started_at = round(wall(), 3)
        self.trends: dict[Key, _Ring] = {}  # at, ready, buried, deletes
        self.totals_trend: deque[dict[str, float | None]] = deque(maxlen=self.points)
        self._outcome_trends: dict[str, _Ring] = {}  # at, succeeded, failed
        self._published: dict[Key, tuple[object, ...]] = {}
        self._last_sample = -math.inf
        self.round = 0
        #: The fleet's outcome totals per tube (set by the fleet poller; empty without one).
        self.outcomes: Callable[[], Outcomes] = dict
        #: Whether a dashboard page is open (set by the dashboard): ``tubes`` events are
        #: built only then.
        self.viewed: Callable[[], bool] = lambda: True
        depths.listeners.append(self.on_round)

    # ------------------------------------------------------------------ feeding

    def on_round(self) -> None:
        """After every round of the poller: history points when due, then the event."""
        now = self.clock()
        self.round += 1
        previous = self._last_sample
        sampled = now - previous >= self.sample_every
        if sampled:
            self._last_sample = now
        self._record(now, sampled, previous if math.isfinite(previous) else now)
        if not (self.events.listening and self.viewed()):
            # Nobody looks at the dashboard (``tubeworker top`` ignores these): the next
            # page fetches its rows, then gets every row in its first event.
            self._published = {}
            return
        self.events.publish("tubes", **self._event(now, sampled))

    def _record(self, now: float, sampled: bool, previous: float) -> None:
        tubes = self.depths.tubes
        for key in [k for k in self.trends if k not in tubes]:
            del self.trends[key]
        for key, depth in tubes.items():
            trend = self.trends.get(key)
            if trend is None:
                trend = self.trends[key] = _Ring(self.tube_points, 4)
            elif trend and depth.deletes < trend.last(3):
                trend.clear()  # the tube was freed and made again: its counters restarted
            if sampled or not trend:
                trend.append(now, depth.ready, depth.buried, depth.deletes)
        self._record_outcomes(now, sampled, previous)
        if sampled and self.depths.last_round_every_tube:  # totals of every tube, not a few
            totals = self.totals()
            self.totals_trend.append(
                {
                    "at": round(self.wall(), 3),
                    "ready": totals["ready"],
                    "buried": totals["buried"],
                    "done_per_min": totals["done_per_min"],
                    "failure_rate": totals["failure_rate"],  # None: no outcome counted
                }
            )

    def _record_outcomes(self, now: float, sampled: bool, previous: float) -> None:
        """The fleet's outcomes count from 0 when the dashboard starts and only grow: a
        tube new to them had none at the previous sample (its first outcomes are in the
        window, not its baseline)."""
        outcomes = self.outcomes()
        for tube in [t for t in self._outcome_trends if t not in outcomes]:
            del self._outcome_trends[tube]
        for tube, (succeeded, failed) in outcomes.items():
            trend = self._outcome_trends.get(tube)
            if trend is None:
                trend = self._outcome_trends[tube] = _Ring(self.tube_points, 3)
                trend.append(previous, 0, 0)
            elif succeeded < trend.last(1) or failed < trend.last(2):
                trend.clear()  # counted afresh (not the fleet's way, but be safe)
            if sampled or not trend:
                trend.append(now, succeeded, failed)

    # ------------------------------------------------------------------ reading

    def _window_start(self, trend: _Ring) -> int | None:
        return trend.first_since(self.clock() - RATE_WINDOW)

    def done_per_min(self, key: Key, depth: TubeDepth) -> float | None:
        trend = self.trends.get(key)
        first = None if trend is None else self._window_start(trend)
        if trend is None or first is None:
            return None
        at, _, _, deletes = (column[first] for column in trend.columns)
        span = self.clock() - at
        if span < 1.0:
            return None
        return _rate_per_minute(max(0.0, depth.deletes - deletes), span)

    def _outcomes_in_window(self, tube: str) -> tuple[int, int] | None:
        """(succeeded, failed) counted for the tube over the window; None: not known."""
        trend = self._outcome_trends.get(tube)
        current = self.outcomes().get(tube)
        first = None if trend is None else self._window_start(trend)
        if trend is None or current is None or first is None:
            return None
        succeeded, failed = trend.columns[1][first], trend.columns[2][first]
        return current[0] - int(succeeded), current[1] - int(failed)

    def failure_rate(self, tube: str) -> float | None:
        """Failed share of the outcomes the daemons counted over the rate window."""
        counted = self._outcomes_in_window(tube)
        if counted is None:
            return None
        succeeded, failed = counted
        return failed / (succeeded + failed) if succeeded + failed > 0 else None

    def row(self, key: Key, depth: TubeDepth) -> dict[str, Any]:
        server, tube = key
        done = self.done_per_min(key, depth)
        failure = self.failure_rate(tube)
        # Ready jobs no connection watches wait for a worker, not their turn: said plainly.
        unwatched = depth.ready > 0 and depth.watching <= 0
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
            "internal": is_internal(tube),
            "ready": depth.ready,
            "reserved": depth.reserved,
            "delayed": depth.delayed,
            "buried": depth.buried,
            "urgent": depth.urgent,
            "waiting": depth.waiting,
            "watching": max(0, depth.watching),
            "unwatched": unwatched,
            "pause_left": depth.pause_left,
            "pause": depth.pause,
            "total_jobs": depth.total_jobs,
            "done_per_min": None if done is None else round(done, 1),
            "failure_rate": None if failure is None else round(failure, 4),
            "backlog_seconds": backlog,
        }

    def rows(self, *, internal: bool = False) -> list[dict[str, Any]]:
        """Every tube's row; tubeworker's own tubes (burial records, limit tokens) only
        when asked for."""
        return [
            self.row(key, depth)
            for key, depth in self.depths.tubes.items()
            if internal or not is_internal(key[1])
        ]

    def spark(self, key: Key) -> list[int]:
        trend = self.trends.get(key)
        return [] if trend is None else [int(v) for v in trend.columns[1][-SPARK_POINTS:]]

    def trend(self, key: Key) -> list[dict[str, float]]:
        """The tube's history: ready, buried and done/min between points."""
        ring = self.trends.get(key)
        out: list[dict[str, float]] = []
        before: tuple[float, ...] | None = None
        now = self.clock()
        for point in ring.rows() if ring is not None else ():
            at, ready, buried, deletes = point
            done = (
                0.0
                if before is None
                else _rate_per_minute(max(0.0, deletes - before[3]), at - before[0])
            )
            out.append(
                {
                    "ago": round(now - at, 1),
                    "ready": int(ready),
                    "buried": int(buried),
                    "done_per_min": round(done, 1),
                }
            )
            before = point
        return out

    def history(self) -> dict[str, Any]:
        """How much history the totals have: since when (wall clock), and how much they
        keep. ``since`` is when the board began to collect, until the ring is full."""
        trend = self.totals_trend
        full = len(trend) == trend.maxlen
        since = trend[0]["at"] if full and trend else self.started_at
        return {
            "since": round(float(since or self.started_at), 3),
            "full": full,
            "seconds": HISTORY_SECONDS,
            "tube_seconds": TUBE_HISTORY_SECONDS,
            "sample_every": self.sample_every,
            "points": self.points,
            "rate_window": RATE_WINDOW,
        }

    def totals(self) -> dict[str, Any]:
        """The sums over the tubes of work: never over tubeworker's own (their records and
        tokens are not jobs), whatever the overview shows."""
        rows = self.rows()
        done = [r["done_per_min"] for r in rows if r["done_per_min"] is not None]
        failed = succeeded = 0
        for tube in self._outcome_trends:
            counted = None if is_internal(tube) else self._outcomes_in_window(tube)
            if counted is not None:
                succeeded += counted[0]
                failed += counted[1]
        return {
            "tubes": len(rows),
            "servers": len({r["server"] for r in rows}),
            "ready": sum(r["ready"] for r in rows),
            "reserved": sum(r["reserved"] for r in rows),
            "delayed": sum(r["delayed"] for r in rows),
            "buried": sum(r["buried"] for r in rows),
            "urgent": sum(r["urgent"] for r in rows),
            "paused": sum(1 for r in rows if r["pause_left"] > 0),
            "unwatched": sum(1 for r in rows if r["unwatched"]),
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
        internal: bool = False,
    ) -> dict[str, Any]:
        """One page of the overview: rows whose tube name contains ``q``, sorted;
        tubeworker's own tubes only with ``internal`` (how many there are is said)."""
        per_page = max(1, min(per_page, MAX_PER_PAGE))
        needle = q.strip().lower()
        every = self.rows(internal=True)
        rows = [r for r in every if (internal or not r["internal"]) and needle in r["tube"].lower()]
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
            "internal": internal,
            "internal_tubes": sum(1 for r in every if r["internal"]),
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
