"""A lane: one beanstalkd connection and the jobs reserved on it.

A reserved job belongs to the connection that reserved it
(docs/beanstalkd.md#ownership-by-connection), so a lane never sends anything about a job on
any other connection. One pump task owns the
connection's I/O (docs/beanstalkd.md#trio-cancellation, rule 1): in one write it sends the
outcomes handlers produced since the last write, due touches and one
``reserve-with-timeout 0`` per free slot; then ``stats-job`` for every new job in one more
write. The pump blocks in ``reserve`` only while the lane holds no job (a blocked reserve
holds the connection); otherwise it waits on the idle socket, which turns readable only
if the server went away.

Never silently stop:
- every wait for a reply is bounded by lack of progress (``reply_timeout``, in the client),
  a blocked reserve by its timeout plus that; a lane that holds jobs sends a heartbeat
  after ``reserve_timeout`` of silence, so a dead connection is found idle or busy;
- a batch is bounded in bytes (``batch_bytes``) as well as in jobs;
- a connection lost again and again before beanstalkd confirms our outcomes is logged as
  an error, and the lane backs off and shrinks its batches instead of looping;
- a job that is no longer ours when we ask about it is skipped; the lane goes on.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import trio

from tubeworker.backoff import full_jitter_delay
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect_with_backoff
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.runtime.dispatch import plan_job
from tubeworker.runtime.outcome import BuryJob, Cause, Outcome, ReturnJob
from tubeworker.runtime.pool import Pool
from tubeworker.runtime.record import Finished, OutcomeLog, command_for, unapplied
from tubeworker.runtime.running import Run, Runs
from tubeworker.runtime.slots import Slot

if TYPE_CHECKING:
    import httpx

__all__ = ["Lane"]

# While a lane holds jobs it cannot block in reserve; with free slots it looks for new
# jobs at least this often (and after every outcome).
_POLL_INTERVAL = 0.02
# Consecutive connections lost before any outcome was confirmed, before the lane says so
# loudly and backs off harder.
_LIVELOCK_STREAK = 3
_BODY_ESTIMATE_WEIGHT = 0.2  # how fast the body-size estimate follows new jobs


@dataclass(slots=True)
class _Entry:
    """A command in the outbox or on the wire, with what its reply finishes."""

    command: p.Command
    finishes: Finished | None = None  # an outcome: recorded when beanstalkd confirms it
    slot: Slot | None = None  # a reserve: the in-flight slot its job will hold


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


class Lane:
    """One beanstalkd connection holding up to ``slots`` reserved jobs."""

    def __init__(self, pool: Pool, index: int, address: Address, slots: int) -> None:
        self.pool = pool
        self.services = services = pool.services
        self.state = services.state
        self.config = services.config
        self.address = address
        self.index = index
        self.slots = slots
        self.log = pool.log.bind(lane=index, server=str(address))
        self.outcomes = OutcomeLog(self.state.counters, self.log, self.config.logging.job_lines)
        self.connected_once = trio.Event()
        self.runs = Runs(
            on_finished=self._finished,
            counters=self.state.counters,
            ttr_margin=self.config.ttr_margin,
            pool_timeout=pool.config.timeout,
            profile=pool.config.profile,
            limiter=pool.limiter,
            processes=pool.processes,
        )
        self._watched: frozenset[str] = frozenset({"default"})
        self._watched_version = -1
        self._outbox: list[_Entry] = []
        self._on_wire: deque[_Entry] = deque()  # sent, reply not read yet
        self._touch_waiters: dict[int, list[trio.Event]] = {}
        self._wake: trio.CancelScope | None = None
        self._must_close = False  # a job was returned: close the connection when idle
        self._confirmed = 0  # outcomes beanstalkd confirmed on this connection
        self._last_io = 0.0  # trio time of the last exchange: heartbeats after silence
        self._body_estimate = 0.0  # bytes per job body, from the jobs seen so far
        self._batch_cap = slots  # shrinks while connections keep failing, grows back
        self._server_id = str(address)  # the server's instance id once connected

    # ---- for the state (drain deadline) and for handlers

    def return_job(self, cause: Cause, detail: str, *, lost: bool = False) -> None:
        self.runs.give_back_all(cause, detail, lost=lost)

    async def touch(self, job_id: int) -> None:
        """``job.touch()``: queue a touch for the pump and wait for beanstalkd's answer."""
        run = self.runs.get(job_id)
        if run is None or run.returned is not None:
            raise ConnectionLostError(f"job {job_id} is no longer running on this lane")
        done = trio.Event()
        self._touch_waiters.setdefault(job_id, []).append(done)
        self._queue(_Entry(p.Touch(job_id)))
        await done.wait()
        if run.returned is not None:
            raise ConnectionLostError(f"cannot touch job {job_id}: {run.returned.detail}")

    def _queue(self, entry: _Entry) -> None:
        self._outbox.append(entry)
        if self._wake is not None:
            self._wake.cancel()

    # ---- connection life

    async def run(self) -> None:
        failures = 0  # consecutive lost connections
        fruitless = 0  # consecutive lost connections that confirmed no outcome we owed
        while await self.state.wait_may_fetch():
            client = await self._connect()
            if client is None:
                continue  # fetching stopped while connecting
            lost: str | None = None
            self._confirmed = 0
            try:
                async with trio.open_nursery() as handlers:
                    lost = await self._pump(client, handlers)
                    if lost is not None:
                        self.return_job(
                            Cause.CONNECTION_LOST,
                            f"connection lost while the handler ran ({lost})",
                            lost=True,
                        )
            finally:
                await client.aclose()
                owed = self._after_connection()
            if lost is None:
                failures = fruitless = 0
                continue
            failures += 1
            fruitless = fruitless + 1 if owed and not self._confirmed else 0
            self._lost(lost, owed, fruitless)
            await self._pause_before_reconnect(failures, fruitless)

    def _lost(self, error: str, owed: int, fruitless: int) -> None:
        self.state.counters.connections_lost += 1
        self.log.warning(
            "connection lost", error=error, outcomes_unconfirmed=owed, batch_cap=self._batch_cap
        )
        if fruitless >= _LIVELOCK_STREAK:
            self._batch_cap = max(1, self._batch_cap // 2)
            self.log.error(
                "connection keeps failing before beanstalkd confirms our outcomes",
                times_in_a_row=fruitless,
                batch_cap=self._batch_cap,
                hint="a slow or lossy link, or a server that stops answering: "
                "the lane backs off and reserves fewer jobs at a time",
            )

    def _after_connection(self) -> int:
        """Forget the connection; returns how many outcomes it never confirmed."""
        owed = 0
        for entry in [*self._on_wire, *self._outbox]:  # sent unanswered, or never sent
            if entry.slot is not None:
                entry.slot.release()
            if entry.finishes is not None:
                owed += 1
                verb = type(entry.command).__name__.lower()
                detail = f"connection lost before beanstalkd confirmed the {verb}"
                outcome = ReturnJob(Cause.UNCONFIRMED, detail)
                self.outcomes.record(replace(entry.finishes, outcome=outcome))
                self.services.excuses.add(self._server_id, entry.finishes.job_id)
        # Nothing of a closed connection is ever sent on another one.
        self._on_wire.clear()
        self._outbox.clear()
        for waiters in self._touch_waiters.values():
            for done in waiters:
                done.set()
        self._touch_waiters.clear()
        self._must_close = False
        return owed

    async def _pause_before_reconnect(self, failures: int, fruitless: int) -> None:
        cap = 60.0 if fruitless >= _LIVELOCK_STREAK else 10.0
        with self.state.fetch_scope():
            await trio.sleep(full_jitter_delay(max(failures, fruitless), base=0.1, cap=cap))

    async def _connect(self) -> Client | None:
        config = self.config

        def on_retry(attempt: int, delay: float, error: Exception) -> None:
            self.connected_once.set()  # tried: readiness does not wait for a dead server
            self.log.warning(
                "cannot connect", attempt=attempt, retry_in=round(delay, 2), error=str(error)
            )

        client: Client | None = None
        with self.state.fetch_scope():
            client = await connect_with_backoff(
                self.address,
                connect_timeout=config.connect_timeout,
                reply_timeout=config.reply_timeout,
                keepalive=config.keepalive,
                cap=30.0,
                on_retry=on_retry,
                connector=self.services.connector,
            )
            self._watched = frozenset({"default"})
            self._watched_version = -1
            self._last_io = trio.current_time()
            if client.server is not None and client.server.id:
                self._server_id = client.server.id
            self.connected_once.set()
        return client

    def _rewatch(self) -> list[_Entry]:
        """watch/ignore commands that bring the watch list to the pool's tubes."""
        wanted = self.pool.tubes
        self._watched_version = self.pool.tubes_version
        if not wanted:
            return []  # nothing matches any more: keep watching what we had (never ignore all)
        entries = [_Entry(p.Watch(t)) for t in sorted(wanted - self._watched)]
        entries += [_Entry(p.Ignore(t)) for t in sorted(self._watched - wanted)]
        self._watched = wanted
        return entries

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
                if not len(self.runs) and not self._outbox:
                    if not fetching:
                        return None  # drained, quiet, or a returned job: close the connection
                    if not got_all:
                        # Nothing ready and nothing held: block, cancellable by drain/quiet.
                        if not await self._reserve_blocking(client, handlers):
                            return None
                        continue
                if got_all and fetching and len(self.runs) < self.slots:
                    continue  # every reserve got a job: there may be more
                await self._wait(client, fetching)
        except (ConnectionLostError, ProtocolError) as exc:
            return str(exc)

    def _reserves_wanted(self) -> int:
        """Free slots, bounded by the batch cap and by ``batch_bytes`` of bodies."""
        free = min(self.slots - len(self.runs), self._batch_cap)
        if self._body_estimate > 0:
            free = min(free, max(1, int(self.config.batch_bytes // self._body_estimate)))
        return max(0, free)

    async def _exchange(self, client: Client, handlers: trio.Nursery, fetching: bool) -> bool:
        """One write of outcomes, touches and reserves; True if every reserve got a job."""
        entries, self._outbox = self._outbox, []
        if self._watched_version != self.pool.tubes_version:
            entries += self._rewatch()
        entries += [_Entry(touch) for touch in self.runs.due_touches()]
        slots = self.services.in_flight.take(self._reserves_wanted()) if fetching else []
        reserve = p.ReserveWithTimeout(0)
        entries += [_Entry(reserve, slot=slot) for slot in slots]
        if not entries and self._heartbeat_due():
            entries.append(_Entry(p.ListTubeUsed()))  # are you still there?
        if not entries:
            return False
        self._on_wire = deque(entries)
        await client.send(*[e.command for e in entries])
        reserved: list[tuple[p.Reserved, Slot]] = []
        try:
            while self._on_wire:
                reply = await client.receive()
                got = self._apply(self._on_wire.popleft(), reply)
                if got is not None:
                    reserved.append(got)
        except BaseException:
            for _, slot in reserved:  # got a job, never started it: beanstalkd takes it back
                slot.release()
            raise
        self._last_io = trio.current_time()
        if reserved:
            await self._start(client, handlers, reserved)
        return bool(slots) and len(reserved) == len(slots)

    def _heartbeat_due(self) -> bool:
        """A lane holding jobs sends nothing for long stretches: ask the server something
        cheap after ``reserve_timeout`` of silence, so a dead connection is found (the
        reply is bounded by ``reply_timeout``) and beanstalkd re-arms its TTR timers
        (docs/beanstalkd.md#b1)."""
        silent = trio.current_time() - self._last_io
        return len(self.runs) > 0 and silent >= self.config.reserve_timeout

    def _apply(self, entry: _Entry, reply: p.Reply) -> tuple[p.Reserved, Slot] | None:
        """What a reply means for the command it answers."""
        command = entry.command
        if entry.slot is not None:  # a reserve
            slot, entry.slot = entry.slot, None
            if isinstance(reply, p.Reserved):
                return reply, slot
            slot.release()  # TIMED_OUT: none ready; DEADLINE_SOON: one is due
            if isinstance(reply, p.ErrorReply):
                raise ConnectionLostError(f"reserve failed: {type(reply).__name__}")
            return None
        if isinstance(command, p.Touch):
            self.runs.touched(command.id, reply)
            for done in self._touch_waiters.pop(command.id, []):
                done.set()
            return None
        if entry.finishes is not None:
            finished, entry.finishes = entry.finishes, None
            self._confirm(command, reply, finished)
            return None
        if isinstance(command, p.Watch | p.Ignore) and not isinstance(reply, p.Watching):
            raise ConnectionLostError(f"{command!r} answered {reply!r}")
        if isinstance(command, p.ListTubeUsed) and not isinstance(reply, p.Using):
            raise ConnectionLostError(f"heartbeat answered {reply!r}")
        return None

    def _confirm(self, command: p.Command, reply: p.Reply, finished: Finished) -> None:
        """beanstalkd answered an outcome: record what really happened to the job."""
        if not _applied(command, reply):
            self._refused(command, reply)
            self.outcomes.record(unapplied(finished, reply))
            return
        self._confirmed += 1
        self.outcomes.record(finished)
        if self.services.excuses and not isinstance(command, p.Release):
            self.services.excuses.forget(self._server_id, finished.job_id)

    def _refused(self, command: p.Command, reply: p.Reply) -> None:
        job_id = getattr(command, "id", None)
        verb = type(command).__name__.lower()
        if isinstance(reply, p.NotFound):
            # Not ours any more (TTR expired and another worker has it): nothing to do.
            self.log.warning("outcome not applied: job no longer ours", job_id=job_id, command=verb)
        elif isinstance(reply, p.Buried):
            self.log.error("beanstalkd buried the job instead of releasing it", job_id=job_id)
        else:
            # OUT_OF_MEMORY / INTERNAL_ERROR on release/bury: the job may be orphaned on
            # the server until it restarts (docs/beanstalkd.md#b3). Never
            # retry on that id.
            self.log.error(
                "outcome refused by beanstalkd",
                job_id=job_id,
                command=verb,
                reply=type(reply).__name__,
            )

    async def _reserve_blocking(self, client: Client, handlers: trio.Nursery) -> bool:
        """Block in reserve while the lane holds nothing; False if fetching stopped."""
        slots = self.services.in_flight.take(1)
        if not slots:  # the process-wide cap is reached: wait for a slot, or for the drain
            with self.state.fetch_scope() as scope:
                slots = [await self.services.in_flight.take_one()]
            if scope.cancelled_caught:
                return False
        slot = slots[0]
        try:
            timeout = self.config.reserve_timeout
            await client.send(p.ReserveWithTimeout(timeout))
            reply: p.Reply | None = None
            with self.state.fetch_scope():
                # cancelled: the client closes the connection (the reserve still runs there)
                reply = await client.receive(patience=timeout)
            self._last_io = trio.current_time()
            if reply is None:
                return False
            if isinstance(reply, p.ErrorReply):
                raise ConnectionLostError(f"reserve failed: {type(reply).__name__}")
            if isinstance(reply, p.Reserved):
                await self._start(client, handlers, [(reply, slot)])
            elif isinstance(reply, p.DeadlineSoon):
                await trio.sleep(_POLL_INTERVAL)  # a job of ours is due: never spin on it
            return True
        finally:
            slot.release()  # no-op once a job holds it

    async def _wait(self, client: Client, fetching: bool) -> None:
        """Until a handler queues a command, a touch or heartbeat is due, it is time to
        look for new jobs again, or the connection dies (raises)."""
        if self._outbox:
            return
        looking = fetching and self._reserves_wanted() > 0
        heartbeat = self._last_io + self.config.reserve_timeout - trio.current_time()
        timeout = min(self.runs.next_touch_in(), _POLL_INTERVAL if looking else heartbeat)
        with trio.move_on_after(max(0.0, timeout)) as scope:
            self._wake = scope
            reason = await client.wait_lost()
            raise ConnectionLostError(reason)
        self._wake = None

    # ---- jobs

    async def _start(
        self, client: Client, handlers: trio.Nursery, reserved: list[tuple[p.Reserved, Slot]]
    ) -> None:
        """stats-job for every new job in one write, then start their handlers."""
        for job, _ in reserved:
            self._learn_body_size(len(job.body))
        waiting = list(reversed(reserved))  # jobs whose handler has not started yet
        try:
            await client.send(*[p.StatsJob(job.id) for job, _ in reserved])
            while waiting:
                job, slot = waiting[-1]
                stats = await client.receive()
                waiting.pop()
                self._begin(handlers, job, slot, stats)
        finally:
            for _, slot in waiting:  # connection lost before they started: free their slots
                slot.release()
        self._last_io = trio.current_time()
        if len(self.runs):
            self.state.busy_lanes.add(self)

    def _learn_body_size(self, size: int) -> None:
        if self._body_estimate == 0:
            self._body_estimate = float(max(size, 1))
        else:
            w = _BODY_ESTIMATE_WEIGHT
            self._body_estimate = (1 - w) * self._body_estimate + w * max(size, 1)

    def _begin(self, handlers: trio.Nursery, job: p.Reserved, slot: Slot, stats: p.Reply) -> None:
        """Start a job's handler, skip a job that is not ours, or queue its burial."""
        now = time.monotonic()
        self.state.counters.reserved += 1
        if isinstance(stats, p.NotFound):
            # Reserved, then gone before we asked: its TTR ran out (we were stopped or the
            # link was slow) and another worker finished it. Not ours; the lane goes on.
            slot.release()
            self.state.counters.skipped += 1
            self.log.warning(
                "job skipped: no longer ours",
                job_id=job.id,
                reason="stats-job answered NOT_FOUND (its TTR ran out before we started it)",
            )
            return
        if not isinstance(stats, p.JobStats):
            slot.release()
            raise ConnectionLostError(f"stats-job {job.id} answered {stats!r}")
        excused = self.services.excuses.of(self._server_id, job.id)
        plan = plan_job(job.id, job.body, stats, self.pool.rules, log=self.log, excused=excused)
        if isinstance(plan, BuryJob):
            slot.release()
            self._send(Finished(plan, job.id, stats, self.pool.config.handler, now))
            self.state.job_finished()
            return
        plan.job._services = _JobServices(self, job.id)
        self.runs.begin(handlers, plan, stats, slot, now)

    def _finished(self, run: Run, outcome: Outcome) -> None:
        """A handler ended (Runs calls this once per job)."""
        if not len(self.runs):
            self.state.busy_lanes.discard(self)
        finished = Finished(outcome, run.plan.job.id, run.stats, run.plan.handler, run.started)
        self.state.job_finished()
        if isinstance(outcome, ReturnJob):
            self.outcomes.record(finished)
            if outcome.cause is Cause.CONNECTION_LOST:  # the link's fault, not the job's
                self.services.excuses.add(self._server_id, finished.job_id)
            self._must_close = True  # the only way to hand a job back without an outcome
            if self._wake is not None:
                self._wake.cancel()
        else:
            self._send(finished)

    def _send(self, finished: Finished) -> None:
        outcome = finished.outcome
        assert not isinstance(outcome, ReturnJob)
        self._queue(_Entry(command_for(outcome, finished.job_id), finishes=finished))


def _applied(command: p.Command, reply: p.Reply) -> bool:
    """True if beanstalkd did what the outcome command asked."""
    return (
        (isinstance(command, p.Delete) and isinstance(reply, p.Deleted))
        or (isinstance(command, p.Release) and isinstance(reply, p.Released))
        or (isinstance(command, p.Bury) and isinstance(reply, p.Buried))
    )
