"""The clock's state in this process: what it did (statistics, read by metrics, /status
and tests) and what its parts share while they serve a server (ClockContext)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.config import Config, ScheduleConfig
from tubeworker.observe.counters import Histogram
from tubeworker.runtime.heartbeats import HeartbeatSeen
from tubeworker.schedule import definition_hash, schedule_tube

__all__ = ["LATENESS_BUCKETS", "ClockContext", "ClockStatistics", "ScheduleCounts"]


# Seconds from a fire time to its put being answered (on time: a few ms; 1 s: a misfire).
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0)


@dataclass
class ScheduleCounts:
    """One schedule's fires put by this process, its misfires and their lateness."""

    fires: int = 0
    misfires: int = 0  # skipped or coalesced
    paused: int = 0  # fires skipped while paused
    overlapped: int = 0  # fires skipped while the previous run was unfinished
    last_fire: float | None = None
    lateness: Histogram = field(default_factory=lambda: Histogram(LATENESS_BUCKETS))


@dataclass
class ClockStatistics:
    """What the clock did in this process (metrics and tests read it)."""

    fires: int = 0
    skipped: int = 0
    coalesced: int = 0
    server: str | None = None  # where the ticks are, as this daemon sees it
    schedules: dict[str, ScheduleCounts] = field(default_factory=dict)
    definitions: tuple[ScheduleConfig, ...] = ()  # the config's, for the next fire times
    heartbeats: dict[str, HeartbeatSeen] = field(default_factory=dict)  # by tube

    def of(self, name: str) -> ScheduleCounts:
        counts = self.schedules.get(name)
        if counts is None:
            counts = self.schedules[name] = ScheduleCounts()
        return counts


class ClockContext:
    """What the clock's parts (serving a server, holding ticks, planning) share."""

    def __init__(self, config: Config, stats: ClockStatistics, now: Callable[[], float]):
        self.config = config
        self.stats = stats
        self.now = now
        self.definitions = {s.name: s for s in stats.definitions}
        self.schedules = {schedule_tube(s.name): s for s in stats.definitions}  # by tube
        self.hashes = {s.name: definition_hash(s) for s in stats.definitions}
        self.rng = random.Random()
        self.earlier: Sequence[Address] = ()  # servers before the one served, in order

    async def connect(self, address: Address) -> Client:
        return await connect(
            address,
            connect_timeout=self.config.connect_timeout,
            reply_timeout=self.config.reply_timeout,
            keepalive=self.config.keepalive,
        )
