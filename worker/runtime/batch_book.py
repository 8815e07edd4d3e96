"""The daemon's side of batches (docs/workflows.md#batches): a job's burial recorded in
its batch before the job is buried, the callbacks fired, jobs added to a batch by
handlers, and old batches forgotten by a keeper task. (A success, the common end, is
recorded by the lane on its own connection, in the writes that delete the job:
lanejobs.py.)

These commands go on connections of their own (up to 16 per server, kept between uses;
more exchanges at once wait for one). A job whose burial cannot be recorded (its server
does not answer) is released, not buried: it runs again and records again, so a batch
never loses count of a job.
"""

from __future__ import annotations

import random
import time

import greenstalk
import structlog
import trio

from tubeworker.batches.drive import drive
from tubeworker.batches.model import TIMERS_TUBE, BatchRef, Kind
from tubeworker.batches.ops import BatchError, Exchange, T, expire, record_burial
from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.errors import ConnectionLostError, ProtocolError
from tubeworker.observe.counters import JobCounters
from tubeworker.observe.events import EventBus
from tubeworker.runtime.outcome import BuryJob, Cause, Outcome, ReleaseJob

__all__ = ["FAULTS", "BatchBook", "run_batch_keeper"]

log = structlog.get_logger("tubeworker")

FAULTS = (
    BatchError,
    ConnectionLostError,
    ProtocolError,
    trio.TooSlowError,
    OSError,
    greenstalk.Error,
)
_RETRY_RECORD = 5  # seconds before a job whose end could not be recorded runs again
_PER_SERVER = 16  # batch connections per server; more exchanges at once wait for one
_KEEPER_EVERY = 60.0  # seconds between a keeper's looks at the due timers (jittered)


class BatchBook:
    """Batch commands for the daemon: connections per server, and what a job's end does."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        reply_timeout: float,
        counters: JobCounters,
        events: EventBus,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._counters = counters
        self._events = events
        self._idle: dict[Address, list[Client]] = {}
        self._slots: dict[Address, trio.Semaphore] = {}

    async def exchange(self, address: Address, exchange: Exchange[T]) -> T:
        """Run ``exchange`` on one of ``address``'s batch connections (bounded in time: a
        server that stops answering fails it, the connection is dropped)."""
        slots = self._slots.get(address)
        if slots is None:
            slots = self._slots[address] = trio.Semaphore(_PER_SERVER)
        idle = self._idle.setdefault(address, [])
        async with slots:
            client = idle.pop() if idle else None
            if client is None or not client.is_usable:
                client = await connect(
                    address,
                    connect_timeout=self._connect_timeout,
                    reply_timeout=self._reply_timeout,
                )
            try:
                with trio.fail_after(self._reply_timeout * 4 + 1):
                    result = await drive(client, exchange)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await client.aclose()  # its state (used tube, held tokens) is unknown
                raise
            idle.append(client)
            return result

    async def record_burial(self, address: Address, ref: BatchRef, outcome: BuryJob) -> Outcome:
        """Record a batch job's burial before it is sent; the outcome to send (a release
        when the server did not answer: the job runs again and records again)."""
        try:
            fired = await self.exchange(address, record_burial(ref))
        except FAULTS as exc:
            detail = f"its burial could not be recorded in batch {ref.id} ({exc}): runs again"
            return ReleaseJob(_RETRY_RECORD, outcome.priority, Cause.BATCH, detail)
        self.fired(ref, fired)
        return outcome

    def fired(self, ref: BatchRef, kinds: tuple[Kind, ...]) -> None:
        """Callbacks this process fired: a log line, a count, an event each."""
        for kind in kinds:
            took = max(0.0, time.time() - ref.opened) if ref.opened else None
            self._counters.batch_fired[kind] += 1
            if kind == "complete" and took is not None:  # once a batch: always kept
                self._counters.batch_completion.observe(took)
            job_id = ref.callbacks.get(kind)
            log.info("batch callback fired", batch=ref.id, callback=kind, job_id=job_id)
            self._events.publish("batch", batch=ref.id, callback=kind, job_id=job_id)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for clients in self._idle.values():
                for client in clients:
                    await client.aclose()
            self._idle.clear()


async def run_batch_keeper(
    address: Address,
    *,
    connect_timeout: float,
    reply_timeout: float,
    every: float = _KEEPER_EVERY,
) -> None:
    """Forget the batches of ``address`` whose timer came due (ops.expire), forever: every
    minute or so, one connection takes the due timers of ``tubeworker.batches`` and goes
    (timers are due at retentions of hours or days: a minute late is on time)."""
    while True:
        await trio.sleep(every * random.uniform(0.5, 1.5))
        try:
            client = await connect(
                address, connect_timeout=connect_timeout, reply_timeout=reply_timeout
            )
            try:
                await client.watch(TIMERS_TUBE)
                await client.ignore("default")
                while True:
                    try:
                        timer = await client.reserve(0)
                    except (greenstalk.TimedOutError, greenstalk.DeadlineSoonError):
                        break
                    with trio.fail_after(reply_timeout * 20 + 5):
                        done = await drive(client, expire(timer))
                    log.info("batch timer", server=str(address), job_id=timer.id, result=done)
            finally:
                await client.aclose()
        except FAULTS as exc:
            log.debug("batch keeper: server unavailable", server=str(address), error=str(exc))
