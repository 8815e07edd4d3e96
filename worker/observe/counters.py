"""The process's job counters: plain ints, bumped on the hot path, read by whoever reports."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JobCounters"]


@dataclass
class JobCounters:
    """What happened to jobs in this process, by outcome (plain ints: the hot path is cheap)."""

    reserved: int = 0
    deleted: int = 0
    released: int = 0
    buried: int = 0
    returned: int = 0  # connection closed with the job: drain deadline, lost connection
    in_flight: int = 0  # handlers running now
    skipped: int = 0  # reserved, but no longer ours when asked about (stats-job NOT_FOUND)
    connections_lost: int = 0
