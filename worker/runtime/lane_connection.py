"""A lane's connection life: connect (with backoff for as long as it takes), serve the
connection until fetching stops or it is lost, say why it was lost, back off, connect
again. What is served on it, the pump, is :class:`~tubeworker.runtime.lane.Lane`'s; the
lane's state lives here, where its connection life and its pump both read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from tubeworker.backoff import full_jitter_delay
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect_with_backoff
from tubeworker.runtime.batching import LIVELOCK_STREAK, BatchLimits
from tubeworker.runtime.lanejobs import LaneJobs
from tubeworker.runtime.outbox import Entry, Outbox
from tubeworker.runtime.outcome import Cause
from tubeworker.runtime.pool import Pool
from tubeworker.runtime.state import LaneStatistics

__all__ = ["Done", "LaneConnection", "Lost", "open_lane_connection", "rewatch"]


@dataclass(frozen=True, slots=True)
class Done:
    """The pump stopped: fetching stopped (drain, quiet, a job handed back by closing the
    connection) and the lane holds nothing."""


@dataclass(frozen=True, slots=True)
class Lost:
    """The pump stopped: the connection was lost (why)."""

    error: str


class LaneConnection:
    """A lane's state and its connection life (the base of :class:`Lane`)."""

    def __init__(self, pool: Pool, index: int, address: Address, slots: int) -> None:
        self.pool = pool
        self.services = services = pool.services
        self.state = services.state
        self.config = services.config
        self.address = address
        self.index = index
        self.slots = slots
        self.log = pool.log.bind(lane=index, server=str(address))
        self.connected_once = trio.Event()
        self._outbox = Outbox()
        self.jobs = LaneJobs(pool, address, self._outbox, self.log)
        self._batch = BatchLimits(slots, self.config.batch_bytes)
        self._watched: frozenset[str] = frozenset({"default"})
        self._last_io = 0.0  # trio time of the last exchange: heartbeats after silence
        self._connected = False

    # ---- connection life

    async def run(self) -> None:
        failures = 0  # consecutive lost connections
        while await self.state.wait_may_fetch():
            client = await self._connect()
            if client is None:
                continue  # fetching stopped while connecting
            ended: Done | Lost = Done()
            self._connected = True
            try:
                async with trio.open_nursery() as connection:
                    # One watcher bounds every wait for a reply (cheaper than a deadline
                    # per read on this path).
                    await connection.start(client.run_watchdog)
                    async with trio.open_nursery() as handlers:
                        ended = await self._pump(client, handlers)
                        if isinstance(ended, Lost):
                            self.jobs.return_job(
                                Cause.CONNECTION_LOST,
                                f"connection lost while the handler ran ({ended.error})",
                                lost=True,
                            )
                    connection.cancel_scope.cancel()
            finally:
                self._connected = False
                await client.aclose()
                owed = self.jobs.connection_ended()
            if isinstance(ended, Done):
                failures = 0
                continue
            failures += 1
            self._lost(ended.error, owed)
            await self._pause_before_reconnect(failures)

    def statistics(self) -> LaneStatistics:
        return LaneStatistics(
            pool=self.pool.config.name,
            index=self.index,
            address=self.address,
            slots=self.slots,
            jobs=len(self.jobs),
            connected=self._connected,
            batch_cap=self._batch.cap,
            tubes=tuple(sorted(self.pool.tubes)),
        )

    def _lost(self, error: str, owed: int) -> None:
        self.state.counters.connections_lost += 1
        self.state.events.publish(
            "connection_lost", pool=self.pool.config.name, lane=self.index, error=error
        )
        self.log.warning("connection lost", error=error, outcomes_unconfirmed=owed)
        if self._batch.connection_lost(owed=owed, confirmed=self.jobs.confirmed):
            self.log.error(
                "connection keeps failing before beanstalkd confirms our outcomes",
                times_in_a_row=self._batch.fruitless,
                batch_cap=self._batch.cap,
                hint="a slow or lossy link, or a server that stops answering: "
                "the lane backs off and reserves fewer jobs at a time",
            )

    async def _pause_before_reconnect(self, failures: int) -> None:
        livelock = self._batch.fruitless >= LIVELOCK_STREAK
        delay = full_jitter_delay(failures, base=0.1, cap=60.0 if livelock else 10.0)
        with self.state.fetch_scope():
            await trio.sleep(delay)

    async def _connect(self) -> Client | None:
        with self.state.fetch_scope():
            client = await open_lane_connection(self)
            self._watched = frozenset({"default"})
            self._last_io = trio.current_time()
            self.jobs.connected(client.server.id if client.server is not None else None)
            self.connected_once.set()
            return client
        return None  # fetching stopped while connecting

    def _rewatch(self, wanted: frozenset[str]) -> list[Entry]:
        entries, self._watched = rewatch(self._watched, wanted)
        return entries

    async def _pump(self, client: Client, handlers: trio.Nursery) -> Done | Lost:
        """Serve the connection (the lane's pump)."""
        raise NotImplementedError


async def open_lane_connection(lane: LaneConnection) -> Client:
    """Connect the lane, retrying with backoff for as long as it takes (each failure said)."""
    config = lane.config

    def on_retry(attempt: int, delay: float, error: Exception) -> None:
        lane.connected_once.set()  # tried: readiness does not wait for a dead server
        lane.log.warning(
            "cannot connect", attempt=attempt, retry_in=round(delay, 2), error=str(error)
        )

    return await connect_with_backoff(
        lane.address,
        connect_timeout=config.connect_timeout,
        reply_timeout=config.reply_timeout,
        keepalive=config.keepalive,
        cap=30.0,
        on_retry=on_retry,
        connector=lane.services.connector,
    )


def rewatch(watched: frozenset[str], wanted: frozenset[str]) -> tuple[list[Entry], frozenset[str]]:
    """watch/ignore commands that bring the watch list from ``watched`` to ``wanted``, and
    the list after them."""
    if not wanted:
        # Nothing matches any more, or every tube waits for its API: keep watching what we
        # had (beanstalkd refuses to ignore the last tube; reserves stop meanwhile).
        return [], watched
    entries = [Entry(p.Watch(t)) for t in sorted(wanted - watched)]
    entries += [Entry(p.Ignore(t)) for t in sorted(watched - wanted)]
    return entries, wanted
