"""Unique while running: at most one job per (task, key) runs at a time across the fleet.

``@handler(unique="payload.order_id")`` locks the job's key before its handler starts. The
lock is a token job in tube ``tubeworker.unique.<hash of task and key>`` on the lock server
(the first of the daemon's servers, sorted), *reserved* by the process that runs the job:

- **Acquire**: if the key's tube holds no job, put a token and reserve it by id
  (``reserve-job``); if it holds a ready one (its holder died: beanstalkd gave it back),
  reserve that one by id. Then read ``stats-tube``: the lock is ours only if the tube
  holds exactly one job, ours. Two processes that made a token each at once both see two
  and both delete theirs, and try again after a random pause. So no two holders can ever
  both see "one": while a holder runs, its token stays in the tube (reserved by it).
- **Hold**: the token is touched while the job runs; if the holder dies its connection
  closes and beanstalkd makes the token ready at once: no unlock step to forget, no lock
  outliving its holder. A holder whose lock connection is lost stops its jobs (they go
  back to beanstalkd) since another process may now take their keys.
- **Release**: the token is deleted. A key's tube exists only while a job of that key runs
  or waits: beanstalkd drops an empty tube nobody uses, so idle keys cost nothing and the
  number of key tubes is bounded by the jobs in flight.

A job that cannot lock its key within ``patience`` is deferred (a delayed copy, no attempt
counted), so it never holds a worker slot for long. While the lock server is unreachable,
unique jobs wait and are deferred: they never run unlocked.

As with every beanstalkd lease, a holder stopped (SIGSTOP, a frozen VM) past the token's
TTR loses it to another process while it still believes it holds it
(docs/beanstalkd.md#ttr-rules).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import greenstalk
import structlog
import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.contracts import key_path_value
from tubeworker.errors import ConnectionLostError, ProtocolError

__all__ = [
    "TOKEN_TTR",
    "UNIQUE_PREFIX",
    "UniqueLock",
    "UniqueLocks",
    "key_path_value",
    "unique_tube",
]

UNIQUE_PREFIX = "tubeworker.unique."
TOKEN_TTR = 30  # seconds; touched every third of it while its job runs
_TOKEN_BODY = b"tubeworker unique lock"
_POLL_FIRST = 0.01  # seconds between tries while a key is held (doubling, jittered)
_POLL_MAX = 0.2

log = structlog.get_logger("tubeworker")


def unique_tube(task: str, key: str) -> str:
    """The key's tube: a hash (tube names allow few characters and 200 bytes)."""
    digest = hashlib.sha256(f"{task}\0{key}".encode()).hexdigest()[:40]
    return UNIQUE_PREFIX + digest


class UniqueLock:
    """A held key: its token, and what to do if the lock is lost while its job runs."""

    __slots__ = ("key", "on_lost", "task", "token", "tube")

    def __init__(
        self, task: str, key: str, tube: str, token: int, on_lost: Callable[[str], None]
    ) -> None:
        self.task = task
        self.key = key
        self.tube = tube
        self.token = token
        self.on_lost = on_lost


class UniqueLocks:
    """The process's unique-key locks on one server (see the module docstring)."""

    def __init__(self, address: Address, *, connect_timeout: float = 5.0) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self._client: Client | None = None
        self._io = trio.Lock()  # one command sequence at a time on the connection
        self._held: dict[int, UniqueLock] = {}
        self._released: list[int] = []
        self._wake = trio.Event()
        self.acquired = 0
        self.contended = 0  # tries that found the key held, or raced and backed off

    def __len__(self) -> int:
        return len(self._held)

    async def acquire(
        self, task: str, key: str, *, patience: float, on_lost: Callable[[str], None]
    ) -> UniqueLock | None:
        """Lock ``key`` for ``task``; None if it stayed held (or the server unreachable)
        for ``patience`` seconds."""
        tube = unique_tube(task, key)
        deadline = trio.current_time() + patience
        pause = _POLL_FIRST
        while True:
            token = await self._try(tube)
            if token is not None:
                lock = UniqueLock(task, key, tube, token, on_lost)
                self._held[token] = lock
                self.acquired += 1
                return lock
            self.contended += 1
            if trio.current_time() >= deadline:
                return None
            await trio.sleep(min(pause * random.uniform(0.5, 1.5), deadline - trio.current_time()))
            pause = min(pause * 2, _POLL_MAX)

    def release(self, lock: UniqueLock) -> None:
        """The job ended: its token is deleted (by :meth:`run`, at once)."""
        if self._held.pop(lock.token, None) is not None:
            self._released.append(lock.token)
            self._wake.set()

    async def run(self) -> None:
        """Delete released tokens and touch held ones, for as long as the daemon runs."""
        interval = TOKEN_TTR / 3
        next_touch = trio.current_time() + interval
        while True:
            with trio.move_on_at(next_touch):
                await self._wake.wait()
            self._wake = trio.Event()
            released, self._released = self._released, []
            touches = list(self._held) if trio.current_time() >= next_touch else []
            if touches:
                next_touch = trio.current_time() + interval
            if released or touches:
                commands: list[p.Command] = [p.Delete(t) for t in released]
                commands += [p.Touch(t) for t in touches]
                await self._send(commands)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- the connection

    async def _try(self, tube: str) -> int | None:
        """One try (module docstring): our token's id, or None (held, raced, unreachable)."""
        async with self._io:
            try:
                client = await self._connected()
                await client.use(tube)
                total, ready = await self._count(client, tube)
                if total == 0:
                    token = await client.put(_TOKEN_BODY, priority=0, ttr=TOKEN_TTR)
                elif ready == total:  # left by a holder that died: take it over
                    token = (await client.peek_ready()).id
                else:
                    return None
                try:
                    await client.reserve_job(token)
                except greenstalk.NotFoundError:
                    return None  # another process reserved it first
                if (await self._count(client, tube))[0] == 1:
                    return token
                await client.delete(token)  # made at the same time as another: both go
                return None
            except greenstalk.NotFoundError:
                return None  # the tube emptied between two commands
            except (ConnectionLostError, ProtocolError, greenstalk.Error, OSError) as exc:
                await self._lost(f"{type(exc).__name__}: {exc}")
                return None

    @staticmethod
    async def _count(client: Client, tube: str) -> tuple[int, int]:
        """(jobs in the tube, of which ready); (0, 0) when the tube does not exist."""
        reply = await client.request(p.StatsTube(tube))
        if isinstance(reply, p.NotFound):
            return 0, 0
        if not isinstance(reply, p.TubeStats):
            raise ProtocolError(f"stats-tube {tube} answered {reply!r}")
        ready = reply.current_jobs_ready
        total = ready + reply.current_jobs_reserved + reply.current_jobs_delayed
        return total + reply.current_jobs_buried, ready

    async def _send(self, commands: list[p.Command]) -> None:
        async with self._io:
            if self._client is None:
                return  # the tokens went with the connection (a loss already told)
            try:
                replies = await self._client.pipeline(commands)
            except (ConnectionLostError, ProtocolError, OSError) as exc:
                await self._lost(f"{type(exc).__name__}: {exc}")
                return
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(command, p.Touch) and isinstance(reply, p.NotFound):
                lock = self._held.pop(command.id, None)  # its TTR ran out: not ours
                if lock is not None:
                    lock.on_lost(f"unique key {lock.key!r} lost: its lock's TTR ran out")

    async def _connected(self) -> Client:
        if self._client is None:
            self._client = await connect(self.address, connect_timeout=self.connect_timeout)
        return self._client

    async def _lost(self, why: str) -> None:
        """The connection is gone, and with it every token it held: their jobs stop."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        held, self._held = self._held, {}
        if held:
            log.warning(
                "unique locks lost with their connection", server=str(self.address), error=why
            )
        for lock in held.values():
            lock.on_lost(f"unique key {lock.key!r} lost with the lock server connection: {why}")
