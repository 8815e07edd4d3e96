"""The daemon's records in beanstalkd, off the lanes' path: why a job was buried
(``tubeworker.burials``) and which returns were the daemon's choice (``tubeworker.returns``).

Lanes leave records in a :class:`RecordQueue` (never waiting: a full queue drops, and says
so); one task per process writes them on its own connection per server. A record that
cannot be written is logged and dropped: the job itself is buried or returned either way.
At the end of a drain the daemon lets the queue empty for a moment (:meth:`RecordQueue.close`
then :func:`run_recorder` returns), so the returns of the drain deadline are on record
before the process exits. :func:`run_return_sweeper` deletes the return records of jobs
that are gone, and :class:`ReturnsLookup` counts a job's returns for dispatch.
"""

from __future__ import annotations

import greenstalk
import structlog
import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.burials import BurialRecord, write_record
from tubeworker.config import Config
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.producing.dedup import DEDUP_PREFIX
from tubeworker.returns import ReturnRecord, count_returns, sweep_returns, write_return

__all__ = ["RecordQueue", "ReturnsLookup", "run_recorder", "run_return_sweeper"]

log = structlog.get_logger("tubeworker")

_QUEUE = 1000  # records waiting to be written; past it they are dropped (and said so)
_SWEEP_EVERY = 300.0  # seconds between sweeps of the return records of finished jobs
_FAULTS = (ConnectionLostError, ProtocolError, trio.TooSlowError, OSError, greenstalk.Error)

Record = BurialRecord | ReturnRecord


class RecordQueue:
    """Where lanes leave records for the recorder task."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[Address, Record]](_QUEUE)
        self.dropped = 0

    def add(self, address: Address, record: Record) -> None:
        try:
            self.send.send_nowait((address, record))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += 1

    def close(self) -> None:
        """No more records: the recorder writes what is queued, then returns."""
        self.send.close()


class _Clients:
    """One connection per server, opened on first use and again after a failure."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._clients: dict[Address, Client] = {}

    async def get(self, address: Address) -> Client:
        client = self._clients.get(address)
        if client is None or not client.is_usable:
            client = self._clients[address] = await connect(
                address,
                connect_timeout=self._config.connect_timeout,
                reply_timeout=self._config.reply_timeout,
            )
        return client

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for client in self._clients.values():
                await client.aclose()


async def run_recorder(config: Config, queue: RecordQueue) -> None:
    """Write every queued record until the queue is closed and empty."""
    clients = _Clients(config)
    try:
        async for address, record in queue.receive:
            try:
                with trio.fail_after(config.reply_timeout * 2):
                    client = await clients.get(address)
                    if isinstance(record, ReturnRecord):
                        await write_return(client, record)
                    else:
                        await write_record(client, record)
            except _FAULTS as exc:
                what = "return" if isinstance(record, ReturnRecord) else "burial reason"
                log.warning(f"{what} not recorded", job_id=record.job_id, error=str(exc))
    finally:
        await clients.aclose()


async def run_return_sweeper(config: Config, servers: tuple[Address, ...]) -> None:
    """Every few minutes, delete the return records of jobs that are gone."""
    clients = _Clients(config)
    try:
        while True:
            await trio.sleep(_SWEEP_EVERY)
            for address in servers:
                try:
                    with trio.fail_after(config.reply_timeout * 10):
                        client = await clients.get(address)
                        swept = await sweep_returns(client)
                        swept += await sweep_dedup_markers(client)
                except _FAULTS as exc:
                    log.debug("return records not swept", server=str(address), error=str(exc))
                    continue
                if swept:
                    log.debug("return records swept", server=str(address), jobs=swept)
    finally:
        await clients.aclose()


async def sweep_dedup_markers(client: Client, limit: int = 1000) -> int:
    """Delete expired enqueue de-duplication markers (ready: their ``unique_for`` is over)
    of ids never put again (tubeworker.producing.dedup); at most ``limit`` a sweep."""
    deleted = 0
    for tube in await client.list_tubes():
        if not tube.startswith(DEDUP_PREFIX):
            continue
        await client.use(tube)
        while deleted < limit:
            found = await client.request(p.PeekReady())
            if not isinstance(found, p.Found):
                break
            await client.request(p.Delete(found.id))
            deleted += 1
    return deleted


class ReturnsLookup:
    """How many of a job's redeliveries were returns by a daemon's choice (its records),
    asked only before a job would be buried as poison. One connection per server, one
    question at a time."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._clients = _Clients(config)
        self._lock = trio.Lock()

    async def count(self, address: Address, job_id: int) -> int:
        """0 when the server cannot say (the job is then judged on its counters alone)."""
        async with self._lock:
            try:
                with trio.fail_after(self._config.reply_timeout):
                    return await count_returns(await self._clients.get(address), job_id)
            except _FAULTS as exc:
                log.warning("returns not counted", job_id=job_id, error=str(exc))
                return 0

    async def aclose(self) -> None:
        await self._clients.aclose()
