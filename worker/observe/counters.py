"""The process's job counters: plain ints and dicts, bumped on the hot path, read by whoever
reports (the metrics collector at scrape time, ``/status``, the demo's progress line).

Nothing here locks or allocates per job beyond a dict entry per new label set: the hot
path pays for a counter it already has, never for the metrics library.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["ATTEMPT_BUCKETS", "DURATION_BUCKETS", "LATENCY_BUCKETS", "Histogram", "JobCounters"]

# Seconds. Job durations span a millisecond no-op to a long compute job; queue latency is
# whole seconds (beanstalkd's age), from "at once" to hours behind.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
# Which attempt a run is (1: the first): retries pile up in the upper buckets.
ATTEMPT_BUCKETS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0)


class Histogram:
    """Counts per bucket (cumulative only when read), a sum and a count: what Prometheus
    needs, without its per-observation lock."""

    __slots__ = ("bounds", "buckets", "count", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, cumulative count) pairs, ``+Inf`` last."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.buckets, strict=True):
            running += n
            out.append((bound, running))
        return out


def _duration_histogram() -> Histogram:
    return Histogram(DURATION_BUCKETS)


def _latency_histogram() -> Histogram:
    return Histogram(LATENCY_BUCKETS)


def _attempt_histogram() -> Histogram:
    return Histogram(ATTEMPT_BUCKETS)


# Seconds from a batch's opening to its on_complete firing: a second to a day.
BATCH_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


@dataclass
class JobCounters:
    """What happened to jobs in this process (plain ints: the hot path is cheap)."""

    reserved: int = 0
    deleted: int = 0
    released: int = 0
    buried: int = 0
    returned: int = 0  # connection closed with the job: drain deadline, lost connection
    in_flight: int = 0  # handlers running now
    skipped: int = 0  # reserved, but no longer ours when asked about (stats-job NOT_FOUND)
    connections_lost: int = 0
    loop_stalls: int = 0  # the stall detector saw the event loop blocked
    # Labelled counts and histograms cost about a microsecond per job: kept only while
    # something reads them (the control plane's /metrics turns this on).
    detailed: bool = False
    # Outcomes by (tube, handler, outcome, cause): bounded by the tubes and handlers a
    # deployment has (never a job id).
    outcomes: dict[tuple[str, str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    durations: dict[str, Histogram] = field(
        default_factory=lambda: defaultdict(_duration_histogram)
    )  # by handler
    latency: dict[str, Histogram] = field(
        default_factory=lambda: defaultdict(_latency_histogram)
    )  # put → start, by tube
    attempts: dict[str, Histogram] = field(
        default_factory=lambda: defaultdict(_attempt_histogram)
    )  # the attempt number of each run, by tube
    redeliveries: int = 0  # deliveries that followed one that ended with no outcome
    api_waits: int = 0  # jobs held because an API they need was open
    deferred: int = 0  # jobs put back as a delayed copy while their API was open
    # Batch callbacks this process fired, by kind (success, complete, death), and the
    # opening → on_complete time of the batches it completed.
    batch_fired: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    batch_completion: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))

    def totals(self) -> dict[str, int]:
        """The plain counts, for log lines and ``/status``."""
        return {
            "reserved": self.reserved,
            "deleted": self.deleted,
            "released": self.released,
            "buried": self.buried,
            "returned": self.returned,
            "skipped": self.skipped,
            "in_flight": self.in_flight,
            "connections_lost": self.connections_lost,
            "loop_stalls": self.loop_stalls,
            "api_waits": self.api_waits,
            "deferred": self.deferred,
        }
