"""Chains and batches for both producers (docs/workflows.md): a layer between their shared
core (failover.ProducerCore) and each producer, which gives it a way to put and a
connection of a batch's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from tubeworker.batches.drive import drive, drive_sync
from tubeworker.batches.model import RETENTION
from tubeworker.batches.ops import Exchange
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client
from tubeworker.chains import Step, chain_bodies
from tubeworker.errors import ConnectionLostError, LocalProtocolError, RemoteProtocolError
from tubeworker.producing.batches import AsyncBatch, Batch, opening
from tubeworker.producing.checks import Seconds
from tubeworker.producing.errors import InvalidJob, ProducerError
from tubeworker.producing.failover import ProducerCore, SyncConnection
from tubeworker.producing.spool import Receipt

__all__ = ["AsyncWorkflows", "SyncWorkflows"]


class SyncWorkflows(ProducerCore):
    """``chain`` and ``batch`` of the blocking producer."""

    def put(
        self,
        tube: str,
        body: bytes | str,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        delay: Seconds = 0,
        ttr: Seconds = p.DEFAULT_TTR,
        prefer: str | Address | None = None,
    ) -> Receipt:
        raise NotImplementedError

    def _first_server(self) -> Address:
        raise NotImplementedError

    def _own_connection(self, server: Address) -> SyncConnection:
        """A new connection to ``server`` that only its caller uses."""
        raise NotImplementedError

    def chain(self, steps: Sequence[Step], *, chain_id: str | None = None) -> Receipt:
        """Put a chain: its first step now, each next one when the one before succeeds
        (put by the worker before it deletes the job: never lost, maybe twice). Each step
        without an ``id`` gets ``chain:<chain_id>:<n>`` (a random chain id by default)."""
        try:
            first = chain_bodies(steps, chain_id, self._signer)
        except (ValueError, LocalProtocolError) as exc:
            if isinstance(exc, InvalidJob):
                raise
            raise InvalidJob(str(exc)) from None
        return self.put(
            first.tube, first.body, priority=first.priority, delay=first.delay, ttr=first.ttr
        )

    def batch(
        self,
        *,
        on_success: Step | None = None,
        on_complete: Step | None = None,
        on_death: Step | None = None,
        retention: Seconds = RETENTION,
        description: str = "",
    ) -> Batch:
        """Open a batch (docs/workflows.md#batches) on the first healthy server, on a
        connection of its own: ``with producer.batch(on_complete=Step(...)) as b:
        b.enqueue(...)`` closes it when the block ends. Each callback fires exactly once
        when its moment comes after the close: ``on_success`` when every job succeeded,
        ``on_complete`` when every job succeeded or was buried, ``on_death`` at the first
        burial. ``retention``: how long a complete batch is kept for ``tubeworker batch``."""
        opening_ = opening(
            on_success,
            on_complete,
            on_death,
            retention=retention,
            description=description,
            signer=self._signer,
        )
        server = self._first_server()
        try:
            conn = self._own_connection(server)
        except (ConnectionLostError, RemoteProtocolError) as exc:
            raise ProducerError(f"batch not opened: {server} unreachable: {exc}") from None

        def run(exchange: Exchange[Any]) -> Any:
            return drive_sync(conn.exchange, exchange)

        try:
            opened = run(opening_)
        except Exception as exc:
            conn.close()
            raise ProducerError(f"batch not opened on {server}: {exc}") from exc
        return Batch(opened, str(server), self._envelope, run, conn.close)


class AsyncWorkflows(ProducerCore):
    """``chain`` and ``batch`` of the Trio producer."""

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
        raise NotImplementedError

    async def _own_client(self, server: Address) -> Client:
        """A new connection to ``server`` that only its caller uses."""
        raise NotImplementedError

    async def chain(self, steps: Sequence[Step], *, chain_id: str | None = None) -> Receipt:
        """Put a chain: its first step now, each next one when the one before succeeds
        (put by the worker before it deletes the job: never lost, maybe twice). Each step
        without an ``id`` gets ``chain:<chain_id>:<n>`` (a random chain id by default)."""
        try:
            first = chain_bodies(steps, chain_id, self._signer)
        except (ValueError, LocalProtocolError) as exc:
            if isinstance(exc, InvalidJob):
                raise
            raise InvalidJob(str(exc)) from None
        return await self.put(
            first.tube, first.body, priority=first.priority, delay=first.delay, ttr=first.ttr
        )

    async def batch(
        self,
        *,
        on_success: Step | None = None,
        on_complete: Step | None = None,
        on_death: Step | None = None,
        retention: Seconds = RETENTION,
        description: str = "",
    ) -> AsyncBatch:
        """Open a batch on the first healthy server, on a connection of its own: ``async
        with await producer.batch(on_complete=Step(...)) as b: await b.enqueue(...)``
        closes it when the block ends (see :meth:`Producer.batch`)."""
        opening_ = opening(
            on_success,
            on_complete,
            on_death,
            retention=retention,
            description=description,
            signer=self._signer,
        )
        server = self._health.order(self.servers)[0]
        try:
            client = await self._own_client(server)
        except (ConnectionLostError, RemoteProtocolError) as exc:
            raise ProducerError(f"batch not opened: {server} unreachable: {exc}") from None
        lock = trio.Lock()  # one exchange at a time on the batch's connection

        async def run(exchange: Exchange[Any]) -> Any:
            async with lock:
                return await drive(client, exchange)

        try:
            opened = await run(opening_)
        except Exception as exc:
            await client.aclose()
            raise ProducerError(f"batch not opened on {server}: {exc}") from exc
        return AsyncBatch(opened, str(server), self._envelope, run, client.aclose)
