"""The Servers view's history: each beanstalkd server's connections, jobs and CPU over the
last ``HISTORY_SECONDS``, sampled with the tubes' history (every ``sample_every`` seconds
after a round of the poller), in bounded rings. A point while the server is down is a gap
(None), never a zero. Pure: the board feeds it."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from tubeworker.control.history import HISTORY_SECONDS
from tubeworker.control.poller import ServerSeen

__all__ = ["SERIES", "ServerHistory"]

#: What each point holds, in the order the page draws them.
SERIES: Final = ("connections", "jobs", "cpu")


class ServerHistory:
    def __init__(self, *, sample_every: float = 5.0) -> None:
        self.points = max(2, math.ceil(HISTORY_SECONDS / sample_every))
        self.rings: dict[str, deque[tuple[float, float | None, float | None, float | None]]] = {}
        self._cpu: dict[str, tuple[float, float]] = {}  # server → (wall time, CPU seconds)

    def sample(self, servers: Mapping[str, ServerSeen], now: float) -> None:
        """One point per server: connections, jobs in every state, and CPU seconds per
        second since the last point (beanstalkd's rusage); None while it is down."""
        for name in [n for n in self.rings if n not in servers]:
            del self.rings[name]
            self._cpu.pop(name, None)
        for name, seen in servers.items():
            ring = self.rings.setdefault(name, deque(maxlen=self.points))
            stats = seen.stats
            if not seen.up or stats is None:
                ring.append((now, None, None, None))
                self._cpu.pop(name, None)
                continue
            jobs = (
                stats.current_jobs_ready
                + stats.current_jobs_reserved
                + stats.current_jobs_delayed
                + stats.current_jobs_buried
            )
            used = stats.rusage_utime + stats.rusage_stime
            cpu: float | None = None
            before = self._cpu.get(name)
            if before is not None and now > before[0] and used >= before[1]:
                cpu = round((used - before[1]) / (now - before[0]), 4)
            self._cpu[name] = (now, used)
            ring.append((now, float(stats.current_connections), float(jobs), cpu))

    def describe(self, name: str) -> dict[str, Any]:
        """The server's series for the page: ``at`` (wall time) and one list per series."""
        ring = self.rings.get(name, ())
        found: dict[str, Any] = {"at": [round(point[0], 1) for point in ring]}
        for index, series in enumerate(SERIES, start=1):
            found[series] = [point[index] for point in ring]
        return found
