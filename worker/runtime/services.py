"""Process-wide things lanes share, and the services handlers reach through their Job:
follow-up puts and shared HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect, raise_for_reply
from tubeworker.flow import ApiTracker
from tubeworker.flow.limits import Limits
from tubeworker.runtime.burials import BurialQueue
from tubeworker.runtime.excuses import Excuses

if TYPE_CHECKING:
    import httpx

    from tubeworker.config import Config
    from tubeworker.job import Middleware
    from tubeworker.registry import Registry
    from tubeworker.runtime.slots import InFlight
    from tubeworker.runtime.state import WorkerState
    from tubeworker.runtime.tokens import TokenBroker

__all__ = ["Producer", "Services", "SharedHttp"]


class Producer:
    """One lazily opened connection per server for ``job.put()``, shared under a lock.

    A lane's own connection is never used for puts: it belongs to the reserved job.
    """

    def __init__(self, address: Address, *, connect_timeout: float = 5.0) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self._client: Client | None = None
        self._lock = trio.Lock()

    async def put(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int:
        async with self._lock:
            if self._client is None or not self._client.is_usable:
                self._client = await connect(self.address, connect_timeout=self.connect_timeout)
            use, put = await self._client.pipeline([p.Use(tube), p.Put(body, priority, delay, ttr)])
            raise_for_reply(use)
            if isinstance(put, p.Inserted):
                return put.id
            raise_for_reply(put)
            raise AssertionError(f"unexpected reply to put: {put!r}")  # pragma: no cover

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class SharedHttp:
    """One ``httpx.AsyncClient`` for the process, created on first use; every request it
    makes is reported to the API tracker (flow control), when there is one."""

    def __init__(self, tracker: ApiTracker | None = None) -> None:
        self._client: httpx.AsyncClient | None = None
        self.tracker = tracker

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx  # imported on first use: most workers never make HTTP calls

            from tubeworker.flow.http import TrackingTransport

            transport = TrackingTransport(self.tracker) if self.tracker is not None else None
            self._client = httpx.AsyncClient(timeout=30.0, transport=transport)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._client.aclose()


@dataclass
class Services:
    """Process-wide things lanes share."""

    config: Config
    registry: Registry
    state: WorkerState
    in_flight: InFlight
    http: SharedHttp = field(default_factory=SharedHttp)
    producers: dict[Address, Producer] = field(default_factory=dict)
    excuses: Excuses = field(default_factory=Excuses)
    middleware: tuple[Middleware, ...] = ()  # enabled in [middleware], outermost first
    tracker: ApiTracker = field(default_factory=lambda: ApiTracker(clock=trio.current_time))
    # The APIs every job of a tube needs ([api.NAME] tubes).
    tube_apis: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Burial records (why a job was buried), written by the daemon's recorder; None: not kept.
    burials: BurialQueue | None = None
    # Limits ([[limit]], [api.NAME] rate/max_concurrent): local ones here, fleet-wide ones
    # through their token brokers (limit name → brokers, run by the daemon).
    limits: Limits = field(default_factory=lambda: Limits((), clock=trio.current_time))
    token_brokers: dict[str, tuple[TokenBroker, ...]] = field(default_factory=dict)
    _lease_returned: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        if self.http.tracker is None:
            self.http.tracker = self.tracker
        self.limits.on_release = self._limit_released

    def _limit_released(self) -> None:
        self._lease_returned.set()
        self._lease_returned = trio.Event()

    async def limit_released(self) -> None:
        """Until a job running under a limit ends (room for one waiting)."""
        await self._lease_returned.wait()

    # How lanes connect; None: TCP/unix with the config's timeouts. Tests pass a scripted
    # server's.
    connector: Callable[[Address | str], Awaitable[Client]] | None = None

    def producer(self, address: Address) -> Producer:
        producer = self.producers.get(address)
        if producer is None:
            producer = Producer(address, connect_timeout=self.config.connect_timeout)
            self.producers[address] = producer
        return producer

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for producer in self.producers.values():
                await producer.aclose()
            await self.http.aclose()
