"""A pool: tubes (names and glob patterns), concurrency, profile and retry policy, shared by
its lanes; tube discovery for patterns; how its concurrency is split into lanes."""

from __future__ import annotations

import math

import structlog
import trio

from tubeworker.beanstalk.client import Address, connect
from tubeworker.config import PoolConfig
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.runtime.admission import Admission
from tubeworker.runtime.dispatch import DispatchRules
from tubeworker.runtime.invoke import ProcessPool
from tubeworker.runtime.services import Services
from tubeworker.tubes import is_pattern, matches_any

__all__ = ["Pool", "lane_sizes"]

_NONE: frozenset[str] = frozenset()

log = structlog.get_logger("tubeworker")


def lane_sizes(concurrency: int, jobs_per_connection: int, servers: int) -> list[int]:
    """Jobs per lane: ``concurrency`` split as evenly as possible over
    ceil(concurrency / jobs_per_connection) lanes, and at least one lane per server."""
    count = max(math.ceil(concurrency / jobs_per_connection), min(concurrency, servers))
    return [concurrency // count + (1 if i < concurrency % count else 0) for i in range(count)]


class Pool:
    """Tubes, concurrency and policy shared by its lanes."""

    def __init__(
        self, config: PoolConfig, services: Services, processes: ProcessPool | None = None
    ) -> None:
        self.config = config
        self.services = services
        self.servers = config.servers or services.config.servers
        policy = config.retry
        self.rules = DispatchRules(
            policy=policy,
            lookup=services.registry.get,
            bound=services.registry.get(config.handler) if config.handler else None,
            bound_name=config.handler,
            broken=services.registry.broken_reason,
            signing=services.signing_keys,
            encryption=services.encryption_keys,
            require_signature=(
                config.require_signature
                if config.require_signature is not None
                else services.config.security.require_signature
            ),
        )
        self.patterns = tuple(t for t in config.tubes if is_pattern(t))
        self.tubes: frozenset[str] = frozenset(t for t in config.tubes if not is_pattern(t))
        self.tubes_version = 0
        self._tubes_changed = trio.Event()
        # Threads (io) or processes (compute) for sync handlers: at most one per job slot.
        self.limiter = trio.CapacityLimiter(config.concurrency)
        self.processes = processes
        self.log = log.bind(pool=config.name)
        # Flow control: the APIs every job of the pool needs (its bound handler's), and
        # per tube ([api.NAME] tubes). Without either, lanes never ask the tracker.
        self.bound_apis = frozenset(self.rules.bound.apis) if self.rules.bound else frozenset()
        self.gated = self._needs_apis()
        state = services.state
        self.admission = Admission(
            tracker=services.tracker,
            limits=services.limits,
            tokens=services.token_groups,
            counters=state.counters,
            draining=lambda: state.draining,
            other_work=lambda: bool(self.watchable()[0]),
            limits_changed=services.limit_released,
            log=self.log,
        )

    def apis_of(self, tube: str) -> frozenset[str]:
        """The APIs every job of ``tube`` needs (before its handler is known)."""
        of_tube = self.services.tube_apis.get(tube, _NONE)
        return of_tube | self.bound_apis if self.bound_apis else of_tube

    def _needs_apis(self) -> bool:
        """Whether a job of this pool needs an API before its handler is known (its bound
        handler's, or one of its tubes'); else its lanes never ask (an API declared for
        other tubes costs this pool's jobs nothing)."""
        tube_apis = self.services.tube_apis
        return bool(self.bound_apis) or any(tube in tube_apis for tube in self.tubes)

    def watchable(self) -> tuple[frozenset[str], float | None]:
        """The tubes to watch now, leaving out those whose APIs are open, and when the
        first of those may be watched again (None: none is blocked)."""
        if not self.gated:
            return self.tubes, None
        tracker = self.services.tracker
        fetchable: set[str] = set()
        until: float | None = None
        for tube in self.tubes:
            apis = self.apis_of(tube)
            blocked = tracker.blocked_until(apis) if apis else None
            if blocked is None:
                fetchable.add(tube)
            else:
                until = blocked if until is None else min(until, blocked)
        if until is None:
            return self.tubes, None
        return frozenset(fetchable), until

    def lane_sizes(self) -> list[int]:
        return lane_sizes(
            self.config.concurrency, self.config.jobs_per_connection, len(self.servers)
        )

    def set_tubes(self, tubes: frozenset[str]) -> None:
        if tubes != self.tubes:
            self.tubes = tubes
            self.gated = self._needs_apis()
            self.tubes_version += 1
            self._tubes_changed.set()
            self._tubes_changed = trio.Event()

    async def wait_for_tubes(self) -> frozenset[str]:
        while not self.tubes:
            await self._tubes_changed.wait()
        return self.tubes

    async def discover_tubes(self) -> None:
        """Poll ``list-tubes`` on every server for tubes matching the pool's patterns."""
        literal = frozenset(t for t in self.config.tubes if not is_pattern(t))
        config = self.services.config
        found: dict[Address, frozenset[str]] = {}
        while True:
            for address in self.servers:
                try:
                    with trio.fail_after(config.connect_timeout * 2):
                        client = await connect(
                            address,
                            connect_timeout=config.connect_timeout,
                            reply_timeout=config.reply_timeout,
                        )
                        try:
                            names = await client.list_tubes()
                        finally:
                            await client.aclose()
                except (ConnectionLostError, ProtocolError, trio.TooSlowError) as exc:
                    self.log.debug("tube discovery failed", server=str(address), error=str(exc))
                    continue
                found[address] = frozenset(n for n in names if matches_any(n, self.patterns))
            tubes = literal.union(*found.values())
            if tubes != self.tubes:
                self.log.info("tubes changed", tubes=sorted(tubes))
            self.set_tubes(tubes)
            await trio.sleep(config.tube_poll_interval)
