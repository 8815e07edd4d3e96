"""A lane: one beanstalkd connection and the jobs reserved on it.

A reserved job belongs to the connection that reserved it
(docs/beanstalkd.md#ownership-by-connection), so a lane never sends anything about a job on
any other connection. One pump task owns the connection's I/O
(docs/beanstalkd.md#trio-cancellation, rule 1): in one write it sends the outcomes handlers
produced since the last write, due touches and one ``reserve-with-timeout 0`` per free
slot; then ``stats-job`` for every new job in one more write, and lets the new jobs'
handlers take their first steps before its next write (the outcomes of those that end at
once go in it: a batch's outcomes in one write, not two halves). The pump blocks in
``reserve`` only while the lane holds no job (a blocked reserve holds the connection);
otherwise it waits on the idle socket, which turns readable only if the server went away.
What happens to the jobs themselves is ``LaneJobs``'s.

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

import math
from collections import deque

import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Client
from tubeworker.errors import ConnectionLostError, ProtocolError, UnexpectedReplyError
from tubeworker.runtime.lane_connection import Done, LaneConnection, Lost
from tubeworker.runtime.outbox import Entry
from tubeworker.runtime.slots import Slot

__all__ = ["Done", "Lane", "Lost"]

# While a lane holds jobs it cannot block in reserve; with free slots it looks for new
# jobs at least this often (and after every outcome).
_POLL_INTERVAL = 0.02


class Lane(LaneConnection):
    """One beanstalkd connection holding up to ``slots`` reserved jobs: its pump (its
    connection life and state: runtime/lane_connection.py)."""

    # ---- the pump

    async def _pump(self, client: Client, handlers: trio.Nursery) -> Done | Lost:
        """Serve the connection until fetching stops and no job is left, or until the
        connection is lost."""
        try:
            with self.state.fetch_scope() as scope:
                await self.pool.wait_for_tubes()
            if scope.cancelled_caught:
                return Done()
            while True:
                wanted, until = self.pool.watchable()
                blocked = not wanted and until is not None  # every tube waits for its API
                fetching = self.state.may_fetch and not self.jobs.must_close and not blocked
                got_all = await self._exchange(client, handlers, fetching, wanted)
                if not len(self.jobs) and not self._outbox:
                    if blocked and self.state.may_fetch and not self.jobs.must_close:
                        await self._wait(client, fetching, until=until)
                        continue
                    if not fetching:
                        return Done()  # drained, quiet, or a returned job: close it
                    if not got_all:
                        # Nothing ready and nothing held: block, cancellable by drain/quiet.
                        if not await self._reserve_blocking(client, handlers):
                            return Done()
                        continue
                if got_all and fetching and len(self.jobs) < self.slots:
                    continue  # every reserve got a job: there may be more
                await self._wait(client, fetching, until=until)
        except (ConnectionLostError, ProtocolError) as exc:
            return Lost(str(exc))

    async def _exchange(
        self, client: Client, handlers: trio.Nursery, fetching: bool, wanted: frozenset[str]
    ) -> bool:
        """One write of outcomes, touches and reserves; True if every reserve got a job."""
        entries, slots = self._to_send(fetching, wanted)
        if not entries:
            return False
        wire = self._outbox.sent(entries)
        await client.send(*[e.command for e in entries])
        confirmed = self.jobs.confirmed
        reserved = await self._replies(client, wire)
        self._batch.reserved(len(slots), len(reserved))
        self._last_io = trio.current_time()
        if self.jobs.confirmed > confirmed:
            self._batch.confirmed(self.jobs.confirmed - confirmed)
        if reserved:
            await self._start(client, handlers, reserved)
        return bool(slots) and len(reserved) == len(slots)

    def _to_send(self, fetching: bool, wanted: frozenset[str]) -> tuple[list[Entry], list[Slot]]:
        """The next write: outcomes, watch changes, due touches, a reserve per free slot
        (and the slots they hold), or a heartbeat after a long silence."""
        entries = self._outbox.take()
        if wanted is not self._watched and wanted != self._watched:
            entries += self._rewatch(wanted)
        entries += [Entry(touch) for touch in self.jobs.due_touches()]
        slots = self.services.in_flight.take(self._batch.wanted(len(self.jobs))) if fetching else []
        reserve = p.ReserveWithTimeout(0)
        entries += [Entry(reserve, slot=slot) for slot in slots]
        if not entries and self._heartbeat_due():
            entries.append(Entry(p.ListTubeUsed()))  # are you still there?
        return entries, slots

    async def _replies(self, client: Client, wire: deque[Entry]) -> list[tuple[p.Reserved, Slot]]:
        """Read the write's replies, applying each; the jobs its reserves got."""
        reserved: list[tuple[p.Reserved, Slot]] = []
        try:
            while wire:
                reply = client.buffered_reply()  # most of a batch's replies came together
                if reply is None:
                    reply = await client.receive()
                got = self._apply(wire.popleft(), reply)
                if got is not None:
                    reserved.append(got)
        except BaseException:
            for _, slot in reserved:  # got a job, never started it: beanstalkd takes it back
                slot.release()
            raise
        return reserved

    def _heartbeat_due(self) -> bool:
        """A lane holding jobs sends nothing for long stretches: ask the server something
        cheap after ``reserve_timeout`` of silence, so a dead connection is found (the
        reply is bounded by ``reply_timeout``) and beanstalkd re-arms its TTR timers
        (docs/beanstalkd.md#b1)."""
        silent = trio.current_time() - self._last_io
        return len(self.jobs) > 0 and silent >= self.config.reserve_timeout

    def _apply(self, entry: Entry, reply: p.Reply) -> tuple[p.Reserved, Slot] | None:
        """What a reply means for the command it answers."""
        command = entry.command
        if entry.slot is not None:  # a reserve
            slot, entry.slot = entry.slot, None
            if isinstance(reply, p.Reserved):
                return reply, slot
            slot.release()  # TIMED_OUT: none ready; DEADLINE_SOON: one is due
            if isinstance(reply, p.ErrorReply):
                raise UnexpectedReplyError(f"reserve answered {type(reply).__name__}")
            return None
        if isinstance(command, p.Touch):
            self.jobs.touch_answered(command.id, reply)
            return None
        if entry.then is not None:
            decide, entry.then, entry.finishes = entry.then, None, None
            for follow in decide(reply):
                self._outbox.queue(follow)
            return None
        if entry.finishes is not None:
            finished, entry.finishes = entry.finishes, None
            self.jobs.confirm(command, reply, finished)
            return None
        if isinstance(command, p.Watch | p.Ignore) and not isinstance(reply, p.Watching):
            raise UnexpectedReplyError(f"{command!r} answered {reply!r}")
        if isinstance(command, p.ListTubeUsed) and not isinstance(reply, p.Using):
            raise UnexpectedReplyError(f"heartbeat answered {reply!r}")
        return None

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
                raise UnexpectedReplyError(f"reserve answered {type(reply).__name__}")
            if isinstance(reply, p.Reserved):
                await self._start(client, handlers, [(reply, slot)])
            elif isinstance(reply, p.DeadlineSoon):
                await trio.sleep(_POLL_INTERVAL)  # a job of ours is due: never spin on it
            return True
        finally:
            slot.release()  # no-op once a job holds it

    async def _wait(self, client: Client, fetching: bool, *, until: float | None = None) -> None:
        """Until a handler queues a command, a touch or heartbeat is due, it is time to
        look for new jobs again (or, ``until``, to ask the APIs again), or the connection
        dies (raises)."""
        if self._outbox:
            return
        now = trio.current_time()
        looking = fetching and self._batch.wanted(len(self.jobs)) > 0
        heartbeat = (
            self._last_io + self.config.reserve_timeout - now if len(self.jobs) else math.inf
        )
        timeout = min(self.jobs.next_touch_in(), _POLL_INTERVAL if looking else heartbeat)
        if until is not None:
            timeout = min(timeout, until - now)
        with trio.move_on_after(max(0.0, timeout)) as scope:
            self._outbox.wake = scope
            reason = await client.wait_lost()
            raise ConnectionLostError(reason)
        self._outbox.wake = None

    # ---- jobs

    async def _start(
        self, client: Client, handlers: trio.Nursery, reserved: list[tuple[p.Reserved, Slot]]
    ) -> None:
        """stats-job for every new job in one write, then start their handlers."""
        for job, _ in reserved:
            self._batch.saw_body(len(job.body))
        waiting = list(reversed(reserved))  # jobs whose handler has not started yet
        try:
            await client.send(*[p.StatsJob(job.id) for job, _ in reserved])
            now = trio.current_time()  # the batch's (read again after a wait)
            while waiting:
                job, slot = waiting[-1]
                stats = client.buffered_reply()
                if stats is None:
                    stats = await client.receive()
                    now = trio.current_time()
                waiting.pop()
                # Rare: before a job is judged poison, the returns on record (a drain's).
                if self.jobs.may_be_poison(stats):
                    returned = await self.jobs.returned(job.id)
                    now = trio.current_time()
                else:
                    returned = 0
                self.jobs.begin(handlers, job, slot, stats, returned=returned, now=now)
        finally:
            for _, slot in waiting:  # connection lost before they started: free their slots
                slot.release()
        self._last_io = trio.current_time()
        # The batch's handlers take their first steps before the next exchange, so the
        # outcomes of those that end at once go in its write. (Else the lane settles into
        # two half batches, each exchange sent while the last one's handlers wait to start.)
        while self.jobs.runs.starting:
            await trio.lowlevel.checkpoint()
