"""The dashboard's tubes: the tube poller's latest depths (``control.metrics``), with a
history per tube (sparklines, a tube's charts) and of the totals (the overview's charts),
rates over the last minutes; filtered, sorted and paged for the overview; and the ``tubes``
event that keeps open pages up to date.

Nothing here does I/O. The board is fed after every round of the poller (one task per
process, whatever the number of viewers, and whether or not a page is open: the history a
page shows when it opens was kept before it) and by the fleet's job counts; a page asks for
one page of rows (``page``) and is then sent the rows that changed (``tubes`` events on
the event bus, built only while a page listens).

History (``control.history``) is kept in bounded rings: the totals for 30 minutes, each
tube for 15; rates are over its last 5 minutes (``RATE_WINDOW``).

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
from collections.abc import Callable
from typing import Any, Final

from tubeworker.control.history import Key, Outcomes, TubeHistory
from tubeworker.control.poller import TubeDepth, TubeDepths
from tubeworker.control.server_history import ServerHistory
from tubeworker.observe.events import EventBus
from tubeworker.tubes import is_internal

__all__ = ["SORTS", "TubeBoard"]

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
        self.history = TubeHistory(sample_every=sample_every, clock=clock, wall=wall)
        #: Each server's own figures over time (the Servers view).
        self.server_history = ServerHistory(sample_every=sample_every)
        self._wall = wall
        self._published: dict[Key, tuple[object, ...]] = {}
        self.round = 0
        #: The fleet's outcome totals per tube (set by the fleet poller; empty without one).
        self.outcomes: Callable[[], Outcomes] = dict
        #: Whether a dashboard page is open (set by the dashboard): ``tubes`` events are
        #: built only then.
        self.viewed: Callable[[], bool] = lambda: True
        depths.listeners.append(self.on_round)

    # ------------------------------------------------------------------ feeding

    @property
    def sample_every(self) -> float:
        return self.history.sample_every

    def on_round(self) -> None:
        """After every round of the poller: history points when due, then the event."""
        self.round += 1
        sampled = self.history.sample(self.depths.tubes, self.outcomes())
        if sampled:
            self.server_history.sample(self.depths.servers, self._wall())
        if sampled and self.depths.last_round_every_tube:  # totals of every tube, not a few
            self.history.add_totals(self.totals())
        if not (self.events.listening and self.viewed()):
            # Nobody looks at the dashboard (``tubeworker top`` ignores these): the next
            # page fetches its rows, then gets every row in its first event.
            self._published = {}
            return
        self.events.publish("tubes", **self._event(sampled))

    # ------------------------------------------------------------------ reading

    def done_per_min(self, key: Key, depth: TubeDepth) -> float | None:
        return self.history.done_per_min(key, depth.deletes)

    def _outcomes_in_window(self, tube: str) -> tuple[int, int] | None:
        return self.history.outcomes_in_window(tube, self.outcomes().get(tube))

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

    def totals(self) -> dict[str, Any]:
        """The sums over the tubes of work: never over tubeworker's own (their records and
        tokens are not jobs), whatever the overview shows."""
        rows = self.rows()
        done = [r["done_per_min"] for r in rows if r["done_per_min"] is not None]
        failed = succeeded = 0
        for tube in self.history.outcomes:
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
            row["spark"] = self.history.spark((row["server"], row["tube"]))
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

    def _event(self, sampled: bool) -> dict[str, Any]:
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
