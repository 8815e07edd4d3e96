"""What a handler's job puts now: ``job.put`` and ``job.put_sync``, a follow-up job on
this job's server first (``job.then``, a chain's next step put when the job succeeds, is
Job's own). A mixin of :class:`Job`: it reaches the daemon through the job's services.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from typing import Any, Protocol, runtime_checkable

__all__ = ["JobPuts"]


class _Puts(Protocol):
    """What the lane that owns a job offers it to put with (a part of its services)."""

    async def put(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int: ...


@runtime_checkable
class _SyncPuts(Protocol):
    """Services that can also put without an event loop (a compute-profile worker process)."""

    def put_sync(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int: ...


def _put_body(
    body: bytes | str | Mapping[str, Any] | None,
    task: str | None,
    payload: Any,
    id: str | None = None,
    secret: Any = None,
) -> bytes:
    """The body of ``job.put()``: ``body`` as given (a dict as JSON), or the envelope of
    ``task`` and ``payload``."""
    from tubeworker.producer import InvalidJob, make_envelope  # beside us; loaded on first put

    if task is not None:
        if body is not None:
            raise InvalidJob("job.put(): give a body or task= (with payload=), not both")
        return make_envelope(task, payload, id=id, secret=secret)
    if id is not None or secret is not None:
        raise InvalidJob("job.put(): id= and secret= need task= (they are envelope members)")
    if payload is not None:
        raise InvalidJob("job.put(): payload= needs task= (the envelope's task name)")
    if body is None:
        raise InvalidJob("job.put() needs a body, or task= (and payload=) for an envelope")
    if isinstance(body, Mapping):
        return json.dumps(body, separators=(",", ":")).encode()
    if isinstance(body, str):
        return body.encode()
    return body


class JobPuts:
    """Follow-up jobs, for :class:`tubeworker.job.Job` (which holds these fields)."""

    __slots__ = ()
    tube: str

    def _need_services(self, what: str) -> _Puts:  # Job's, which says why there are none
        raise NotImplementedError

    async def put(
        self,
        body: bytes | str | Mapping[str, Any] | None = None,
        *,
        task: str | None = None,
        payload: Any = None,
        tube: str | None = None,
        priority: int = 1024,
        delay: int = 0,
        ttr: int = 60,
        id: str | None = None,
        secret: Any = None,
    ) -> int:
        """Put a follow-up job and return its id: ``body`` (bytes, str, or a dict sent as
        JSON), or with ``task=`` (and ``payload=``, ``id=``) the envelope tubeworker
        dispatches on; the payload of a task whose handler this daemon loaded is validated
        against its declared type first (``PayloadInvalid``). ``tube``: this job's by
        default.

        It goes to this job's server; if that one cannot store it (down, draining, out of
        memory), to the daemon's other servers in their configured order (``servers``),
        where the workers watching that server process it. Errors:
        :mod:`tubeworker.producer`'s (``InvalidJob``, ``NoServerAvailable``, …)."""
        data = _put_body(body, task, payload, id, secret)
        return await self._need_services("put").put(
            data, tube=tube or self.tube, priority=priority, delay=delay, ttr=ttr
        )

    def put_sync(
        self,
        body: bytes | str | Mapping[str, Any] | None = None,
        *,
        task: str | None = None,
        payload: Any = None,
        tube: str | None = None,
        priority: int = 1024,
        delay: int = 0,
        ttr: int = 60,
        id: str | None = None,
        secret: Any = None,
    ) -> int:
        """:meth:`put` for sync handlers, which cannot ``await``: in a worker process
        (compute profile: the first of the daemon's servers that stores it, in their
        configured order) or in a thread (io profile: as :meth:`put`). Blocks until the
        job is stored; returns its id."""
        data = _put_body(body, task, payload, id, secret)
        services = self._need_services("put_sync")
        tube = tube or self.tube
        if isinstance(services, _SyncPuts):
            return services.put_sync(data, tube=tube, priority=priority, delay=delay, ttr=ttr)
        import trio  # only sync handlers in threads get here

        if trio.lowlevel.in_trio_run():
            raise RuntimeError("job.put_sync() blocks: in an async handler, await job.put()")
        put = partial(services.put, data, tube=tube, priority=priority, delay=delay, ttr=ttr)
        return trio.from_thread.run(put)
