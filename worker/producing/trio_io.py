"""The Trio producer (:class:`AsyncProducer`, what ``job.put()`` uses in the daemon) on
tubeworker's Trio client; the checks and failover are
:mod:`~tubeworker.producing.failover`'s."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import greenstalk
import trio

from tubeworker.batches.drive import drive
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.errors import ConnectionLostError, RemoteProtocolError
from tubeworker.producing import dedup
from tubeworker.producing.checks import (
    PutRequest,
    Seconds,
    ServersArg,
    check_size,
)
from tubeworker.producing.errors import (
    NoServerAvailable,
    ProducerError,
    ServerFailure,
)
from tubeworker.producing.failover import (
    BadReply,
    ProducerStatistics,
    Unstored,
    check_used,
    stored_id,
    unreachable,
)
from tubeworker.producing.spool import (
    DEFAULT_MAX_BYTES,
    Receipt,
    Spool,
)
from tubeworker.producing.spooling import AsyncSpooling
from tubeworker.producing.workflows import AsyncWorkflows
from tubeworker.security.keys import KeyRing

__all__ = ["AsyncProducer", "enqueue_async"]


@dataclass
class _Slot:
    """One server's connection in an AsyncProducer, and the tube it uses."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    client: Client | None = None
    tube: str = "default"
    # When it last could not be reached, and why: tasks that were waiting for the lock
    # meanwhile fail over at once instead of each waiting out a connect of its own.
    down: tuple[float, Unstored] | None = None


class AsyncProducer(AsyncSpooling, AsyncWorkflows):
    """Puts jobs from Trio code: :class:`Producer`'s twin (same checks, errors and
    failover) on tubeworker's Trio client. Tasks share it; one connection per server,
    used by one task at a time. Use it within one ``trio.run``. A put cancelled midway
    closes its connection (the job may or may not have been stored).

    ``spool``, ``spool_max_bytes``: as for :class:`Producer`. Spooled jobs are delivered
    when a later put finds a server again (at most every ``flush_every`` seconds), by
    :meth:`flush_spool`, and by :meth:`run_spool_flusher` if the app starts it in a
    nursery (it does so every ``flush_every`` seconds)."""

    def __init__(
        self,
        servers: ServersArg = None,
        *,
        connect_timeout: float = 5.0,
        reply_timeout: float = 10.0,
        max_job_size: int | None = None,
        demote_for: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        connector: Callable[[Address], Awaitable[Client]] | None = None,
        on_failure: Callable[[ServerFailure], None] | None = None,
        spool: str | Path | Spool | None = None,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        flush_every: float = 1.0,
        signing_keys: str | Path | KeyRing | None = None,
        encryption_keys: str | Path | KeyRing | None = None,
    ) -> None:
        super().__init__(
            servers,
            connect_timeout=connect_timeout,
            reply_timeout=reply_timeout,
            max_job_size=max_job_size,
            demote_for=demote_for,
            clock=clock,
            on_failure=on_failure,
            signing_keys=signing_keys,
            encryption_keys=encryption_keys,
        )
        self._connector = connector
        self._slots: dict[Address, _Slot] = {}
        self._open_spool(spool, spool_max_bytes, flush_every)

    async def enqueue(
        self,
        tube: str,
        task: str,
        payload: Any = None,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        delay: Seconds = 0,
        ttr: Seconds = p.DEFAULT_TTR,
        id: str | None = None,
        unique_for: Seconds | None = None,
        secret: Any = None,
    ) -> Receipt:
        """Put the envelope ``{"task": task, "payload": payload}`` into ``tube`` (``id``:
        its idempotency key; a registered task's payload is validated first). With
        ``unique_for`` (a duration), not if a job with this ``id`` was put that recently:
        best effort, see :mod:`tubeworker.producing.dedup` (the receipt says
        ``duplicate``, with the first job's id). ``secret``: sealed with the encryption
        keys, opened only in the worker (``job.secret``). Returns its id
        (or a spooled receipt)."""
        body = self._envelope(task, payload, id, secret)
        seconds = self._unique_seconds(id, unique_for)
        if seconds is None or id is None:
            return await self.put(tube, body, priority=priority, delay=delay, ttr=ttr)
        first = await self._dedup(id, dedup.check(id))
        if first is not None:
            return self._duplicate(id, first)
        receipt = await self.put(tube, body, priority=priority, delay=delay, ttr=ttr)
        if not receipt.spooled:
            await self._dedup(id, dedup.mark(id, receipt, seconds))
        return receipt

    async def _dedup(self, key: str, steps: dedup.Steps) -> int | None:
        """Run a de-duplication exchange on the first server (its slot's lock held);
        None if that server cannot be asked (said in the log)."""
        server = self.servers[0]
        slot = self._slots.setdefault(server, _Slot())
        try:
            async with slot.lock:
                if slot.client is None or not slot.client.is_usable:
                    await self._connect(server, slot)
                assert slot.client is not None
                slot.tube = ""  # the marker tube or none: the next put says `use` (as before)
                return await drive(slot.client, steps)
        except (ConnectionLostError, RemoteProtocolError, Unstored, greenstalk.Error) as exc:
            self._dedup_unasked(key, server, exc)
        return None

    async def _own_client(self, server: Address) -> Client:
        if self._connector is not None:
            return await self._connector(server)
        return await connect(
            server, connect_timeout=self.connect_timeout, reply_timeout=self.reply_timeout
        )

    async def put(
        self,
        tube: str,
        body: bytes | str,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        delay: Seconds = 0,
        ttr: Seconds = p.DEFAULT_TTR,
        prefer: str | Address | None = None,
    ) -> Receipt:
        """Put a raw body; ``prefer``: try that server first. Returns the job's id (a
        :class:`Receipt`: spooled, with a spool)."""
        request = self._request(tube, body, priority, delay, ttr)
        spool = self._spool
        if spool is not None and spool.pending:
            if self._clock() - self._last_flush >= self._flush_every:
                await self.flush_spool()
            if spool.pending:  # jobs wait in the spool: this one goes after them
                return await self._to_spool(spool, request, None)
        try:
            return Receipt(await self._put_now(request, prefer))
        except NoServerAvailable as error:
            if spool is None:
                raise
            return await self._to_spool(spool, request, error)

    async def _put_now(self, request: PutRequest, prefer: str | Address | None = None) -> int:
        failover = self._failover(prefer)
        for server in failover.servers:
            try:
                return failover.stored(server, await self._put_on(server, request))
            except Unstored as unstored:
                failover.unstored(server, unstored)
        raise failover.none_stored()

    async def _put_on(self, server: Address, request: PutRequest) -> int:
        slot = self._slots.setdefault(server, _Slot())
        asked = self._clock()
        async with slot.lock:
            kept = slot.client is not None and slot.client.is_usable
            if not kept and slot.down is not None and slot.down[0] >= asked:
                raise slot.down[1]  # it failed while we waited for it
            while True:
                if not kept:
                    await self._connect(server, slot)
                try:
                    return await self._send(slot, server, request)
                except (ConnectionLostError, RemoteProtocolError) as exc:
                    if not kept:
                        raise self._down(slot, unreachable(server, exc, lost=True)) from None
                    kept = False  # a kept connection gone stale: once more on a new one

    async def _connect(self, server: Address, slot: _Slot) -> None:
        if slot.client is not None:
            await slot.client.aclose()
            slot.client = None
        try:
            if self._connector is not None:
                client = await self._connector(server)
            else:
                client = await connect(
                    server, connect_timeout=self.connect_timeout, reply_timeout=self.reply_timeout
                )
        except (ConnectionLostError, RemoteProtocolError) as exc:
            raise self._down(slot, unreachable(server, exc, lost=False)) from None
        self._counters.connections_opened += 1
        slot.client, slot.tube, slot.down = client, "default", None

    def _down(self, slot: _Slot, unstored: Unstored) -> Unstored:
        slot.down = (self._clock(), unstored)
        return unstored

    @staticmethod
    async def _send(slot: _Slot, server: Address, request: PutRequest) -> int:
        client = slot.client
        assert client is not None
        limit = client.server.max_job_size if client.server is not None else None
        check_size(len(request.body), limit, str(server))
        try:
            if slot.tube != request.tube:  # never pipelined with the put (see Producer)
                check_used(await client.request(p.Use(request.tube)), server)
                slot.tube = request.tube
            put = p.Put(request.body, request.priority, request.delay, request.ttr)
            return stored_id(await client.request(put), server, request)
        except BadReply as exc:
            await client.aclose()
            raise ProducerError(str(exc)) from None

    def statistics(self) -> ProducerStatistics:
        return self._snapshot()

    async def aclose(self) -> None:
        """Close every connection (a later put opens new ones)."""
        for slot in self._slots.values():
            if slot.client is not None:
                await slot.client.aclose()
                slot.client = None

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def enqueue_async(
    tube: str,
    task: str,
    payload: Any = None,
    *,
    servers: ServersArg = None,
    priority: int = p.DEFAULT_PRIORITY,
    delay: Seconds = 0,
    ttr: Seconds = p.DEFAULT_TTR,
) -> int:
    """:func:`enqueue` for Trio code."""
    async with AsyncProducer(servers) as producer:
        return await producer.enqueue(tube, task, payload, priority=priority, delay=delay, ttr=ttr)
