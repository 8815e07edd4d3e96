"""Batch handles for producers and handlers: open a batch, add jobs, close it
(docs/workflows.md#batches).

A handle runs the exchanges of :mod:`tubeworker.batches.ops` through ``run`` (a blocking
connection's, a Trio client's, or the daemon's batch connections): every job of a batch
goes to the batch's server. If adding a job fails midway, the handle cannot tell whether
the job is in the batch: it refuses to close (:class:`BatchUncertain`), so that its
callbacks cannot fire early; the batch is then forgotten after its retention.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tubeworker.batches.model import RETENTION, BatchRef, Kind, new_batch_id
from tubeworker.batches.ops import Callback, Exchange, Opened, add_job, close_batch, open_batch
from tubeworker.beanstalk import protocol as p
from tubeworker.chains import step_body
from tubeworker.envelope import Step
from tubeworker.producing.checks import Seconds, to_seconds
from tubeworker.producing.errors import InvalidJob, ProducerError
from tubeworker.security.keys import KeyRing

__all__ = ["AsyncBatch", "Batch", "BatchUncertain", "callbacks_of", "opening"]

log = logging.getLogger("tubeworker.producer")

#: Builds a job's body: (task, payload, id, secret, its place in the batch) → bytes.
MakeBody = Callable[[str, Any, "str | None", Any, BatchRef], bytes]


class BatchUncertain(ProducerError):
    """A job's put failed midway: the batch cannot tell whether it holds that job, so it
    is not closed (its callbacks would risk firing before that job ends)."""


def callbacks_of(
    batch_id: str,
    given: Mapping[Kind, Step | None],
    signer: KeyRing | None = None,
) -> dict[Kind, Callback]:
    """Each callback's parked job: its step's envelope, with id ``batch:<id>:<kind>``
    unless the step has one (a typed step's payload checked now)."""
    callbacks: dict[Kind, Callback] = {}
    for kind, step in given.items():
        if step is None:
            continue
        if not isinstance(step, Step):
            raise InvalidJob(f"on_{kind} must be a tubeworker.Step, got {type(step).__name__}")
        if step.delay:
            raise InvalidJob(f"on_{kind}: a callback runs when it fires (no delay)")
        named = step.id or f"batch:{batch_id}:{kind}"
        body = step_body(
            Step(step.tube, step.task, step.payload, named, step.priority, 0, step.ttr),
            signer=signer,
        )
        callbacks[kind] = Callback(step.tube, step.task, body, step.priority, step.ttr)
    return callbacks


def _failed(exc: Exception, what: str) -> ProducerError:
    if isinstance(exc, ProducerError):
        return exc
    return ProducerError(f"{what}: {exc}")


class _Handle:
    def __init__(self, opened: Opened, server: str, make_body: MakeBody) -> None:
        self.opened = opened
        self.server = server
        self._make_body = make_body
        self.closed = False
        self.uncertain: str | None = None
        self.added = 0
        self.fired: tuple[Kind, ...] = ()

    @property
    def id(self) -> str:
        """The batch's id (``tubeworker batch ID``, the tube ``tubeworker.batch.ID``)."""
        return self.opened.id

    def _add(
        self,
        tube: str,
        task: str,
        payload: Any,
        priority: int,
        ttr: int,
        id: str | None,
        secret: Any,
    ) -> Exchange[int]:
        if self.closed:
            raise InvalidJob(f"batch {self.id} is closed: its jobs may add jobs, its maker not")
        make = self._make_body
        return add_job(
            self.opened.ref(1),
            tube,
            lambda ref: make(task, payload, id, secret, ref),
            priority=priority,
            ttr=ttr,
        )

    def _closing(self) -> Exchange[tuple[Kind, ...]]:
        if self.uncertain is not None:
            raise BatchUncertain(
                f"batch {self.id} is left open: a job's put failed midway ({self.uncertain})"
            )
        return close_batch(self.opened.ref(1))

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Batch {self.id} on {self.server}: {self.added} jobs, {state}>"


class Batch(_Handle):
    """A batch being filled by a blocking producer (``producer.batch(...)``)."""

    def __init__(
        self,
        opened: Opened,
        server: str,
        make_body: MakeBody,
        run: Callable[[Exchange[Any]], Any],
        done: Callable[[], None],
    ) -> None:
        super().__init__(opened, server, make_body)
        self._run = run
        self._done = done

    def enqueue(
        self,
        tube: str,
        task: str,
        payload: Any = None,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        ttr: int = p.DEFAULT_TTR,
        id: str | None = None,
        secret: Any = None,
    ) -> int:
        """Put a job in the batch (it starts at once: batch jobs take no delay); its id."""
        exchange = self._add(tube, task, payload, priority, ttr, id, secret)
        try:
            job_id: int = self._run(exchange)
        except InvalidJob:
            raise
        except Exception as exc:
            self.uncertain = str(exc)
            raise _failed(exc, f"batch {self.id}: job not added") from exc
        self.added += 1
        return job_id

    def close(self) -> tuple[Kind, ...]:
        """No more jobs from here: callbacks may fire from now on (the ones this close
        fired are returned: an empty batch completes at once)."""
        if self.closed:
            return self.fired
        try:
            self.fired = self._run(self._closing())
        finally:
            self._done()
        self.closed = True
        return self.fired

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.close()
            return
        log.warning("batch %s left open: the block that filled it raised", self.id)
        self._done()


class AsyncBatch(_Handle):
    """A batch being filled by the Trio producer or by a running job."""

    def __init__(
        self,
        opened: Opened,
        server: str,
        make_body: MakeBody,
        run: Callable[[Exchange[Any]], Awaitable[Any]],
        done: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(opened, server, make_body)
        self._run = run
        self._done = done

    async def enqueue(
        self,
        tube: str,
        task: str,
        payload: Any = None,
        *,
        priority: int = p.DEFAULT_PRIORITY,
        ttr: int = p.DEFAULT_TTR,
        id: str | None = None,
        secret: Any = None,
    ) -> int:
        """Put a job in the batch (it starts at once); its id."""
        exchange = self._add(tube, task, payload, priority, ttr, id, secret)
        try:
            job_id: int = await self._run(exchange)
        except InvalidJob:
            raise
        except Exception as exc:
            self.uncertain = str(exc)
            raise _failed(exc, f"batch {self.id}: job not added") from exc
        self.added += 1
        return job_id

    async def close(self) -> tuple[Kind, ...]:
        """No more jobs from here: callbacks may fire from now on."""
        if self.closed:
            return self.fired
        try:
            self.fired = await self._run(self._closing())
        finally:
            if self._done is not None:
                await self._done()
        self.closed = True
        return self.fired

    async def __aenter__(self) -> AsyncBatch:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            await self.close()
            return
        log.warning("batch %s left open: the block that filled it raised", self.id)
        if self._done is not None:
            await self._done()


def opening(
    on_success: Step | None,
    on_complete: Step | None,
    on_death: Step | None,
    *,
    retention: Seconds = RETENTION,
    description: str = "",
    signer: KeyRing | None = None,
) -> Exchange[Opened]:
    """The exchange that opens a new batch with these callbacks."""
    given: dict[Kind, Step | None] = {
        "success": on_success,
        "complete": on_complete,
        "death": on_death,
    }
    retention = to_seconds(retention, "retention", minimum=1)
    batch_id = new_batch_id()
    return open_batch(
        batch_id,
        callbacks_of(batch_id, given, signer),
        retention=retention,
        description=description[:500],
    )
