"""What handler authors see: `handler`, `Job`, and the `Retry` and `Bury` outcomes."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, TypeVar

import structlog

from tubeworker.contracts import Contract, make_contract
from tubeworker.envelope import BatchRef, Step
from tubeworker.job_puts import JobPuts
from tubeworker.job_workflows import JobWorkflows
from tubeworker.schedule import ScheduleRef, parse_fire_id

if TYPE_CHECKING:
    import httpx


__all__ = [
    "Bury",
    "Duplicate",
    "HandlerFunc",
    "HandlerSpec",
    "Job",
    "JobRecord",
    "Middleware",
    "Retry",
    "Verdict",
    "attach_services",
    "handler",
    "services_for_records",
    "spec_of",
]


class Retry(Exception):
    """Raise to release the job for another attempt.

    ``delay`` in seconds (rounded up to whole seconds, at least 1); None uses the pool's
    exponential backoff. It counts as an attempt: past ``max_attempts`` the job is buried.
    """

    def __init__(self, delay: float | None = None, reason: str | None = None) -> None:
        if delay is not None and not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"Retry delay must be a finite number >= 0, got {delay}")
        self.delay = delay
        self.reason = reason
        super().__init__(reason or "retry requested")


class Bury(Exception):
    """Raise to bury the job at once (no more attempts); ``reason`` is logged with its id."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Duplicate(Exception):
    """Raise when the job's work is already done (an idempotency key seen before): the job
    is deleted without doing it again, counted as cause ``duplicate``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _JobServices(Protocol):
    """What the lane that owns a job offers it (kept abstract: job.py sits below the lane)."""

    async def touch(self) -> None: ...

    async def put(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int: ...

    @property
    def http(self) -> httpx.AsyncClient: ...

    def api(
        self,
        name: str | None = None,
        *,
        host: str | None = None,
        caller_fault: Callable[[Exception], bool] | None = None,
    ) -> Any: ...


# The services of jobs rebuilt from their records (Job.from_record) here and now: set around
# each handler call in a compute-profile worker process, so that job.put() works there.
_record_services: ContextVar[_JobServices | None] = ContextVar(
    "tubeworker_record_services", default=None
)


@contextmanager
def services_for_records(services: _JobServices | None) -> Iterator[None]:
    """Jobs rebuilt from records (:meth:`Job.from_record`) inside this block get
    ``services``: how a compute-profile worker process gives its handlers ``job.put()``."""
    token = _record_services.set(services)
    try:
        yield
    finally:
        _record_services.reset(token)


def attach_services(job: Job, services: _JobServices) -> None:
    """Give ``job`` what ``touch``, ``put``, ``http`` and ``api`` reach (its lane does, once
    dispatch has built the job; the test kit gives its recorder)."""
    job._services = services


_NO_SETTINGS: Mapping[str, Any] = MappingProxyType({})


class Job(JobPuts, JobWorkflows):
    """One reserved job, as a handler sees it.

    ``body`` is the raw bytes. For JSON-envelope pools, ``task`` and ``payload`` are the
    envelope's; for pools bound to one handler they are None (use ``body`` or ``json()``).
    """

    __slots__ = (
        "_added",
        "_log",
        "_log_parent",
        "_services",
        "attempt",
        "batch_ref",
        "body",
        "id",
        "id_key",
        "max_attempts",
        "payload",
        "priority",
        "secret",
        "steps",
        "task",
        "ttr",
        "tube",
    )

    def __init__(
        self,
        *,
        id: int,
        tube: str,
        body: bytes,
        priority: int,
        ttr: int,
        attempt: int,
        max_attempts: int,
        task: str | None = None,
        payload: Any = None,
        log: structlog.typing.FilteringBoundLogger | None = None,
        services: _JobServices | None = None,
        id_key: str | None = None,
        steps: Sequence[Step] = (),
        secret: Any = None,
        batch: BatchRef | None = None,
    ) -> None:
        self.id = id
        #: The envelope's ``id``: the producer's idempotency key (None when it has none).
        self.id_key = id_key
        self.tube = tube
        self.body = body
        self.priority = priority
        self.ttr = ttr
        #: 1 on the first run; failures (releases and TTR timeouts) add one.
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.task = task
        self.payload = payload
        #: The envelope's secret, opened (docs/security.md): None when it has none. Never
        #: logged, never shown: keep it out of log lines and exceptions.
        self.secret = secret
        self._log_parent = log
        self._log: structlog.typing.FilteringBoundLogger | None = None
        self._services = services
        #: The chain's next steps (the envelope's "then", and what ``then()`` added first):
        #: the first is put, carrying the others, when this job succeeds.
        self.steps: list[Step] = list(steps)
        self._added = 0
        #: Its place in a batch (the envelope's ``batch``), None when it is in none.
        self.batch_ref = batch

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """A structlog logger bound to this job (made on first use: most handlers never log)."""
        if self._log is None:
            parent = self._log_parent or structlog.get_logger("tubeworker")
            self._log = parent.bind(job_id=self.id, tube=self.tube, task=self.task)
        return self._log

    @property
    def schedule(self) -> ScheduleRef | None:
        """The ``[[schedule]]`` this job was fired by and the fire time it stands for (UTC),
        read from its envelope id ``schedule:NAME:FIRE_TIME``; None for other jobs."""
        return parse_fire_id(self.id_key)

    def __repr__(self) -> str:
        return f"<Job {self.id} tube={self.tube!r} task={self.task!r} attempt={self.attempt}>"

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not)."""
        return json.loads(self.body)

    def data(self) -> Any:
        """What the producer sent: the envelope's ``payload``, or, in a pool bound to this
        handler (no envelope), the body parsed as JSON (raises ValueError when it is not)."""
        return self.payload if self.task is not None else self.json()

    def then(
        self,
        task: str,
        payload: Any = None,
        *,
        tube: str | None = None,
        id: str | None = None,
        priority: int = 1024,
        delay: int = 0,
        ttr: int = 60,
    ) -> None:
        """Put this step when the job succeeds, before it is deleted (a crash in between
        puts it twice, never loses it): it runs after this job, and the rest of the chain
        after it. Several calls: in order, before the chain's own next steps. ``tube``:
        this job's by default. Not in compute-profile handlers (their job is a copy)."""
        if self._services is None:
            raise RuntimeError(
                "job.then() is not available here (a compute-profile handler "
                "or a job built by hand): give the chain's steps at put"
            )
        step = Step(tube or self.tube, task, payload, id, priority, delay, ttr)
        self.steps.insert(self._added, step)
        self._added += 1

    def _need_services(self, what: str) -> _JobServices:
        if self._services is None:
            raise RuntimeError(
                f"job.{what}() is not available here (compute-profile handlers run in "
                "another process, and jobs built by hand have no connection)"
            )
        return self._services

    async def touch(self) -> None:
        """Reset the job's TTR on the connection that reserved it."""
        await self._need_services("touch").touch()

    @property
    def settings(self) -> Mapping[str, Any]:
        """The options of this job's handler in the daemon's config (``[settings.NAME]``,
        NAME as the handler is registered); empty when it has none. Secrets belong in
        files named here, not in the config itself."""
        settings = getattr(self._services, "settings", None)
        return settings if settings is not None else _NO_SETTINGS

    @property
    def http(self) -> httpx.AsyncClient:
        """The process's shared ``httpx.AsyncClient`` (connection pooling across jobs).
        Every request it makes is reported to flow control under the API its host belongs
        to (``[api.NAME] hosts``)."""
        return self._need_services("http").http

    def api(
        self,
        name: str | None = None,
        *,
        host: str | None = None,
        caller_fault: Callable[[Exception], bool] | None = None,
    ) -> Any:
        """Report a call to an external API that does not go through ``job.http``::

            async with job.api("smtp"):   # or a plain ``with``
                await send_mail(...)

        Leaving the block normally is a success; an exception is a failure of the API
        (it still propagates), unless ``caller_fault(exc)`` says the request was at fault
        (a 4xx, say), which counts as an answer. ``host=`` instead of a name: the API that
        host belongs to (``[api.NAME] hosts``), as for requests through ``job.http``.
        Enough failures open the API's breaker: its jobs then wait, across the process
        (and, with ``pause_tubes``, across the fleet)."""
        if (name is None) == (host is None):
            raise TypeError("job.api() takes an API name or host=, not both")
        return self._need_services("api").api(name, host=host, caller_fault=caller_fault)

    @property
    def record(self) -> JobRecord:
        """The job as plain data: what crosses to a worker process."""
        return JobRecord(
            id=self.id,
            tube=self.tube,
            body=self.body,
            priority=self.priority,
            ttr=self.ttr,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            task=self.task,
            payload=self.payload,
            id_key=self.id_key,
        )

    @classmethod
    def from_record(cls, record: JobRecord) -> Job:
        """A job with no connection (``touch``, ``put`` and ``http`` say so), e.g. in a
        compute-profile worker process; inside :func:`services_for_records`, with those
        services (there: ``put``)."""
        job = cls(
            id=record.id,
            tube=record.tube,
            body=record.body,
            priority=record.priority,
            ttr=record.ttr,
            attempt=record.attempt,
            max_attempts=record.max_attempts,
            task=record.task,
            payload=record.payload,
            services=_record_services.get(),
            id_key=record.id_key,
        )
        job._added = -1  # a copy: steps added here would never reach the daemon
        return job

    def __reduce__(self) -> tuple[Callable[[JobRecord], Job], tuple[JobRecord]]:
        # Pickled as its record, by construction: the lane's connection and logger (which
        # holds the process's log stream) never cross a process boundary.
        return (Job.from_record, (self.record,))


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job's data and nothing else: safe to pickle, compare and keep."""

    id: int
    tube: str
    body: bytes
    priority: int
    ttr: int
    attempt: int
    max_attempts: int
    task: str | None = None
    payload: Any = None
    id_key: str | None = None


Verdict = Literal["done", "retry", "bury", "return"]


class Middleware:
    """Hooks around every handler run, for error trackers, tracing and per-handler metrics.

    Subclass it, override what you need, and register a factory (the class, or a function
    taking the config's options as keywords) in entry-point group
    ``tubeworker.middleware``; enable it by name in ``[middleware] enabled``. Hooks run in
    the daemon's event loop (also for compute-profile handlers), in the order enabled for
    ``before`` and the reverse for ``on_error`` and ``after``. An exception from a hook is
    logged and ignored: middleware never decides a job's fate.

    ``verdict``: ``"done"`` (deleted), ``"retry"`` (released), ``"bury"`` or ``"return"``
    (handed back to beanstalkd with no outcome: drain deadline, lost connection).
    """

    async def before(self, job: Job) -> None:
        """The handler is about to run."""

    async def on_error(self, job: Job, error: BaseException, verdict: Verdict, reason: str) -> None:
        """The handler raised (``Retry`` and ``Bury`` included) or overran its deadline
        (``error`` is a ``TimeoutError`` then)."""

    async def after(self, job: Job, verdict: Verdict, reason: str | None) -> None:
        """The run is over and its verdict decided (before beanstalkd confirms it)."""


HandlerFunc: TypeAlias = Callable[[Job], Awaitable[None]] | Callable[[Job], None]
F = TypeVar("F", bound=Callable[..., Any])

_SPEC_ATTRIBUTE = "__tubeworker_handler__"


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A handler and its options. Built by :func:`handler`, or with defaults."""

    func: Callable[..., Any]
    name: str | None = None
    apis: tuple[str, ...] = ()
    timeout: float | None = None  # None: the job's TTR minus the margin
    max_attempts: int | None = None  # None: the pool's
    backoff_base: float | None = None
    backoff_cap: float | None = None
    long_running: bool = False  # touch the job on its connection while it runs
    contract: Contract | None = None  # its payload type and version (contracts.py)
    # At most one job per key runs at a time, fleet-wide: a payload path, or job → key.
    unique: str | Callable[[Job], Any] | None = None
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.func))


def handler(
    name: str | None = None,
    *,
    apis: tuple[str, ...] | list[str] = (),
    timeout: float | None = None,
    max_attempts: int | None = None,
    backoff: tuple[float, float] | None = None,
    long_running: bool = False,
    payload: Any = None,
    version: int = 1,
    upcast: Mapping[int, Callable[[Any], Any]] | None = None,
    unique: str | Callable[[Job], Any] | None = None,
) -> Callable[[F], F]:
    """Declare a handler's options. Register it with an entry point in group
    ``tubeworker.handlers``; the entry point's name is the task name.

    - ``apis``: external APIs it calls (for shared failure tracking).
    - ``timeout``: seconds before it is cancelled and the job retried. Without
      ``long_running`` it is capped at the job's TTR minus a margin.
    - ``max_attempts``, ``backoff=(base, cap)``: override the pool's retry policy.
    - ``long_running``: the job is touched on its connection while the handler runs, so
      it may run longer than its TTR (up to ``timeout``, if given).
    - ``payload``: the payload's type (a pydantic model, dataclass, ``TypedDict``…): a job
      whose payload does not validate is buried at once (cause ``schema``), and the
      handler gets the validated object as ``job.payload``; puts of this task from this
      process are checked too.
    - ``version``: the payload version this handler produces and accepts (the envelope's
      ``"v"``; absent means 1). A newer job is left for a newer worker, no attempt burned;
      an older one goes through ``upcast``: ``{1: v1_to_v2, 2: v2_to_v3}``, each a function
      from one version's payload (JSON data) to the next's.
    - ``unique``: at most one job with the same key runs at a time across the fleet: a
      payload path (``"payload.order_id"``, dots for nesting) or a function of the job
      returning the key. Jobs without the field run unlocked.
    """
    contract = make_contract(payload, version, upcast)
    if not (unique is None or callable(unique)) and not (
        isinstance(unique, str) and unique.startswith("payload.")
    ):
        raise ValueError(
            f'unique must be a path like "payload.order_id" or a function, got {unique!r}'
        )
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")

    def decorate(func: F) -> F:
        if not callable(func):
            raise TypeError(f"@handler needs a function, got {func!r}")
        spec = HandlerSpec(
            func=func,
            name=name,
            apis=tuple(apis),
            timeout=timeout,
            max_attempts=max_attempts,
            backoff_base=backoff[0] if backoff else None,
            backoff_cap=backoff[1] if backoff else None,
            long_running=long_running,
            contract=contract,
            unique=unique,
        )
        setattr(func, _SPEC_ATTRIBUTE, spec)
        return func

    return decorate


def spec_of(func: Callable[..., Any]) -> HandlerSpec:
    """The options ``@handler`` attached to ``func``, or defaults for a plain function."""
    spec = getattr(func, _SPEC_ATTRIBUTE, None)
    if isinstance(spec, HandlerSpec):
        return spec
    return HandlerSpec(func=func)
