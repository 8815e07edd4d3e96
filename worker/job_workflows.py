"""What a handler's job does with batches: ``job.put_in_batch``, ``job.batch``,
``job.batch_id`` (docs/workflows.md#batches). A mixin of :class:`Job`: it
reads the job's fields and reaches the daemon through the job's services.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from tubeworker.envelope import BatchRef, Step

if TYPE_CHECKING:
    from tubeworker.batches.ops import Exchange

__all__ = ["JobWorkflows"]


def _batch_body(
    make_envelope: Callable[..., bytes],
    task: str,
    payload: Any,
    id: str | None,
    secret: Any,
    ref: BatchRef,
) -> bytes:
    return make_envelope(task, payload, id=id, secret=secret, batch=ref)


class JobWorkflows:
    """Batches, for :class:`tubeworker.job.Job` (which holds these fields)."""

    __slots__ = ()
    tube: str
    batch_ref: BatchRef | None

    def _need_services(self, what: str) -> Any:  # Job's, which says why there are none
        raise NotImplementedError

    @property
    def batch_id(self) -> str | None:
        """The id of the batch this job is in (``tubeworker batch ID``), None if in none."""
        return None if self.batch_ref is None else self.batch_ref.id

    async def put_in_batch(
        self,
        task: str,
        payload: Any = None,
        *,
        tube: str | None = None,
        priority: int = 1024,
        ttr: int = 60,
        id: str | None = None,
        secret: Any = None,
    ) -> int:
        """Put a job into this job's own batch (a child): it is counted before this job
        ends, so the batch cannot complete while this job still adds to it. It goes to
        the batch's server and starts at once; returns its id. A failure raises (the
        handler fails and runs again: a child it had added may then be put twice, with
        the same ``id``)."""
        from tubeworker.batches.ops import add_job
        from tubeworker.producer import InvalidJob, make_envelope

        ref = self.batch_ref
        if ref is None:
            raise InvalidJob("job.put_in_batch(): this job is in no batch")
        make = partial(_batch_body, make_envelope, task, payload, id, secret)
        run = self._batch_exchange("put_in_batch")
        exchange = add_job(ref, tube or self.tube, make, priority=priority, ttr=ttr)
        job_id: int = await run(exchange)
        return job_id

    async def batch(
        self,
        *,
        on_success: Step | None = None,
        on_complete: Step | None = None,
        on_death: Step | None = None,
        retention: int = 7 * 24 * 3600,
        description: str = "",
    ) -> Any:
        """Open a new batch on this job's server, from a handler: ``async with await
        job.batch(on_complete=Step(...)) as b: await b.enqueue(...)`` (see
        ``Producer.batch``; an ``AsyncBatch``). It is a batch of its own: this job's
        batch, if any, does not wait for it."""
        from tubeworker.producer import make_envelope
        from tubeworker.producing.batches import AsyncBatch, opening

        run = self._batch_exchange("batch")
        opened = await run(
            opening(on_success, on_complete, on_death, retention=retention, description=description)
        )

        def make(task: str, payload: Any, id: str | None, secret: Any, ref: BatchRef) -> bytes:
            return make_envelope(task, payload, id=id, secret=secret, batch=ref)

        return AsyncBatch(opened, "this job's server", make, run)

    def _batch_exchange(self, what: str) -> Callable[[Exchange[Any]], Awaitable[Any]]:
        run = getattr(self._need_services(what), "batch_exchange", None)
        if run is None:
            raise RuntimeError(
                f"job.{what}() is not available here (a compute-profile handler, or the "
                "test kit: it needs the daemon's connection to the job's server)"
            )
        return run  # type: ignore[no-any-return]
