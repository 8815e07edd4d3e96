"""The event bus: free without listeners, bounded per listener, job events rate-limited."""

from __future__ import annotations

import trio

from tubeworker.observe.counters import Histogram
from tubeworker.observe.events import EventBus


def test_given_no_listener_then_publishing_keeps_nothing() -> None:
    bus = EventBus()
    bus.publish("drain", reason="x")
    bus.job(outcome="deleted")
    assert not bus.listening


async def test_given_a_listener_then_it_gets_events_in_order() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        bus.publish("quiet")
        bus.publish("resume")
        with trio.fail_after(1):
            events = await sub.next_batch()
    assert [e["type"] for e in events] == ["quiet", "resume"]
    assert not bus.listening  # closed on leaving the with block


async def test_given_a_listener_that_falls_behind_then_old_events_go_and_it_is_told() -> None:
    bus = EventBus(queue_size=3)
    with bus.subscribe() as sub:
        for n in range(10):
            bus.publish("tick", n=n)
        with trio.fail_after(1):
            events = await sub.next_batch()
    assert events[0] == {"type": "dropped", "count": 7}
    assert [e["n"] for e in events[1:]] == [7, 8, 9]


async def test_given_many_job_outcomes_in_a_second_then_the_excess_is_summed() -> None:
    now = [100.0]
    bus = EventBus(job_events_per_second=5, clock=lambda: now[0])
    with bus.subscribe() as sub:
        for _ in range(12):
            bus.job(outcome="deleted")
        now[0] += 1  # a new second: the summary of the last one goes out first
        bus.job(outcome="released")
        with trio.fail_after(1):
            events = await sub.next_batch()
    jobs = [e for e in events if e["type"] == "job"]
    summaries = [e for e in events if e["type"] == "jobs_summarised"]
    assert len(jobs) == 6
    assert summaries == [
        {"type": "jobs_summarised", "at": summaries[0]["at"], "outcomes": {"deleted": 7}}
    ]


def test_histogram_buckets_are_cumulative_when_read() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4
    assert histogram.total == 3.65
