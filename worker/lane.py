"""Lanes and pools.

A lane owns one beanstalkd connection and loops reserve → run → outcome, one job at a time
(ownership of a reserved job belongs to the connection: BEANSTALKD.md §1). The outcome
command and the next reserve go out in one write. A pool is N lanes over a set of tubes.

While a handler runs, a guardian task watches the idle connection: if it dies, the
handler is cancelled (beanstalkd has already taken the job back), and long-running handlers
are touched on it.
"""

from __future__ import annotations

import fnmatch
import math
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import greenstalk
import structlog
import trio

from worker import protocol as p
from worker.backoff import full_jitter_delay
from worker.client import Address, Client, connect, connect_with_backoff
from worker.envelope import BadEnvelope, decode_envelope
from worker.errors import ConnectionLostError, ProtocolError
from worker.job import HandlerSpec, Job
from worker.outcome import BuryJob, DeleteJob, Outcome, ReleaseJob, ReturnJob
from worker.policy import Budget, RetryPolicy, attempt_number, job_budget
from worker.runner import run_job, timeout_outcome
from worker.services import Producer, SharedHttp

if TYPE_CHECKING:
    import httpx

    from worker.config import Config, PoolConfig
    from worker.registry import Registry
    from worker.state import RunningJob, WorkerState

__all__ = ["Pool", "Services", "handler_timeout", "run_pool", "watch_connections"]

log = structlog.get_logger("tubeworker")

# How long a shielded outcome exchange may take before the connection is given up
# (a dead server must not block a drain: BEANSTALKD.md §10.5 rule 3).
_OUTCOME_DEADLINE = 10.0


def handler_timeout(
    spec: HandlerSpec, pool_timeout: float | None, ttr: int, margin: float
) -> float | None:
    """Our own deadline: never past TTR - margin, unless the handler is touched (long-running)."""
    wanted = spec.timeout or pool_timeout
    if spec.long_running:
        return wanted  # None: no limit; the guardian touches the job
    # With a tiny TTR the margin would eat it all: keep at least half of it.
    limit = max(ttr - margin, ttr / 2)
    return limit if wanted is None else min(wanted, limit)


def touch_interval(ttr: int, margin: float) -> float:
    """Touch well inside the TTR: every half TTR, and at least ``margin`` before it expires."""
    return max(0.25, min(ttr / 2, ttr - margin))


@dataclass
class Services:
    """Process-wide things lanes share."""

    config: Config
    registry: Registry
    state: WorkerState
    producers: dict[Address, Producer]
    http: SharedHttp
    in_flight: trio.CapacityLimiter | None

    def producer(self, address: Address) -> Producer:
        producer = self.producers.get(address)
        if producer is None:
            producer = Producer(address, connect_timeout=self.config.connect_timeout)
            self.producers[address] = producer
        return producer


class Pool:
    """Tubes (names and patterns), concurrency and policy shared by its lanes."""

    def __init__(self, config: PoolConfig, services: Services) -> None:
        self.config = config
        self.services = services
        self.servers = config.servers or services.config.servers
        self.policy = RetryPolicy(
            config.retry.max_attempts,
            config.retry.backoff_base,
            config.retry.backoff_cap,
            config.retry.redelivery_limit,
        )
        self.patterns = tuple(t for t in config.tubes if _is_glob(t))
        self.tubes: frozenset[str] = frozenset(t for t in config.tubes if not _is_glob(t))
        self.tubes_version = 0
        self._tubes_changed = trio.Event()
        self.bound: HandlerSpec | None = (
            services.registry.get(config.handler) if config.handler else None
        )
        # Threads (io) or processes (compute) for sync handlers: at most one per lane.
        self.limiter = trio.CapacityLimiter(config.concurrency)
        self.log = log.bind(pool=config.name)

    def set_tubes(self, tubes: frozenset[str]) -> None:
        if tubes != self.tubes:
            self.tubes = tubes
            self.tubes_version += 1
            self._tubes_changed.set()
            self._tubes_changed = trio.Event()

    async def wait_for_tubes(self) -> frozenset[str]:
        while not self.tubes:
            await self._tubes_changed.wait()
        return self.tubes

    async def discover_tubes(self) -> None:
        """Poll ``list-tubes`` on every server for tubes matching the pool's patterns."""
        literal = frozenset(t for t in self.config.tubes if not _is_glob(t))
        interval = self.services.config.tube_poll_interval
        found: dict[Address, frozenset[str]] = {}
        while True:
            for address in self.servers:
                try:
                    with trio.fail_after(self.services.config.connect_timeout * 2):
                        client = await connect(
                            address, connect_timeout=self.services.config.connect_timeout
                        )
                        try:
                            names = await client.list_tubes()
                        finally:
                            await client.aclose()
                except (ConnectionLostError, ProtocolError, trio.TooSlowError) as exc:
                    self.log.debug("tube discovery failed", server=str(address), error=str(exc))
                    continue
                found[address] = frozenset(
                    n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in self.patterns)
                )
            tubes = literal.union(*found.values())
            if tubes != self.tubes:
                self.log.info("tubes changed", tubes=sorted(tubes))
            self.set_tubes(tubes)
            await trio.sleep(interval)


def _is_glob(tube: str) -> bool:
    return any(c in tube for c in "*?[]")


class _Guardian:
    """For long-running handlers (and TLS connections, which cannot be polled): a task that
    watches the lane's idle connection while the handler runs and touches the job when due
    or asked. Other jobs are watched by ``watch_connections`` at no per-job cost."""

    def __init__(
        self, client: Client, job_id: int, interval: float | None, on_lost: Callable[[str], None]
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.interval = interval
        self.lost: str | None = None
        self._on_lost = on_lost
        self._wait: trio.CancelScope | None = None
        self._touch_requested = False
        self._touched = trio.Event()

    async def run(self) -> None:
        while self.lost is None:
            with trio.move_on_after(self.interval or math.inf) as wait:
                self._wait = wait
                if self._touch_requested:
                    wait.cancel()
                reason = await self.client.wait_lost()
                self._lose(reason)
                return
            await self._touch()

    def _lose(self, reason: str) -> None:
        self.lost = reason
        self._on_lost(reason)
        self._touched.set()

    async def _touch(self) -> None:
        self._touch_requested = False
        # Shielded with a deadline: cancelling mid-exchange would poison the connection.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _OUTCOME_DEADLINE):
            try:
                await self.client.touch(self.job_id)
            except greenstalk.NotFoundError:
                self._lose("touch: NOT_FOUND, the job is no longer ours")
            except (ConnectionLostError, ProtocolError) as exc:
                self._lose(f"touch failed: {exc}")
        if not self.client.is_usable and self.lost is None:
            self._lose("touch got no reply in time")
        self._touched.set()
        self._touched = trio.Event()

    async def touch(self) -> None:
        """For the handler (``job.touch()``): touch now, on the owning connection."""
        if self.lost is not None:
            raise ConnectionLostError(f"cannot touch: {self.lost}")
        done = self._touched
        self._touch_requested = True
        if self._wait is not None:
            self._wait.cancel()
        await done.wait()
        if self.lost is not None:
            raise ConnectionLostError(f"cannot touch: {self.lost}")


_POLL_EVENTS: Final = select.POLLIN | getattr(select, "POLLRDHUP", 0)
_CHECK_INTERVAL: Final = 0.5


async def watch_connections(state: WorkerState, interval: float = _CHECK_INTERVAL) -> None:
    """Return the jobs whose connection died while their handler runs.

    beanstalkd never speaks unasked, so an idle connection that turns readable has been
    closed (or is broken). One ``poll(0)`` over every running job's socket per interval
    replaces a watcher task per job.
    """
    while True:
        await trio.sleep(interval)
        by_fd: dict[int, RunningJob] = {}
        for job in state.running:
            fd = job.watch_fd()
            if fd is not None:
                by_fd[fd] = job
        if not by_fd:
            continue
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, _POLL_EVENTS)
        for fd, _events in poller.poll(0):
            by_fd[fd].return_job("connection lost while the handler ran", lost=True)


class _JobServices:
    """What ``Job.touch/put/http`` reach: the lane that owns the job, and process services."""

    __slots__ = ("_job_id", "_lane")

    def __init__(self, lane: Lane, job_id: int) -> None:
        self._lane = lane
        self._job_id = job_id

    async def touch(self) -> None:
        await self._lane.touch(self._job_id)

    async def put(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int:
        producer = self._lane.services.producer(self._lane.address)
        return await producer.put(body, tube=tube, priority=priority, delay=delay, ttr=ttr)

    @property
    def http(self) -> httpx.AsyncClient:
        return self._lane.services.http.client


@dataclass(frozen=True, slots=True)
class _Plan:
    """A job ready to run: its handler and the retry policy that applies to it."""

    job: Job
    spec: HandlerSpec
    handler: str
    policy: RetryPolicy
    budget: Budget


class _Abandon(Exception):
    """Close the connection without an outcome: beanstalkd takes the job back."""


class Lane:
    def __init__(self, pool: Pool, index: int, address: Address) -> None:
        self.pool = pool
        self.services = pool.services
        self.state = pool.services.state
        self.address = address
        self.index = index
        self.log = pool.log.bind(lane=index, server=str(address))
        self._watched: frozenset[str] = frozenset({"default"})
        self._watched_version = -1
        self.connected_once = trio.Event()
        # The running job, if any (one at a time per lane).
        self._client: Client | None = None
        self._job_id: int | None = None
        self._job_scope: trio.CancelScope | None = None
        self._guardian: _Guardian | None = None
        self._returned: str | None = None
        self._lost = False
        self._exchanging = False  # a touch is on the wire: its reply makes the socket readable

    # ---- RunningJob, for the state and the connection checker

    def return_job(self, reason: str, *, lost: bool = False) -> None:
        if self._returned is None:
            self._returned = reason
        self._lost = self._lost or lost
        if self._job_scope is not None:
            self._job_scope.cancel()

    def watch_fd(self) -> int | None:
        if self._guardian is not None or self._exchanging or self._client is None:
            return None
        return self._client.fileno()

    async def touch(self, job_id: int) -> None:
        """``job.touch()``: reset the TTR on the connection that reserved the job."""
        if job_id != self._job_id or self._client is None or self._returned is not None:
            raise ConnectionLostError(f"job {job_id} is no longer running on this lane")
        if self._guardian is not None:
            await self._guardian.touch()
            return
        client = self._client
        self._exchanging = True
        try:
            with trio.move_on_after(_OUTCOME_DEADLINE):
                await client.touch(job_id)
        except greenstalk.NotFoundError:
            self.return_job("touch: NOT_FOUND, the job is no longer ours", lost=True)
            raise ConnectionLostError(f"job {job_id} is no longer reserved by us") from None
        except ConnectionLostError:
            self.return_job("connection lost during touch", lost=True)
            raise
        finally:
            self._exchanging = False
        if not client.is_usable:
            self.return_job("touch got no reply in time", lost=True)
            raise ConnectionLostError("touch got no reply in time")

    async def run(self) -> None:
        failures = 0
        while await self.state.wait_may_fetch():
            client = await self._connect()
            if client is None:
                continue  # fetching stopped while connecting
            try:
                await self._serve(client)
                failures = 0
            except (ConnectionLostError, ProtocolError) as exc:
                failures += 1
                self.log.warning("connection lost", error=str(exc))
                await self._pause_before_reconnect(failures)
            except _Abandon:
                pass
            finally:
                await client.aclose()

    async def _pause_before_reconnect(self, failures: int) -> None:
        with self.state.fetch_scope():
            await trio.sleep(full_jitter_delay(failures, base=0.1, cap=10.0))

    async def _connect(self) -> Client | None:
        config = self.services.config

        def on_retry(attempt: int, delay: float, error: Exception) -> None:
            self.connected_once.set()  # tried: readiness does not wait for a dead server
            self.log.warning(
                "cannot connect", attempt=attempt, retry_in=round(delay, 2), error=str(error)
            )

        client: Client | None = None
        with self.state.fetch_scope():
            client = await connect_with_backoff(
                self.address, connect_timeout=config.connect_timeout, cap=30.0, on_retry=on_retry
            )
            self._watched = frozenset({"default"})
            self._watched_version = -1
            self.connected_once.set()
        return client

    def _rewatch(self) -> list[p.Command]:
        """watch/ignore commands that bring the watch list to the pool's tubes."""
        wanted = self.pool.tubes
        self._watched_version = self.pool.tubes_version
        if not wanted:
            return []  # nothing matches any more: keep watching what we had (never ignore all)
        commands: list[p.Command] = [p.Watch(t) for t in sorted(wanted - self._watched)]
        commands += [p.Ignore(t) for t in sorted(self._watched - wanted)]
        self._watched = wanted
        return commands

    async def _serve(self, client: Client) -> None:
        with self.state.fetch_scope() as scope:
            await self.pool.wait_for_tubes()
        if scope.cancelled_caught:
            return
        prelude: list[p.Command] = []
        limiter = self.services.in_flight
        while True:
            if self._watched_version != self.pool.tubes_version:
                prelude += self._rewatch()
            if not self.state.may_fetch:
                await self._exchange_prelude(client, prelude, reserve=False)
                return
            if limiter is not None and not await self._acquire_slot(client, limiter, prelude):
                prelude = []
                continue
            try:
                reply = await self._reserve(client, prelude)
                prelude = []
                if isinstance(reply, p.Reserved):
                    prelude = await self._handle(client, reply)
                elif reply is None:
                    return  # fetching stopped: the blocked reserve's connection is closed
            finally:
                if limiter is not None:
                    limiter.release()

    async def _acquire_slot(
        self, client: Client, limiter: trio.CapacityLimiter, prelude: list[p.Command]
    ) -> bool:
        """Take a process-wide in-flight slot. If none is free, first send what is pending
        (it must not wait) and clear ``prelude``; False if fetching stopped meanwhile."""
        try:
            limiter.acquire_nowait()
            return True
        except trio.WouldBlock:
            pass
        await self._exchange_prelude(client, prelude, reserve=False)
        prelude.clear()
        with self.state.fetch_scope() as scope:
            await limiter.acquire()
        return not scope.cancelled_caught

    async def _exchange_prelude(
        self, client: Client, prelude: list[p.Command], *, reserve: bool
    ) -> None:
        """Send prelude commands (+ reserve) in one write and read the prelude's replies.

        Outside every fetch and job scope, so drain and quiet never interrupt it; one
        deadline, so a server that stopped answering cannot hold the lane (or a drain).
        """
        commands = (
            [*prelude, p.ReserveWithTimeout(self.services.config.reserve_timeout)]
            if reserve
            else prelude
        )
        if not commands:
            return
        with trio.CancelScope(deadline=trio.current_time() + _OUTCOME_DEADLINE) as scope:
            await client.send(*commands)
            for command in prelude:
                self._check_prelude_reply(command, await client.receive())
        if scope.cancelled_caught:
            raise ConnectionLostError(f"no reply within {_OUTCOME_DEADLINE} s")

    async def _reserve(self, client: Client, prelude: list[p.Command]) -> p.Reply | None:
        await self._exchange_prelude(client, prelude, reserve=True)
        reply: p.Reply | None = None  # stays None if cancelled: the connection is closed
        with self.state.fetch_scope():
            reply = await client.receive()
        if isinstance(reply, p.ErrorReply):
            raise ConnectionLostError(f"reserve failed: {type(reply).__name__}")
        return reply

    def _check_prelude_reply(self, command: p.Command, reply: p.Reply) -> None:
        if isinstance(command, p.Watch | p.Ignore):
            if not isinstance(reply, p.Watching):
                raise ConnectionLostError(f"{command!r} answered {reply!r}")
            return
        ok = (
            (isinstance(command, p.Delete) and isinstance(reply, p.Deleted))
            or (isinstance(command, p.Release) and isinstance(reply, p.Released))
            or (isinstance(command, p.Bury) and isinstance(reply, p.Buried))
        )
        if ok:
            return
        job_id = getattr(command, "id", None)
        if isinstance(reply, p.NotFound):
            # Not ours any more (TTR expired and another worker has it): nothing to do.
            self.log.warning(
                "outcome not applied: job no longer reserved by us",
                job_id=job_id,
                command=type(command).__name__,
            )
        elif isinstance(reply, p.Buried):
            self.log.error(
                "server buried the job instead of releasing it (out of memory)", job_id=job_id
            )
        else:
            # OUT_OF_MEMORY / INTERNAL_ERROR on release/bury: the job may be orphaned on the
            # server until it restarts (B3). Never retry on that id.
            self.log.error(
                "outcome failed on the server",
                job_id=job_id,
                command=type(command).__name__,
                reply=type(reply).__name__,
            )

    async def _handle(self, client: Client, reserved: p.Reserved) -> list[p.Command]:
        """Run one reserved job; return the outcome command to send with the next reserve."""
        started = time.monotonic()
        counters = self.state.counters
        counters.reserved += 1
        stats = await client.request(p.StatsJob(reserved.id))
        if not isinstance(stats, p.JobStats):
            self.log.warning("reserved job has no stats", job_id=reserved.id, reply=repr(stats))
            raise ConnectionLostError(f"stats-job {reserved.id} answered {stats!r}")
        plan = self._prepare(reserved, stats)
        if isinstance(plan, _Plan):
            outcome = await self._run(client, plan, stats.ttr)
            handler: str | None = plan.handler
        else:
            outcome, handler = plan, self.pool.config.handler
        self._record(outcome, reserved.id, stats, handler, started)
        if isinstance(outcome, ReturnJob):
            raise _Abandon(outcome.reason)
        return [_command_for(outcome, reserved.id)]

    def _prepare(self, reserved: p.Reserved, stats: p.JobStats) -> _Plan | BuryJob:
        """What to run, or a burial without running (poison, exhausted, bad body)."""
        pool = self.pool
        policy = pool.policy
        budget = job_budget(stats, policy)
        if budget.poison:
            return BuryJob(
                stats.pri,
                f"delivered {budget.redeliveries + 1} times without an outcome "
                f"(limit {budget.max_redeliveries}): did it crash or hang the worker?",
            )
        if budget.attempts_exhausted:
            return BuryJob(
                stats.pri, f"attempt {budget.attempt} exceeds max_attempts {budget.max_attempts}"
            )
        task: str | None = None
        payload = None
        if pool.bound is not None:
            spec, handler = pool.bound, pool.config.handler or "?"
        else:
            try:
                task, payload = decode_envelope(reserved.body)
            except BadEnvelope as exc:
                return BuryJob(stats.pri, str(exc))
            found = self.services.registry.get(task)
            if found is None:
                return BuryJob(stats.pri, f"no handler registered for task {task!r}")
            spec, handler = found, task
        if spec.max_attempts is not None or spec.backoff_base is not None:
            policy = RetryPolicy(
                spec.max_attempts or policy.max_attempts,
                spec.backoff_base if spec.backoff_base is not None else policy.backoff_base,
                spec.backoff_cap if spec.backoff_cap is not None else policy.backoff_cap,
                policy.redelivery_limit,
            )
            budget = job_budget(stats, policy)
        job = Job(
            id=reserved.id,
            tube=stats.tube,
            body=reserved.body,
            priority=stats.pri,
            ttr=stats.ttr,
            attempt=budget.attempt,
            max_attempts=budget.max_attempts,
            task=task,
            payload=payload,
            log=self.log,  # bound to the job on first use
        )
        return _Plan(job, spec, handler, policy, budget)

    async def _run(self, client: Client, plan: _Plan, ttr: int) -> Outcome:
        job, spec = plan.job, plan.spec
        margin = self.services.config.ttr_margin
        timeout = handler_timeout(spec, self.pool.config.timeout, ttr, margin)
        job._services = _JobServices(self, job.id)
        guardian: _Guardian | None = None
        if spec.long_running or client.fileno() is None:
            interval = touch_interval(ttr, margin) if spec.long_running else None
            guardian = _Guardian(client, job.id, interval, self._guardian_lost)
        # One scope per job: our deadline, the drain deadline and a lost connection.
        scope = trio.CancelScope(
            deadline=trio.current_time() + timeout if timeout is not None else math.inf
        )
        self._client, self._job_id, self._job_scope, self._guardian = (
            client,
            job.id,
            scope,
            guardian,
        )
        self._returned, self._lost = None, False
        state, counters = self.state, self.state.counters
        state.running.add(self)
        counters.in_flight += 1
        outcome: Outcome | None = None
        try:
            with scope:
                outcome = await self._call_handler(plan, guardian)
        finally:
            state.running.discard(self)
            counters.in_flight -= 1
            self._client = self._job_id = self._job_scope = self._guardian = None
        if self._lost or (outcome is None and self._returned is not None):
            return ReturnJob(self._returned or "connection lost")
        if outcome is None:
            return timeout_outcome(job, plan.budget, plan.policy, timeout)
        return outcome  # finished, even if a drain deadline came in the same instant

    def _guardian_lost(self, reason: str) -> None:
        self.return_job(f"connection lost while the handler ran ({reason})", lost=True)

    async def _call_handler(self, plan: _Plan, guardian: _Guardian | None) -> Outcome:
        run = run_job(
            plan.job,
            plan.spec,
            plan.budget,
            plan.policy,
            timeout=None,  # the lane's job scope carries the deadline
            profile=self.pool.config.profile,
            limiter=self.pool.limiter,
        )
        if guardian is None:
            return await run
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guardian.run)
            outcome = await run
            nursery.cancel_scope.cancel()
        return outcome

    def _record(
        self,
        outcome: Outcome,
        job_id: int,
        stats: p.JobStats,
        handler: str | None,
        started: float,
    ) -> None:
        counters = self.state.counters
        name: str
        if isinstance(outcome, DeleteJob):
            counters.deleted += 1
            name = "deleted"
        elif isinstance(outcome, ReleaseJob):
            counters.released += 1
            name = "released"
        elif isinstance(outcome, BuryJob):
            counters.buried += 1
            name = "buried"
        else:
            counters.returned += 1
            name = "returned"
        counters.by_tube[(stats.tube, name)] += 1
        if self.services.config.logging.job_lines:
            fields: dict[str, object] = {
                "job_id": job_id,
                "tube": stats.tube,
                "handler": handler,
                "attempt": attempt_number(stats),
                "duration": round(time.monotonic() - started, 4),
                "outcome": name,
            }
            if isinstance(outcome, ReleaseJob):
                fields["delay"] = outcome.delay
            reason = getattr(outcome, "reason", None)
            if reason:
                fields["reason"] = reason
            if isinstance(outcome, DeleteJob):
                self.log.info("job done", **fields)
            else:
                self.log.warning("job " + name, **fields)
        self.state.job_finished()


def _command_for(outcome: DeleteJob | ReleaseJob | BuryJob, job_id: int) -> p.Command:
    if isinstance(outcome, DeleteJob):
        return p.Delete(job_id)
    if isinstance(outcome, ReleaseJob):
        return p.Release(job_id, outcome.priority, outcome.delay)
    return p.Bury(job_id, outcome.priority)


async def run_pool(
    pool: Pool, *, task_status: trio.TaskStatus[Sequence[Lane]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the pool's lanes (spread over its servers) and its tube discovery."""
    servers = pool.servers
    lanes = [Lane(pool, i, servers[i % len(servers)]) for i in range(pool.config.concurrency)]
    async with trio.open_nursery() as nursery:
        discovery: trio.CancelScope | None = None
        if pool.patterns:
            discovery = trio.CancelScope()

            async def discover() -> None:
                assert discovery is not None
                with discovery:
                    await pool.discover_tubes()

            nursery.start_soon(discover)
        async with trio.open_nursery() as lane_nursery:
            for lane in lanes:
                lane_nursery.start_soon(lane.run)
            task_status.started(lanes)
        if discovery is not None:
            discovery.cancel()
