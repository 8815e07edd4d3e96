"""What a lane's pump sends next, and what it has sent and awaits a reply for.

Each command travels with what its reply finishes: an outcome (recorded once beanstalkd
confirms it), or the in-flight slot a reserve's job will hold. When the connection is lost,
everything unanswered comes back in one list, so nothing of it is ever sent on another
connection and every slot and outcome is accounted for.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.runtime.outcome_log import Finished
from tubeworker.runtime.slots import Slot

__all__ = ["LINGER", "Entry", "Outbox"]

# How long an outcome may wait for the outcomes of the jobs still running beside it, so
# that they travel in one write. Jobs started together end a few microseconds apart (their
# deadlines and sleeps were set one after another), and the pump woken by the first would
# send each in a write of its own, with a reserve and a stats-job round trip behind it.
LINGER = 0.001


@dataclass(slots=True)
class Entry:
    """A command with what its reply finishes."""

    command: p.Command
    finishes: Finished | None = None  # an outcome: recorded when beanstalkd confirms it
    slot: Slot | None = None  # a reserve: the in-flight slot its job will hold
    # What its reply decides: the commands to queue next (they take over ``finishes``,
    # which stays here until the reply, so a lost connection still accounts for it).
    then: Callable[[p.Reply], list[Entry]] | None = None


class Outbox:
    def __init__(self) -> None:
        self._queued: list[Entry] = []
        self._on_wire: deque[Entry] = deque()  # sent, reply not read yet
        self._touch_waiters: dict[int, list[trio.Event]] = {}
        self.wake: trio.CancelScope | None = None  # the pump's idle wait, if it waits
        self._lingering: trio.CancelScope | None = None  # the wait LINGER was set on

    def __bool__(self) -> bool:
        return bool(self._queued)

    def queue(self, entry: Entry) -> None:
        """Queue a command and wake the pump if it is idle."""
        self._queued.append(entry)
        self.poke()

    def poke(self) -> None:
        if self.wake is not None:
            self.wake.cancel()

    def queue_outcome(self, entry: Entry, *, running: int) -> None:
        """Queue a finished job's outcome; with ``running`` jobs still running on the
        connection, the pump waits up to :data:`LINGER` for theirs (none: at once)."""
        self._queued.append(entry)
        wake = self.wake
        if wake is None:
            return
        if not running:
            wake.cancel()
        elif self._lingering is not wake:  # once per wait: the first outcome sets it
            self._lingering = wake
            wake.deadline = min(wake.deadline, trio.current_time() + LINGER)

    def take(self) -> list[Entry]:
        entries, self._queued = self._queued, []
        return entries

    def sent(self, entries: list[Entry]) -> deque[Entry]:
        """These were written: the pump takes each reply's entry from the left of the
        returned queue (replies come in command order); what is left there at a lost
        connection is unanswered."""
        self._on_wire = deque(entries)
        return self._on_wire

    async def touched(self, job_id: int) -> None:
        """Wait for the reply to a queued touch of ``job_id`` (or for the connection's end)."""
        done = trio.Event()
        self._touch_waiters.setdefault(job_id, []).append(done)
        await done.wait()

    def touch_answered(self, job_id: int) -> None:
        for done in self._touch_waiters.pop(job_id, []):
            done.set()

    def lost(self) -> list[Entry]:
        """The connection is gone: everything sent unanswered or never sent, and no waiter
        left waiting."""
        unanswered = [*self._on_wire, *self._queued]
        self._on_wire.clear()
        self._queued.clear()
        for waiters in self._touch_waiters.values():
            for done in waiters:
                done.set()
        self._touch_waiters.clear()
        return unanswered
