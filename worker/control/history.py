"""The dashboard's history: what the tubes and the totals were over the last minutes,
sampled every ``sample_every`` seconds into bounded rings, whether or not a page is open
(a page gets it when it opens), and the rates the board computes over it.

- The totals (the overview's charts): ``HISTORY_SECONDS``, 30 minutes.
- Each tube (its sparkline and charts): ``TUBE_HISTORY_SECONDS``, 15 minutes, in arrays of
  numbers (about 6 KB a tube, where a deque of point objects cost ten times that).
- Each tube's outcome counts (the failure rates), as long.

Until a ring is full, ``describe`` says since when it collects. Rates are over the last
``RATE_WINDOW`` (5 minutes). Nothing here does I/O; the board feeds it after every round of
the tube poller.
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from tubeworker.control.poller import TubeDepth

__all__ = [
    "HISTORY_SECONDS",
    "RATE_WINDOW",
    "SPARK_POINTS",
    "TUBE_HISTORY_SECONDS",
    "Key",
    "Outcomes",
    "TubeHistory",
]

HISTORY_SECONDS: Final = 30 * 60  # the totals' history (the overview's charts)
TUBE_HISTORY_SECONDS: Final = 15 * 60  # each tube's (its charts)
RATE_WINDOW: Final = 5 * 60  # done/min and failure rates are over this window
SPARK_POINTS: Final = 60  # a row's sparkline: its last points

Key = tuple[str, str]  # (server, tube)
Outcomes = Mapping[str, tuple[int, int]]  # tube → (succeeded, failed) totals


class _Ring:
    """Columns of numbers sampled together, oldest first, at most ``size`` rows; the first
    column is the time. Arrays of floats (exact for counts below 2**53): 8 bytes a number."""

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

    def rows(self) -> Iterator[tuple[float, ...]]:
        return zip(*self.columns, strict=True)


def rate_per_minute(count: float, seconds: float) -> float:
    return count / seconds * 60 if seconds > 0 else 0.0


class TubeHistory:
    """The rings, and the rates over their last ``RATE_WINDOW``."""

    def __init__(
        self,
        *,
        sample_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.sample_every = sample_every
        self.clock = clock
        self.wall = wall
        #: Points kept: of the totals, and of each tube.
        self.points = max(2, math.ceil(HISTORY_SECONDS / sample_every))
        self.tube_points = max(2, math.ceil(TUBE_HISTORY_SECONDS / sample_every))
        #: When it began to collect (wall clock): the history starts no earlier.
        self.started_at = round(wall(), 3)
        self.tubes: dict[Key, _Ring] = {}  # at, ready, buried, deletes
        self.totals: deque[dict[str, float | None]] = deque(maxlen=self.points)
        self.outcomes: dict[str, _Ring] = {}  # at, succeeded, failed
        self._last_sample = -math.inf

    # ------------------------------------------------------------------ feeding

    def sample(self, depths: Mapping[Key, TubeDepth], outcomes: Outcomes) -> bool:
        """After a round of the poller: a point of every tube when one is due (a new tube's
        first point at once); whether one was due (then ``add_totals``)."""
        now = self.clock()
        previous = self._last_sample
        sampled = now - previous >= self.sample_every
        if sampled:
            self._last_sample = now
        for key in [k for k in self.tubes if k not in depths]:
            del self.tubes[key]
        for key, depth in depths.items():
            trend = self.tubes.get(key)
            if trend is None:
                trend = self.tubes[key] = _Ring(self.tube_points, 4)
            elif trend and depth.deletes < trend.last(3):
                trend.clear()  # the tube was freed and made again: its counters restarted
            if sampled or not trend:
                trend.append(now, depth.ready, depth.buried, depth.deletes)
        self._sample_outcomes(outcomes, now, sampled, previous if math.isfinite(previous) else now)
        return sampled

    def _sample_outcomes(
        self, outcomes: Outcomes, now: float, sampled: bool, previous: float
    ) -> None:
        """The fleet's outcomes count from 0 when the dashboard starts and only grow: a
        tube new to them had none at the previous sample (its first outcomes are in the
        window, not its baseline)."""
        for tube in [t for t in self.outcomes if t not in outcomes]:
            del self.outcomes[tube]
        for tube, (succeeded, failed) in outcomes.items():
            trend = self.outcomes.get(tube)
            if trend is None:
                trend = self.outcomes[tube] = _Ring(self.tube_points, 3)
                trend.append(previous, 0, 0)
            elif succeeded < trend.last(1) or failed < trend.last(2):
                trend.clear()  # counted afresh (not the fleet's way, but be safe)
            if sampled or not trend:
                trend.append(now, succeeded, failed)

    def add_totals(self, totals: Mapping[str, Any]) -> None:
        """A point of the totals (of every tube: after a round that asked for them all)."""
        self.totals.append(
            {
                "at": round(self.wall(), 3),
                "ready": totals["ready"],
                "buried": totals["buried"],
                "done_per_min": totals["done_per_min"],
                "failure_rate": totals["failure_rate"],  # None: no outcome counted
            }
        )

    # ------------------------------------------------------------------ rates

    def _window_start(self, trend: _Ring) -> int | None:
        return trend.first_since(self.clock() - RATE_WINDOW)

    def done_per_min(self, key: Key, deletes: int) -> float | None:
        """Deletes per minute over the window, ``deletes`` being the count now."""
        trend = self.tubes.get(key)
        first = None if trend is None else self._window_start(trend)
        if trend is None or first is None:
            return None
        span = self.clock() - trend.columns[0][first]
        if span < 1.0:
            return None
        return rate_per_minute(max(0.0, deletes - trend.columns[3][first]), span)

    def outcomes_in_window(
        self, tube: str, current: tuple[int, int] | None
    ) -> tuple[int, int] | None:
        """(succeeded, failed) counted for the tube over the window, ``current`` being the
        counts now; None: not known."""
        trend = self.outcomes.get(tube)
        first = None if trend is None else self._window_start(trend)
        if trend is None or current is None or first is None:
            return None
        succeeded, failed = trend.columns[1][first], trend.columns[2][first]
        return current[0] - int(succeeded), current[1] - int(failed)

    # ------------------------------------------------------------------ reading

    def spark(self, key: Key) -> list[int]:
        trend = self.tubes.get(key)
        return [] if trend is None else [int(v) for v in trend.columns[1][-SPARK_POINTS:]]

    def trend(self, key: Key) -> list[dict[str, float]]:
        """A tube's history: ready, buried and done/min between points."""
        ring = self.tubes.get(key)
        out: list[dict[str, float]] = []
        before: tuple[float, ...] | None = None
        now = self.clock()
        for point in ring.rows() if ring is not None else ():
            at, ready, buried, deletes = point
            done = (
                0.0
                if before is None
                else rate_per_minute(max(0.0, deletes - before[3]), at - before[0])
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

    def describe(self) -> dict[str, Any]:
        """How much history the totals have: since when (wall clock), and how much they
        keep. ``since`` is when it began to collect, until the ring is full."""
        full = len(self.totals) == self.totals.maxlen
        since = self.totals[0]["at"] if full and self.totals else None
        return {
            "since": round(float(since or self.started_at), 3),
            "full": full,
            "seconds": HISTORY_SECONDS,
            "tube_seconds": TUBE_HISTORY_SECONDS,
            "sample_every": self.sample_every,
            "points": self.points,
            "rate_window": RATE_WINDOW,
        }
