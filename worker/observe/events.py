"""The event bus: what happens in the daemon, as small JSON-able dicts, for live viewers
(the control plane's ``/events`` WebSocket, ``tubeworker top``).

Publishing costs nothing while nobody listens. Each subscriber has a bounded queue: one that
falls behind loses its oldest events and is told how many it missed (a ``dropped`` event),
and one that stops reading entirely is closed — a slow client never slows the daemon.
Job outcomes are rate-limited per second: above ``job_events_per_second`` they are counted
and summarised, not sent one by one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["EventBus", "Subscription"]


class Subscription:
    """One listener's bounded queue of events."""

    def __init__(self, bus: EventBus, size: int) -> None:
        self._bus = bus
        self._queue: deque[dict[str, Any]] = deque(maxlen=size)
        self._ready = trio.Event()
        self.dropped = 0
        self.closed = False

    def _offer(self, event: dict[str, Any]) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the oldest goes: the client is behind
        self._queue.append(event)
        self._ready.set()

    async def next_batch(self) -> list[dict[str, Any]]:
        """Every event queued since the last call (waits for at least one)."""
        while not self._queue:
            if self.closed:
                return []
            await self._ready.wait()
            self._ready = trio.Event()
        events = list(self._queue)
        self._queue.clear()
        if self.dropped:
            events.insert(0, {"type": "dropped", "count": self.dropped})
            self.dropped = 0
        return events

    def close(self) -> None:
        self.closed = True
        self._ready.set()
        self._bus._subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(
        self,
        *,
        job_events_per_second: int = 100,
        queue_size: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._subscribers: set[Subscription] = set()
        self._clock = clock
        self.job_events_per_second = job_events_per_second
        self.queue_size = queue_size
        self._second = 0
        self._jobs_this_second = 0
        self._jobs_summarised: dict[str, int] = {}

    @property
    def listening(self) -> bool:
        return bool(self._subscribers)

    def subscribe(self) -> Subscription:
        subscription = Subscription(self, self.queue_size)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, kind: str, **fields: Any) -> None:
        if not self._subscribers:
            return
        event = {"type": kind, "at": round(time.time(), 3), **fields}
        for subscription in list(self._subscribers):
            subscription._offer(event)

    def job(self, **fields: Any) -> None:
        """A job's outcome: sent as is up to the per-second rate, summarised above it."""
        if not self._subscribers:
            return
        second = int(self._clock())
        if second != self._second:
            self._flush_summary()
            self._second, self._jobs_this_second = second, 0
        self._jobs_this_second += 1
        if self._jobs_this_second <= self.job_events_per_second:
            self.publish("job", **fields)
        else:
            outcome = str(fields.get("outcome"))
            self._jobs_summarised[outcome] = self._jobs_summarised.get(outcome, 0) + 1

    def _flush_summary(self) -> None:
        if self._jobs_summarised:
            self.publish("jobs_summarised", outcomes=self._jobs_summarised)
            self._jobs_summarised = {}
