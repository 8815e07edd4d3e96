"""Lanes and pools.

A lane owns one beanstalkd connection and the jobs reserved on it (ownership of a reserved
job belongs to the connection: BEANSTALKD.md §1), up to ``jobs_per_connection`` at once.
Its pump batches what goes over the wire: outcomes, touches and reserves in one write,
``stats-job`` for the new jobs in another. A pool is its concurrency split into lanes over
a set of tubes and servers.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

import structlog
import trio
from tubeworker.backoff import full_jitter_delay
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect, connect_with_backoff
from tubeworker.envelope import BadEnvelope, decode_envelope
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.job import HandlerSpec, Job
from tubeworker.runtime.outcome import BuryJob, DeleteJob, Outcome, ReleaseJob, ReturnJob
from tubeworker.runtime.policy import Budget, RetryPolicy, attempt_number, job_budget
from tubeworker.runtime.runner import run_job, timeout_outcome
from tubeworker.runtime.services import Producer, SharedHttp

if TYPE_CHECKING:
    import httpx
    from tubeworker.config import Config, PoolConfig
    from tubeworker.registry import Registry
    from tubeworker.runtime.state import WorkerState

__all__ = ["Lane", "Pool", "Services", "handler_timeout", "lane_sizes", "run_pool"]

log = structlog.get_logger("tubeworker")

# How long one exchange may take before the connection is given up (a server that stopped
# answering must not hold a lane, or a drain: BEANSTALKD.md §10.5 rule 3).
_OUTCOME_DEADLINE = 10.0
# While a lane holds jobs it cannot block in reserve; with free slots it looks for new
# jobs at least this often (and after every outcome).
_POLL_INTERVAL = 0.02


def handler_timeout(
    spec: HandlerSpec, pool_timeout: float | None, ttr: int, margin: float
) -> float | None:
    """Our own deadline: never past TTR - margin, unless the handler is touched (long-running)."""
    wanted = spec.timeout or pool_timeout
    if spec.long_running:
        return wanted  # None: no limit; the guardian touches the job
    limit = ttr_allowance(ttr, margin)
    return limit if wanted is None else min(wanted, limit)


def ttr_allowance(ttr: int, margin: float) -> float:
    """How long after a reserve or touch a job may run: TTR - margin (with a tiny TTR the
    margin would eat it all, so at least half of it)."""
    return max(ttr - margin, ttr / 2)


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


@dataclass(frozen=True, slots=True)
class _Finished:
    """A job's outcome, waiting to be logged and counted."""

    outcome: Outcome
    job_id: int
    stats: p.JobStats
    handler: str | None
    started: float


class _Running:
    """A reserved job whose handler runs, on its lane's connection."""

    __slots__ = (
        "limit",
        "lost",
        "next_touch",
        "plan",
        "returned",
        "scope",
        "started",
        "stats",
        "token",
    )

    def __init__(
        self, plan: _Plan, stats: p.JobStats, scope: trio.CancelScope, token: object, started: float
    ) -> None:
        self.plan = plan
        self.stats = stats
        self.scope = scope
        self.token = token  # the process-wide in-flight slot it holds
        self.started = started
        self.returned: str | None = None  # handler cancelled, job left to beanstalkd
        self.lost = False
        self.next_touch = math.inf
        self.limit = math.inf  # the handler's own timeout (absolute); touches never pass it


_IDLE: Final = object()  # the reserve reply when fetching was stopped while blocked


class Lane:
    """One beanstalkd connection holding up to ``slots`` reserved jobs.

    A single pump task owns the connection's I/O (BEANSTALKD.md §10.5 rule 1): in one write
    it sends the outcomes handlers produced since the last write, due touches, and one
    ``reserve-with-timeout 0`` per free slot; then ``stats-job`` for every job it got, in
    one more write. Handlers run in their own tasks, each under its own deadline. The pump
    blocks in ``reserve`` only while the lane holds no job, since a blocked reserve holds
    the connection; otherwise it waits on the idle socket, which only turns readable if
    the server went away. Outcomes are only ever sent on the connection that reserved the job.
    """

    def __init__(self, pool: Pool, index: int, address: Address, slots: int) -> None:
        self.pool = pool
        self.services = pool.services
        self.state = pool.services.state
        self.address = address
        self.index = index
        self.slots = slots
        self.log = pool.log.bind(lane=index, server=str(address))
        self._watched: frozenset[str] = frozenset({"default"})
        self._watched_version = -1
        self.connected_once = trio.Event()
        self._running: dict[int, _Running] = {}
        self._outbox: list[p.Command] = []
        self._touch_waiters: dict[int, list[trio.Event]] = {}
        # Outcome commands not yet confirmed by beanstalkd (keyed by the command's id()):
        # their log line and counters wait for the reply, so they say what really happened.
        self._unconfirmed: dict[int, _Finished] = {}
        self._wake: trio.CancelScope | None = None
        self._must_close = False  # a job was returned: close the connection when idle

    # ---- RunningJob, for the state (drain deadline)

    def return_job(self, reason: str, *, lost: bool = False) -> None:
        for running in self._running.values():
            if running.returned is None:
                running.returned = reason
            running.lost = running.lost or lost
            running.scope.cancel()

    # ---- for handlers

    async def touch(self, job_id: int) -> None:
        """``job.touch()``: queue a touch for the pump and wait for beanstalkd's answer."""
        running = self._running.get(job_id)
        if running is None or running.returned is not None:
            raise ConnectionLostError(f"job {job_id} is no longer running on this lane")
        done = trio.Event()
        self._touch_waiters.setdefault(job_id, []).append(done)
        self._queue(p.Touch(job_id))
        await done.wait()
        if running.returned is not None:
            raise ConnectionLostError(f"cannot touch job {job_id}: {running.returned}")

    def _queue(self, command: p.Command) -> None:
        self._outbox.append(command)
        if self._wake is not None:
            self._wake.cancel()

    # ---- connection life

    async def run(self) -> None:
        failures = 0
        while await self.state.wait_may_fetch():
            client = await self._connect()
            if client is None:
                continue  # fetching stopped while connecting
            lost: str | None = None
            try:
                async with trio.open_nursery() as handlers:
                    lost = await self._pump(client, handlers)
                    if lost is not None:
                        self.return_job(
                            f"connection lost while the handler ran ({lost})", lost=True
                        )
            finally:
                await client.aclose()
                self._after_connection()
            if lost is not None:
                failures += 1
                self.log.warning("connection lost", error=lost)
                await self._pause_before_reconnect(failures)
            else:
                failures = 0

    def _after_connection(self) -> None:
        for finished in self._unconfirmed.values():
            verb = type(finished.outcome).__name__.removesuffix("Job").lower()
            reason = f"connection lost before beanstalkd confirmed the {verb}"
            self._record(replace(finished, outcome=ReturnJob(reason)))
        self._unconfirmed.clear()
        for waiters in self._touch_waiters.values():
            for done in waiters:
                done.set()
        self._touch_waiters.clear()
        self._outbox.clear()  # outcomes for jobs of a closed connection must never be sent
        self._must_close = False

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

    # ---- the pump

    async def _pump(self, client: Client, handlers: trio.Nursery) -> str | None:
        """Serve the connection until fetching stops and no job is left (None), or until
        the connection is lost (the reason)."""
        try:
            with self.state.fetch_scope() as scope:
                await self.pool.wait_for_tubes()
            if scope.cancelled_caught:
                return None
            while True:
                fetching = self.state.may_fetch and not self._must_close
                got_all = await self._exchange(client, handlers, fetching)
                if not self._running and not self._outbox:
                    if not fetching:
                        return None  # drained, quiet, or a returned job: close the connection
                    if not got_all:
                        # Nothing ready and nothing held: block, cancellable by drain/quiet.
                        if await self._reserve_blocking(client, handlers) is _IDLE:
                            return None
                        continue
                if got_all and fetching and len(self._running) < self.slots:
                    continue  # every reserve got a job: there may be more
                await self._wait(client, fetching)
        except (ConnectionLostError, ProtocolError) as exc:
            return str(exc)

    async def _exchange(self, client: Client, handlers: trio.Nursery, fetching: bool) -> bool:
        """One write of outcomes, touches and reserves; True if every reserve got a job."""
        commands = self._outbox
        self._outbox = []
        if self._watched_version != self.pool.tubes_version:
            commands += self._rewatch()
        commands += self._due_touches()
        tokens = self._take_slots(self.slots - len(self._running)) if fetching else []
        reserve = p.ReserveWithTimeout(0)
        commands += [reserve] * len(tokens)
        if not commands:
            return False
        reserved: list[tuple[p.Reserved, object]] = []
        unmatched = list(reversed(tokens))  # slots whose reserve reply has not come yet
        try:
            with trio.CancelScope(deadline=trio.current_time() + _OUTCOME_DEADLINE) as scope:
                await client.send(*commands)
                await self._read_replies(client, commands, reserve, unmatched, reserved)
                if reserved:
                    started, reserved = reserved, []
                    await self._start(client, handlers, started)
        finally:
            for token in unmatched:  # an exchange cut short must not leak in-flight slots
                self._give_back(token)
            for _, token in reserved:
                self._give_back(token)
        if scope.cancelled_caught:
            raise ConnectionLostError(f"no reply within {_OUTCOME_DEADLINE} s")
        return bool(tokens) and len(reserved) == len(tokens)

    async def _read_replies(
        self,
        client: Client,
        commands: list[p.Command],
        reserve: p.Command,
        unmatched: list[object],
        reserved: list[tuple[p.Reserved, object]],
    ) -> None:
        """Replies in command order; each reserve reply takes its slot from ``unmatched``."""
        for command in commands:
            reply = await client.receive()
            if command is not reserve:
                applied = self._check_reply(command, reply)
                finished = self._unconfirmed.pop(id(command), None)
                if finished is not None:
                    self._record(finished if applied else _unapplied(finished, reply))
                continue
            token = unmatched.pop()
            if isinstance(reply, p.Reserved):
                reserved.append((reply, token))
                continue
            self._give_back(token)  # TIMED_OUT: none ready; DEADLINE_SOON: one is due
            if isinstance(reply, p.ErrorReply):
                raise ConnectionLostError(f"reserve failed: {type(reply).__name__}")

    async def _reserve_blocking(self, client: Client, handlers: trio.Nursery) -> object:
        """Block in reserve while the lane holds nothing; _IDLE if fetching stopped."""
        tokens = self._take_slots(1)
        if not tokens:  # the process-wide cap is reached: wait for a slot, or for the drain
            limiter = self.services.in_flight
            assert limiter is not None
            token = object()
            with self.state.fetch_scope() as scope:
                await limiter.acquire_on_behalf_of(token)
            if scope.cancelled_caught:
                return _IDLE
            tokens = [token]
        reply: p.Reply | None = None
        try:
            await client.send(p.ReserveWithTimeout(self.services.config.reserve_timeout))
            with self.state.fetch_scope():
                reply = await client.receive()  # cancelled: the client closes the connection
            if reply is None:
                return _IDLE
            if isinstance(reply, p.ErrorReply):
                raise ConnectionLostError(f"reserve failed: {type(reply).__name__}")
            if isinstance(reply, p.Reserved):
                token = tokens.pop()
                await self._start(client, handlers, [(reply, token)])
            return reply
        finally:
            for token in tokens:
                self._give_back(token)

    async def _wait(self, client: Client, fetching: bool) -> None:
        """Until a handler queues a command, a touch is due, it is time to look for new
        jobs again, or the connection dies (raises)."""
        if self._outbox:
            return
        looking = fetching and len(self._running) < self.slots
        timeout = min(self._next_touch_in(), _POLL_INTERVAL if looking else math.inf)
        with trio.move_on_after(timeout) as scope:
            self._wake = scope
            reason = await client.wait_lost()
            raise ConnectionLostError(reason)
        self._wake = None

    # ---- in-flight slots (process-wide cap)

    def _take_slots(self, wanted: int) -> list[object]:
        limiter = self.services.in_flight
        if limiter is None:
            return [object() for _ in range(max(0, wanted))]
        tokens = []
        for _ in range(max(0, wanted)):
            token = object()
            try:
                limiter.acquire_on_behalf_of_nowait(token)
            except trio.WouldBlock:
                break
            tokens.append(token)
        return tokens

    def _give_back(self, token: object) -> None:
        if self.services.in_flight is not None:
            self.services.in_flight.release_on_behalf_of(token)

    # ---- jobs

    async def _start(
        self, client: Client, handlers: trio.Nursery, reserved: list[tuple[p.Reserved, object]]
    ) -> None:
        """stats-job for every new job in one write, then start their handlers."""
        waiting = list(reversed(reserved))  # jobs whose handler has not started yet
        try:
            await client.send(*[p.StatsJob(r.id) for r, _ in reserved])
            while waiting:
                job_reply, token = waiting[-1]
                stats = await client.receive()
                waiting.pop()
                self._begin(handlers, job_reply, token, stats)
        finally:
            for _, token in waiting:  # connection lost before they started: free their slots
                self._give_back(token)
        if self._running:
            self.state.running.add(self)

    def _begin(
        self, handlers: trio.Nursery, job_reply: p.Reserved, token: object, stats: p.Reply
    ) -> None:
        """Start a job's handler, or queue its burial when it must not run."""
        now = time.monotonic()
        self.state.counters.reserved += 1
        if not isinstance(stats, p.JobStats):
            self._give_back(token)
            raise ConnectionLostError(f"stats-job {job_reply.id} answered {stats!r}")
        plan = self._prepare(job_reply, stats)
        if isinstance(plan, BuryJob):
            self._give_back(token)
            self._send_outcome(_Finished(plan, job_reply.id, stats, self.pool.config.handler, now))
            self.state.job_finished()
            return
        margin = self.services.config.ttr_margin
        timeout = handler_timeout(plan.spec, self.pool.config.timeout, stats.ttr, margin)
        scope = trio.CancelScope(
            deadline=trio.current_time() + timeout if timeout is not None else math.inf
        )
        running = _Running(plan, stats, scope, token, now)
        wanted = plan.spec.timeout or self.pool.config.timeout
        if wanted:
            running.limit = trio.current_time() + wanted
        if plan.spec.long_running:
            running.next_touch = trio.current_time() + touch_interval(stats.ttr, margin)
        plan.job._services = _JobServices(self, job_reply.id)
        self._running[job_reply.id] = running
        handlers.start_soon(self._run_handler, running, timeout)

    async def _run_handler(self, running: _Running, timeout: float | None) -> None:
        plan = running.plan
        counters = self.state.counters
        counters.in_flight += 1
        outcome: Outcome | None = None
        try:
            with running.scope:
                outcome = await run_job(
                    plan.job,
                    plan.spec,
                    plan.budget,
                    plan.policy,
                    timeout=None,  # the job's scope carries the deadline
                    profile=self.pool.config.profile,
                    limiter=self.pool.limiter,
                )
        finally:
            counters.in_flight -= 1
            del self._running[plan.job.id]
            if not self._running:
                self.state.running.discard(self)
            self._give_back(running.token)
        if running.lost or (outcome is None and running.returned is not None):
            outcome = ReturnJob(running.returned or "connection lost")
        elif outcome is None:
            outcome = timeout_outcome(plan.job, plan.budget, plan.policy, timeout)
        finished = _Finished(outcome, plan.job.id, running.stats, plan.handler, running.started)
        self.state.job_finished()
        if isinstance(outcome, ReturnJob):
            self._record(finished)
            self._must_close = True  # the only way to hand a job back without an outcome
            if self._wake is not None:
                self._wake.cancel()
        else:
            self._send_outcome(finished)

    def _send_outcome(self, finished: _Finished) -> None:
        assert not isinstance(finished.outcome, ReturnJob)
        command = _command_for(finished.outcome, finished.job_id)
        self._unconfirmed[id(command)] = finished  # the outbox keeps the command alive
        self._queue(command)

    def _due_touches(self) -> list[p.Command]:
        now = trio.current_time()
        touches: list[p.Command] = []
        margin = self.services.config.ttr_margin
        for job_id, running in self._running.items():
            if running.next_touch <= now:
                running.next_touch = now + touch_interval(running.stats.ttr, margin)
                touches.append(p.Touch(job_id))
        return touches

    def _next_touch_in(self) -> float:
        soonest = min((r.next_touch for r in self._running.values()), default=math.inf)
        return max(0.0, soonest - trio.current_time())

    def _check_reply(self, command: p.Command, reply: p.Reply) -> bool:
        """True if beanstalkd did what the command asked."""
        if isinstance(command, p.Watch | p.Ignore):
            if not isinstance(reply, p.Watching):
                raise ConnectionLostError(f"{command!r} answered {reply!r}")
            return True
        if isinstance(command, p.Touch):
            self._touched(command.id, reply)
            return isinstance(reply, p.Touched)
        ok = (
            (isinstance(command, p.Delete) and isinstance(reply, p.Deleted))
            or (isinstance(command, p.Release) and isinstance(reply, p.Released))
            or (isinstance(command, p.Bury) and isinstance(reply, p.Buried))
        )
        if ok:
            return True
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
        return False

    def _touched(self, job_id: int, reply: p.Reply) -> None:
        running = self._running.get(job_id)
        if isinstance(reply, p.Touched) and running is not None:
            if not running.plan.spec.long_running:
                # The TTR starts again: so does the part of our deadline that guards it.
                allowance = ttr_allowance(running.stats.ttr, self.services.config.ttr_margin)
                running.scope.deadline = min(running.limit, trio.current_time() + allowance)
        elif running is not None:
            # The job is no longer ours (its TTR expired): stop its handler, send nothing.
            running.returned = "touch: NOT_FOUND, the job is no longer reserved by us"
            running.lost = True
            running.scope.cancel()
        for done in self._touch_waiters.pop(job_id, []):
            done.set()

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

    def _record(self, finished: _Finished) -> None:
        """The job's one log line and the counters, once its outcome is known for sure."""
        outcome, job_id, stats = finished.outcome, finished.job_id, finished.stats
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
        if self.services.config.logging.job_lines:
            fields: dict[str, object] = {
                "job_id": job_id,
                "tube": stats.tube,
                "handler": finished.handler,
                "attempt": attempt_number(stats),
                "duration": round(time.monotonic() - finished.started, 4),
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


def _unapplied(finished: _Finished, reply: p.Reply) -> _Finished:
    """What became of a job whose outcome beanstalkd did not apply as asked."""
    if isinstance(reply, p.Buried):  # a release the server could only do as a bury (OOM)
        reason = "beanstalkd buried it instead of releasing it (out of memory)"
        return replace(finished, outcome=BuryJob(finished.stats.pri, reason))
    reason = f"not applied: beanstalkd answered {type(reply).__name__}"
    return replace(finished, outcome=ReturnJob(reason))


def _command_for(outcome: DeleteJob | ReleaseJob | BuryJob, job_id: int) -> p.Command:
    if isinstance(outcome, DeleteJob):
        return p.Delete(job_id)
    if isinstance(outcome, ReleaseJob):
        return p.Release(job_id, outcome.priority, outcome.delay)
    return p.Bury(job_id, outcome.priority)


def lane_sizes(concurrency: int, jobs_per_connection: int, servers: int) -> list[int]:
    """Slots per lane: ``concurrency`` split as evenly as possible over
    ceil(concurrency / jobs_per_connection) lanes, and at least one lane per server."""
    count = max(math.ceil(concurrency / jobs_per_connection), min(concurrency, servers))
    return [concurrency // count + (1 if i < concurrency % count else 0) for i in range(count)]


async def run_pool(
    pool: Pool, *, task_status: trio.TaskStatus[Sequence[Lane]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the pool's lanes and its tube discovery.

    ``concurrency`` slots are split into lanes of at most ``jobs_per_connection`` jobs,
    with at least one lane per server, spread over the servers in turn.
    """
    servers = pool.servers
    sizes = lane_sizes(pool.config.concurrency, pool.config.jobs_per_connection, len(servers))
    lanes = [Lane(pool, i, servers[i % len(servers)], size) for i, size in enumerate(sizes)]
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
