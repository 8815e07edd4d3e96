"""Process-wide things lanes share, and the services handlers reach through their Job:
follow-up puts and shared HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
import trio

from tubeworker.beanstalk.client import Address, Client
from tubeworker.flow import ApiTracker
from tubeworker.flow.limits import Limits
from tubeworker.producer import AsyncProducer, ServerFailure, ServerOutOfMemory
from tubeworker.runtime.batch_book import BatchBook
from tubeworker.runtime.binlog import BinlogHealth
from tubeworker.runtime.excuses import Excuses
from tubeworker.runtime.processes import PutRoute
from tubeworker.runtime.records import RecordQueue, ReturnsLookup

if TYPE_CHECKING:
    import httpx

    from tubeworker.config import Config
    from tubeworker.flow.tokens import TokenGroup
    from tubeworker.flow.unique import UniqueLocks
    from tubeworker.job import Middleware
    from tubeworker.registry import Registry
    from tubeworker.runtime.slots import InFlight
    from tubeworker.runtime.state import WorkerState
    from tubeworker.security.keys import KeyRing

__all__ = ["LaneProducer", "Services", "SharedHttp", "put_servers"]


class LaneProducer:
    """``job.put()`` and deferrals for the jobs of one server: that server first, then the
    daemon's other servers in their configured order (:func:`put_servers`), through the
    process's one :class:`~tubeworker.producer.AsyncProducer` (a connection per server,
    opened on first use, reopened after a failure; a server that just failed is tried
    last for a few seconds). A job stored on another server is processed by the workers
    watching that server.

    A lane's own connection is never used for puts: it belongs to the reserved jobs.
    """

    __slots__ = ("_puts", "address")

    def __init__(self, puts: AsyncProducer, address: Address) -> None:
        self._puts = puts
        self.address = address

    async def put(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int:
        return await self._puts.put(
            tube, body, priority=priority, delay=delay, ttr=ttr, prefer=self.address
        )


def put_servers(config: Config) -> tuple[Address, ...]:
    """Where follow-up jobs may go: the worker's servers, then pools' own ones."""
    pools = (address for pool in config.pools for address in pool.servers)
    return tuple(dict.fromkeys((*config.servers, *pools)))


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
    producers: dict[Address, LaneProducer] = field(default_factory=dict)
    excuses: Excuses = field(default_factory=Excuses)
    middleware: tuple[Middleware, ...] = ()  # enabled in [middleware], outermost first
    tracker: ApiTracker = field(default_factory=lambda: ApiTracker(clock=trio.current_time))
    # The APIs every job of a tube needs ([api.NAME] tubes).
    tube_apis: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Records kept in beanstalkd (why a job was buried, returns by the daemon's choice),
    # written by the daemon's recorder, and the returns counted before a poison burial;
    # None: not kept.
    records: RecordQueue | None = None
    returns: ReturnsLookup | None = None
    # Limits ([[limit]], [api.NAME] rate/max_concurrent): local ones here, fleet-wide ones
    # through their tokens (limit name → a group of brokers per token tube, run by the
    # daemon).
    limits: Limits = field(default_factory=lambda: Limits((), clock=trio.current_time))
    token_groups: dict[str, tuple[TokenGroup, ...]] = field(default_factory=dict)
    # Unique-key locks (@handler(unique=...)), run by the daemon; None: no handler has one.
    unique: UniqueLocks | None = None
    # [security] signing keys: jobs are checked with them (and what the daemon writes is
    # signed with them); None: none configured.
    signing_keys: KeyRing | None = None
    # [security] encryption keys: secrets are opened (and job.put's sealed) with them.
    encryption_keys: KeyRing | None = None
    # Whether each server's binlog has room (server address → its health).
    binlogs: dict[str, BinlogHealth] = field(default_factory=dict)
    _lease_returned: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        if self.http.tracker is None:
            self.http.tracker = self.tracker
        self.limits.on_release = self._limit_released

    def _limit_released(self) -> None:
        self._lease_returned.set()
        self._lease_returned = trio.Event()

    def binlog(self, address: Address | str) -> BinlogHealth:
        """The binlog health of ``address``."""
        server = str(address)
        health = self.binlogs.get(server)
        if health is None:
            health = self.binlogs[server] = BinlogHealth(server)
        return health

    def _put_failed(self, failure: ServerFailure) -> None:
        structlog.get_logger("tubeworker").warning(
            "put not stored on a server", server=failure.server, reason=failure.reason
        )
        if failure.kind is ServerOutOfMemory:  # its binlog has no room: see runtime.binlog
            self.binlog(failure.server).refused("put")

    async def limit_released(self) -> None:
        """Until a job running under a limit ends (room for one waiting)."""
        await self._lease_returned.wait()

    # How lanes connect; None: TCP/unix with the config's timeouts. Tests pass a scripted
    # server's.
    connector: Callable[[Address | str], Awaitable[Client]] | None = None

    _puts: AsyncProducer | None = field(default=None, init=False, repr=False)
    # job.put's own producer when [worker] spool is set (deferrals never spool: a deferral
    # whose copy is not stored keeps its original instead).
    _spooled: AsyncProducer | None = field(default=None, init=False, repr=False)
    _job_producers: dict[Address, LaneProducer] = field(default_factory=dict, init=False)
    _batches: BatchBook | None = field(default=None, init=False, repr=False)

    @property
    def batches(self) -> BatchBook:
        """Batch commands (a job's end recorded in its batch, jobs added to batches)."""
        if self._batches is None:
            self._batches = BatchBook(
                connect_timeout=self.config.connect_timeout,
                reply_timeout=self.config.reply_timeout,
                counters=self.state.counters,
                events=self.state.events,
            )
        return self._batches

    @property
    def put_route(self) -> PutRoute:
        return PutRoute(
            put_servers(self.config),
            connect_timeout=self.config.connect_timeout,
            reply_timeout=self.config.reply_timeout,
        )

    def producer(self, address: Address) -> LaneProducer:
        """Puts for the jobs of ``address``'s lanes (that server first, then the others)."""
        producer = self.producers.get(address)
        if producer is None:
            if self._puts is None:
                route = self.put_route
                self._puts = AsyncProducer(
                    route.servers,
                    connect_timeout=route.connect_timeout,
                    reply_timeout=route.reply_timeout,
                    on_failure=self._put_failed,
                )
            producer = self.producers[address] = LaneProducer(self._puts, address)
        return producer

    def job_producer(self, address: Address) -> LaneProducer:
        """``job.put()``'s: as :meth:`producer`, but through the spool when there is one."""
        if self.config.spool is None:
            return self.producer(address)
        producer = self._job_producers.get(address)
        if producer is None:
            producer = self._job_producers[address] = LaneProducer(self.spooled_puts, address)
        return producer

    @property
    def spooled_puts(self) -> AsyncProducer:
        if self._spooled is None:
            assert self.config.spool is not None
            route = self.put_route
            self._spooled = AsyncProducer(
                route.servers,
                connect_timeout=route.connect_timeout,
                reply_timeout=route.reply_timeout,
                on_failure=self._put_failed,
                spool=self.config.spool,
            )
        return self._spooled

    async def run_spool_flusher(self) -> None:
        """Deliver job.put's spooled jobs (those left by an earlier run too), forever."""
        await self.spooled_puts.run_spool_flusher()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            if self._spooled is not None:
                await self._spooled.aclose()
            if self._puts is not None:
                await self._puts.aclose()
            if self.returns is not None:
                await self.returns.aclose()
            if self.unique is not None:
                await self.unique.aclose()
            if self._batches is not None:
                await self._batches.aclose()
            await self.http.aclose()
