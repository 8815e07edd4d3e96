"""The producers' side of the spool (:mod:`~tubeworker.producing.spool` keeps the jobs):
a job goes to it when no server stores it, and is delivered from it, oldest first, once a
server takes jobs again. A layer between the producers' shared core
(failover.ProducerCore) and each producer, which gives it a way to put now
(``_put_now``); whether a put goes to the spool is decided in the producer's ``put``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import trio

from tubeworker.beanstalk.client import Address
from tubeworker.producing.checks import PutRequest
from tubeworker.producing.errors import InvalidJob, JobBuried, NoServerAvailable, ProducerError
from tubeworker.producing.failover import ProducerCore
from tubeworker.producing.spool import FlushResult, Receipt, Spool, SpoolStatus

__all__ = ["AsyncSpooling", "SyncSpooling"]

log = logging.getLogger("tubeworker.producer")


def _spool_of(spool: str | Path | Spool | None, max_bytes: int) -> Spool | None:
    return spool if isinstance(spool, Spool) or spool is None else Spool(spool, max_bytes=max_bytes)


class SyncSpooling(ProducerCore):
    """The blocking producer's spool: jobs put to it and flushed from it with the
    producer's lock held, and a background thread that flushes it every ``flush_every``
    seconds."""

    _lock: threading.RLock

    def _put_now(self, request: PutRequest, prefer: str | Address | None = None) -> int:
        raise NotImplementedError

    def _open_spool(
        self, spool: str | Path | Spool | None, max_bytes: int, flush_every: float
    ) -> None:
        self._spool = _spool_of(spool, max_bytes)
        self._flush_every = flush_every
        self._last_flush = -float("inf")
        self._flusher: threading.Thread | None = None
        self._flusher_pid = 0
        self._stop = threading.Event()
        if self._spool is not None and self._spool.pending:
            self._start_flusher()  # left by a previous run

    def _to_spool(
        self, spool: Spool, request: PutRequest, error: NoServerAvailable | None
    ) -> Receipt:
        first = not spool.pending
        spool_id = spool.add(request)
        if first:
            log.warning("no server stores jobs: spooling them to %s (%s)", spool.path, error or "-")
        self._start_flusher()
        return Receipt(0, spooled=True, spool_id=spool_id)

    def _flush_locked(self, spool: Spool) -> FlushResult:
        self._last_flush = self._clock()
        result = spool.flush(self._put_now)
        if result.delivered and not result.left:
            log.warning("spool %s drained: %d jobs delivered", spool.path, result.delivered)
        return result

    def flush_spool(self) -> FlushResult:
        """Deliver the spooled jobs now (the background thread does it every
        ``flush_every`` seconds)."""
        if self._spool is None:
            return FlushResult(0, 0)
        with self._lock:
            return self._flush_locked(self._spool)

    def spool_status(self) -> SpoolStatus | None:
        """The spool's jobs, bytes and oldest job (figures an app can export)."""
        return None if self._spool is None else self._spool.status()

    def _start_flusher(self) -> None:
        alive = self._flusher is not None and self._flusher.is_alive()
        if alive and self._flusher_pid == os.getpid():
            return  # (after a fork, the child starts its own)
        self._flusher_pid = os.getpid()
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_forever, name="tubeworker-spool-flusher", daemon=True
        )
        self._flusher.start()

    def _flush_forever(self) -> None:
        spool, stop = self._spool, self._stop
        assert spool is not None
        while not stop.wait(self._flush_every):
            with self._lock:
                if spool.pending and not stop.is_set():
                    try:
                        self._flush_locked(spool)
                    except ProducerError as exc:  # a bug's reply: say so, keep going
                        log.error("spool flush failed: %s", exc)


class AsyncSpooling(ProducerCore):
    """The Trio producer's spool: the file's calls in threads, one flush at a time, and
    :meth:`run_spool_flusher` for an app's nursery."""

    async def _put_now(self, request: PutRequest, prefer: str | Address | None = None) -> int:
        raise NotImplementedError

    def _open_spool(
        self, spool: str | Path | Spool | None, max_bytes: int, flush_every: float
    ) -> None:
        self._spool = _spool_of(spool, max_bytes)
        self._flush_every = flush_every
        self._last_flush = -float("inf")
        self._flushing = trio.Lock()  # one flush at a time; puts wait behind it

    async def _to_spool(
        self, spool: Spool, request: PutRequest, error: NoServerAvailable | None
    ) -> Receipt:
        first = not spool.pending
        spool_id = await trio.to_thread.run_sync(spool.add, request)
        if first:
            log.warning("no server stores jobs: spooling them to %s (%s)", spool.path, error or "-")
        return Receipt(0, spooled=True, spool_id=spool_id)

    async def flush_spool(self) -> FlushResult:
        """Deliver the spooled jobs, oldest first, until none is left or no server
        stores one."""
        spool = self._spool
        if spool is None:
            return FlushResult(0, 0)
        async with self._flushing:
            self._last_flush = self._clock()
            await trio.to_thread.run_sync(spool.reclaim_dead)
            delivered = 0
            while True:
                claimed = await trio.to_thread.run_sync(spool.claim)
                if claimed is None:
                    break
                spool_id, request = claimed
                try:
                    await self._put_now(request)
                except NoServerAvailable as exc:
                    await trio.to_thread.run_sync(spool.unclaim, spool_id)
                    return FlushResult(delivered, await trio.to_thread.run_sync(spool.refresh), exc)
                except JobBuried:
                    pass  # stored, buried
                except InvalidJob as exc:
                    await trio.to_thread.run_sync(spool.refuse, spool_id, str(exc))
                    continue
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(spool.unclaim, spool_id)
                    raise
                await trio.to_thread.run_sync(spool.delivered, spool_id)
                delivered += 1
            left = await trio.to_thread.run_sync(spool.refresh)
            if delivered and not left:
                log.warning("spool %s drained: %d jobs delivered", spool.path, delivered)
            return FlushResult(delivered, left)

    async def run_spool_flusher(self) -> None:
        """Forever: deliver spooled jobs every ``flush_every`` seconds (start it in the
        app's nursery)."""
        while True:
            await trio.sleep(self._flush_every)
            if self._spool is not None and self._spool.pending:
                await self.flush_spool()

    def spool_status(self) -> SpoolStatus | None:
        return None if self._spool is None else self._spool.status()
