"""Run a handler in a unit test, with no beanstalkd: tubeworker's testing mode.

::

    from tubeworker.testing import run

    def test_a_missing_user_is_buried() -> None:
        outcome = run(send_welcome, payload={"user_id": 0}, http=mailer_stub)
        assert outcome.verdict == "bury"
        assert "does not exist" in outcome.reason

In an async test (pytest-trio), ``await run_async(...)`` takes the same arguments; under
pytest-trio's ``autojump_clock`` a handler's timeout passes in virtual time.

**The outcome is the daemon's own decision**, made by the daemon's own code, not a copy of
it: the job is planned by dispatch (``tubeworker.runtime.dispatch.plan_job``: a body that
is no envelope, or an attempt past ``max_attempts``, is buried without running, and the
handler's ``@handler(max_attempts=, backoff=)`` replace the pool's), its deadline is the
lane's (``handler_timeout``: the handler's or the pool's timeout, never past TTR minus
``ttr_margin`` unless ``long_running``), and the handler runs through the runner
(``run_job``, the only code that catches a handler's exceptions) with the retry policy
that picks the release delay: ``Retry(delay=...)``, else the backoff with full jitter, and
a burial once the last attempt failed.

**What the job did on the way is recorded**: each ``job.put`` (and a chain's next step,
put when the job succeeds) (checked as the wire would
check it: tube name, priority, delay, TTR), each ``job.touch()``, each request made
through ``job.http`` (answered by the transport you pass, e.g. ``httpx.MockTransport``),
and every call flow control would count (``job.http`` requests by their host, through the
daemon's tracking transport, and ``job.api(name)`` blocks).

Not simulated: flow control holding a job while its API is open (one run here is one run
of the handler), touches the lane sends for ``long_running`` handlers, and beanstalkd
itself (``job.put`` returns made-up ids). Sync handlers run in a thread as in the ``io``
profile; ``profile="compute"`` runs them as a compute pool does (a job with no
connection, crossing to the worker as pickled data) but in a thread of this process.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import pickle
import random
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import httpx
import trio

from tubeworker.beanstalk import protocol as p
from tubeworker.chains import next_put
from tubeworker.config import Config, Overrides, load_config
from tubeworker.contracts import plain
from tubeworker.envelope import BadEnvelope, decode_envelope, encode_envelope
from tubeworker.flow import (
    CALLER,
    ApiSettings,
    ApiTracker,
    Caller,
    CallOutcome,
    TrackedCall,
    TrackingTransport,
    call_api,
)
from tubeworker.job import HandlerSpec, Middleware, Verdict, attach_services, spec_of
from tubeworker.runtime.dispatch import DispatchRules, Plan, effective_policy, plan_job
from tubeworker.runtime.invoke import run_job, verdict_of
from tubeworker.runtime.outcome import BuryJob, Cause, DeleteJob, ReleaseJob, ReturnJob
from tubeworker.runtime.policy import RetrySettings
from tubeworker.runtime.run import handler_timeout
from tubeworker.security.keys import parse_keys
from tubeworker.security.secrets import seal

__all__ = ["ApiCall", "HttpStub", "Outcome", "Put", "run", "run_async"]

HttpStub: TypeAlias = (
    httpx.AsyncBaseTransport
    | Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]
)
"""What answers ``job.http``: a transport (``httpx.MockTransport``, or a real
``httpx.AsyncHTTPTransport()`` for a local server), or a function of the request, which
is wrapped in ``httpx.MockTransport``. The transport is closed when the run ends."""

_UNSET: Any = object()
_FIRST_PUT_ID = 1000  # ids handed out to job.put(), counting up from here


@dataclass(frozen=True, slots=True)
class Put:
    """A job the handler put with ``job.put``: what the daemon would send to beanstalkd."""

    id: int
    tube: str
    body: bytes
    priority: int
    delay: int
    ttr: int

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def task(self) -> str | None:
        """The envelope's task, or None when the body is not an envelope."""
        return self._envelope()[0]

    @property
    def payload(self) -> Any:
        """The envelope's payload, or None when the body is not an envelope."""
        return self._envelope()[1]

    def _envelope(self) -> tuple[str | None, Any]:
        try:
            return decode_envelope(self.body)
        except BadEnvelope:
            return None, None


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One call flow control counted: ``api`` is the API's name (a request's host name,
    or the ``[api.NAME]`` its host belongs to), ``outcome`` how the breaker counts it."""

    api: str
    outcome: Literal["success", "failure", "caller_fault"]
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the daemon would do with the job after this run, and what the run did.

    ``verdict``: ``"done"`` (deleted), ``"retry"`` (released after ``delay`` whole
    seconds) or ``"bury"``. ``cause`` is the log line's cause (``completed``,
    ``handler_error``, ``handler_retry``, ``timeout``, ``handler_bury``,
    ``attempts_exhausted``, ``bad_body``, ...); ``reason`` its words. ``error`` is what
    the handler raised (a ``TimeoutError`` when it overran its deadline); ``ran`` is False
    when the job was buried without running (a bad body, no attempt left).
    """

    verdict: Verdict
    cause: str
    reason: str
    delay: int | None
    attempt: int
    max_attempts: int
    timeout: float | None  # the deadline the handler ran under, in seconds (None: none)
    ran: bool
    error: BaseException | None
    puts: tuple[Put, ...]
    touches: int
    requests: tuple[httpx.Request, ...]
    api_calls: tuple[ApiCall, ...]

    @property
    def done(self) -> bool:
        return self.verdict == "done"

    @property
    def retried(self) -> bool:
        return self.verdict == "retry"

    @property
    def buried(self) -> bool:
        return self.verdict == "bury"

    @property
    def timed_out(self) -> bool:
        """The handler overran its deadline (released, or buried on its last attempt)."""
        return self.cause == "timeout"


# --------------------------------------------------------------------------- running


def run(
    handler: Callable[..., Any],
    *,
    payload: Any = _UNSET,
    body: bytes | str | None = None,
    task: str | None = None,
    version: int = 1,
    id: str | None = None,
    secret: Any = None,
    attempt: int = 1,
    max_attempts: int | None = None,
    backoff: tuple[float, float] | None = None,
    timeout: float | None = None,
    ttr: int = 60,
    ttr_margin: float | None = None,
    priority: int = 1024,
    tube: str = "default",
    job_id: int = 1,
    http: HttpStub | None = None,
    apis: Mapping[str, Sequence[str]] | None = None,
    middleware: Sequence[Middleware] = (),
    profile: Literal["io", "compute"] = "io",
    rng: random.Random | None = None,
    settings: Mapping[str, Any] | None = None,
    clock: trio.abc.Clock | None = None,
) -> Outcome:
    """Run ``handler`` once on a job, in a Trio loop of its own; see :func:`run_async`.

    ``clock``: the loop's clock, e.g. ``trio.testing.MockClock(autojump_threshold=0)`` to
    let an async handler's timeout pass in virtual time (not with sync handlers: their
    thread is not the loop's to wait for).
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        pass  # not inside Trio: as it should be
    else:
        raise RuntimeError(
            "tubeworker.testing.run() starts its own Trio loop: in an async test, "
            "await tubeworker.testing.run_async(...) instead"
        )
    call = functools.partial(
        run_async,
        handler,
        payload=payload,
        body=body,
        task=task,
        version=version,
        id=id,
        secret=secret,
        attempt=attempt,
        max_attempts=max_attempts,
        backoff=backoff,
        timeout=timeout,
        ttr=ttr,
        ttr_margin=ttr_margin,
        priority=priority,
        tube=tube,
        job_id=job_id,
        http=http,
        apis=apis,
        middleware=middleware,
        profile=profile,
        rng=rng,
        settings=settings,
    )
    result: Outcome = trio.run(call, clock=clock)
    return result


async def run_async(
    handler: Callable[..., Any],
    *,
    payload: Any = _UNSET,
    body: bytes | str | None = None,
    task: str | None = None,
    version: int = 1,
    id: str | None = None,
    secret: Any = None,
    attempt: int = 1,
    max_attempts: int | None = None,
    backoff: tuple[float, float] | None = None,
    timeout: float | None = None,
    ttr: int = 60,
    ttr_margin: float | None = None,
    priority: int = 1024,
    tube: str = "default",
    job_id: int = 1,
    http: HttpStub | None = None,
    apis: Mapping[str, Sequence[str]] | None = None,
    middleware: Sequence[Middleware] = (),
    profile: Literal["io", "compute"] = "io",
    rng: random.Random | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Outcome:
    """Run ``handler`` once on a job and return what the daemon would do with it.

    The job: ``payload=`` makes a JSON envelope ``{"task": task, "payload": payload}``
    dispatched by its task (``task`` defaults to the ``@handler`` name or the function's
    name); ``body=`` is a raw body, as in a pool bound to the handler (``job.task`` and
    ``job.payload`` are None), or, with ``task=`` too, a body dispatched as an envelope
    (to see how the daemon treats a malformed one). ``payload`` may be a model instance
    (written as its JSON data); ``version`` is the envelope's ``"v"``: a handler with a
    declared payload type gets it upcast and validated (a payload that does not validate:
    verdict ``bury``, cause ``schema``; a version newer than the handler's: verdict
    ``retry``, cause ``newer_version``, not run, no attempt counted); ``id`` is its
    idempotency key (``job.id_key``); ``secret`` its sealed secret (``job.secret``), sealed
    and opened as in the daemon under a key made for the run. ``attempt`` is this
    run's number (1-based) and ``ttr``, ``priority``, ``tube`` and ``job_id`` are the job's.

    The pool: ``max_attempts``, ``backoff=(base, cap)`` and ``timeout`` are the pool's
    settings (``[pool.retry]``, ``[[pool]] timeout``; the handler's own ``@handler``
    options win, as in the daemon), ``ttr_margin`` the worker's; unset, the config's
    defaults. ``profile`` is the pool's profile (it matters for sync handlers only).

    The world: ``http`` answers ``job.http`` (without it a request raises RuntimeError);
    ``apis`` declares APIs by their hosts (``{"partner": ["api.partner.example"]}``, as
    ``[api.NAME] hosts``); ``middleware`` wraps the run as the daemon's would; ``rng``
    draws the backoff's jitter (pass a seeded ``random.Random`` for a fixed delay);
    ``settings`` is what ``job.settings`` gives (the handler's ``[settings.NAME]``).
    """
    defaults = _defaults()
    pool = defaults.pools[0]
    spec = spec_of(handler)
    policy = RetrySettings(
        max_attempts if max_attempts is not None else pool.retry.max_attempts,
        backoff[0] if backoff is not None else pool.retry.backoff_base,
        backoff[1] if backoff is not None else pool.retry.backoff_cap,
        pool.retry.redelivery_limit,
    )
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    job = _JobData(payload, body, task, attempt, ttr, priority, tube, job_id, version, id, secret)
    plan = plan_job(job_id, *job.dispatch(spec, policy))
    recorder = _Recorder(http, apis, job_id)
    recorder.settings = settings
    try:
        if not isinstance(plan, Plan):  # dispatch decided it: the handler never runs
            budget = effective_policy(spec, policy).max_attempts
            return recorder.outcome(plan, attempt, budget, None, ran=False)
        if plan.too_new is not None:  # left for a newer worker, as a delayed copy
            later = ReleaseJob(
                pool.retry.newer_version_delay, priority, Cause.NEWER_VERSION, plan.too_new
            )
            return recorder.outcome(later, attempt, plan.budget.max_attempts, None, ran=False)
        margin = ttr_margin if ttr_margin is not None else defaults.ttr_margin
        deadline = handler_timeout(plan.spec, timeout, plan.job.ttr, margin)
        attach_services(plan.job, recorder)  # as the lane gives a job its own services
        recorder.caller = Caller(plan.handler, tuple(sorted(set(plan.spec.apis))))
        declared = CALLER.set(recorder.caller if plan.spec.apis else None)  # as the lane does
        try:
            decided = await run_job(
                plan.job,
                plan.spec,
                plan.budget,
                plan.policy,
                timeout=deadline,
                profile=profile,
                limiter=trio.CapacityLimiter(1),
                processes=_ThreadProcesses() if profile == "compute" else None,
                middleware=(*middleware, recorder.errors),
                rng=rng,
            )
            # A chain's next step, put before the delete as the daemon does (runs.py).
            if plan.job.steps and isinstance(decided, DeleteJob):
                step = next_put(plan.job.steps)
                assert step is not None
                await recorder.put(
                    step.body,
                    tube=step.tube,
                    priority=step.priority,
                    delay=step.delay,
                    ttr=step.ttr,
                )
        finally:
            CALLER.reset(declared)
    finally:
        await recorder.aclose()
    return recorder.outcome(
        decided, plan.budget.attempt, plan.budget.max_attempts, deadline, ran=True
    )


# --------------------------------------------------------------------------- the job


@functools.cache
def _defaults() -> Config:
    """The config a worker has with no file, no environment and one tube: its defaults."""
    return load_config(env={}, overrides=Overrides(tubes=("default",)))


@dataclass(frozen=True, slots=True)
class _JobData:
    payload: Any
    body: bytes | str | None
    task: str | None
    attempt: int
    ttr: int
    priority: int
    tube: str
    job_id: int
    version: int = 1
    id: str | None = None
    secret: Any = None

    def dispatch(
        self, spec: HandlerSpec, policy: RetrySettings
    ) -> tuple[bytes, p.JobStats, DispatchRules]:
        """The body, the ``stats-job`` beanstalkd would report for this attempt, and the
        pool's dispatch rules: what ``plan_job`` decides by."""
        if (self.payload is _UNSET) == (self.body is None):
            raise TypeError("pass either payload= (a JSON envelope's payload) or body= (raw)")
        if self.attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {self.attempt}")
        if not 1 <= self.ttr <= p.MAX_INT:
            raise ValueError(f"ttr must be 1..{p.MAX_INT}, got {self.ttr}")
        p.validate_tube_name(self.tube)
        name = self.task or spec.name or str(getattr(spec.func, "__name__", "handler"))
        if self.payload is not _UNSET:
            raw = encode_envelope(name, plain(self.payload), id=self.id, v=self.version)
        else:
            raw = self.body.encode() if isinstance(self.body, str) else bytes(self.body or b"")
        keys = None
        if self.secret is not None:  # sealed as a producer seals it, under a key of the run
            if self.payload is _UNSET:
                raise TypeError("secret= needs payload= (it is an envelope member)")
            keys = parse_keys(f"test-kit: {base64.b64encode(os.urandom(32)).decode()}")
            envelope = json.loads(raw)
            envelope["secret"] = seal(self.secret, name, keys)
            raw = json.dumps(envelope).encode()
        if self.payload is not _UNSET or self.task is not None:  # an envelope pool
            rules = DispatchRules(
                policy, lookup=lambda wanted: spec if wanted == name else None, encryption=keys
            )
        else:  # a pool bound to this handler: the body as it is
            rules = DispatchRules(policy, lookup=lambda _: None, bound=spec, bound_name=name)
        # Counters as beanstalkd keeps them: each earlier attempt ended in a release.
        stats = p.JobStats(
            id=self.job_id,
            tube=self.tube,
            state="reserved",
            pri=self.priority,
            age=0,
            delay=0,
            ttr=self.ttr,
            time_left=self.ttr,
            file=0,
            reserves=self.attempt,
            timeouts=0,
            releases=self.attempt - 1,
            buries=0,
            kicks=0,
        )
        return raw, stats, rules


# --------------------------------------------------------------------------- the recorder


_OUTCOMES: Mapping[CallOutcome, Literal["success", "failure", "caller_fault"]] = {
    CallOutcome.SUCCESS: "success",
    CallOutcome.FAILURE: "failure",
    CallOutcome.CALLER_FAULT: "caller_fault",
}


class _RecordingTracker(ApiTracker):
    """The daemon's tracker, keeping a list of what it was told."""

    def __init__(self, apis: Mapping[str, ApiSettings]) -> None:
        super().__init__(apis, clock=trio.current_time)
        self.calls: list[ApiCall] = []

    def report(
        self,
        api: str,
        outcome: CallOutcome,
        *,
        retry_after: float | None = None,
        started_at: float | None = None,
    ) -> tuple[Any, ...]:
        self.calls.append(ApiCall(api, _OUTCOMES[outcome], retry_after))
        return super().report(api, outcome, retry_after=retry_after, started_at=started_at)


class _ErrorRecorder(Middleware):
    """Keeps what the handler raised, as the runner tells middleware."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    async def on_error(self, job: Any, error: BaseException, verdict: Verdict, reason: str) -> None:
        self.error = error


class _RecordingTransport(httpx.AsyncBaseTransport):
    """Keeps every request, then lets the stub answer it."""

    def __init__(self, inner: httpx.AsyncBaseTransport, requests: list[httpx.Request]) -> None:
        self._inner = inner
        self._requests = requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._requests.append(request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _NoHttp(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError(
            f"job.http has no stub in this test ({request.method} {request.url}): pass "
            "http=httpx.MockTransport(...) (or a function of the request) to run()"
        )


def _transport(http: HttpStub | None) -> httpx.AsyncBaseTransport:
    if http is None:
        return _NoHttp()
    if isinstance(http, httpx.AsyncBaseTransport):
        return http
    return httpx.MockTransport(http)


class _Recorder:
    """What ``job.touch/put/http/api`` reach in a test (the lane's side of a job)."""

    def __init__(
        self, http: HttpStub | None, apis: Mapping[str, Sequence[str]] | None, job_id: int
    ) -> None:
        settings = {name: ApiSettings(hosts=tuple(hosts)) for name, hosts in (apis or {}).items()}
        self.tracker = _RecordingTracker(settings)
        self.errors = _ErrorRecorder()
        self.puts: list[Put] = []
        self.touches = 0
        self.requests: list[httpx.Request] = []
        self._inner = _RecordingTransport(_transport(http), self.requests)
        self._client: httpx.AsyncClient | None = None
        self._next_id = max(_FIRST_PUT_ID, job_id + 1)
        self.settings: Mapping[str, Any] | None = None  # what job.settings gives
        self.caller: Caller | None = None  # the handler, for job.api's attribution

    async def touch(self) -> None:
        await trio.lowlevel.checkpoint()
        self.touches += 1

    async def put(self, body: bytes, *, tube: str, priority: int, delay: int, ttr: int) -> int:
        # The commands the daemon's producer sends, checked as they are before sending.
        p.Use(tube).wire()
        p.Put(body, priority, delay, ttr).wire()
        await trio.lowlevel.checkpoint()
        job_id, self._next_id = self._next_id, self._next_id + 1
        self.puts.append(Put(job_id, tube, bytes(body), priority, delay, ttr))
        return job_id

    @property
    def http(self) -> httpx.AsyncClient:
        """Made on first use, as the daemon's shared client is, with its tracking transport
        (and its 30 s default timeout); proxies from the environment are not used, so
        that every request reaches the stub."""
        if self._client is None:
            transport = TrackingTransport(self.tracker, self._inner)
            self._client = httpx.AsyncClient(transport=transport, timeout=30.0, trust_env=False)
        return self._client

    def api(
        self,
        name: str | None = None,
        *,
        host: str | None = None,
        caller_fault: Callable[[Exception], bool] | None = None,
    ) -> TrackedCall:
        return call_api(self.tracker, name, host, caller_fault, self.caller)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            if self._client is not None:
                await self._client.aclose()
            else:
                await self._inner.aclose()

    def outcome(
        self,
        decided: DeleteJob | ReleaseJob | BuryJob | ReturnJob,
        attempt: int,
        max_attempts: int,
        timeout: float | None,
        *,
        ran: bool,
    ) -> Outcome:
        return Outcome(
            verdict=verdict_of(decided),
            cause=decided.cause.value,
            reason=decided.reason,
            delay=decided.delay if isinstance(decided, ReleaseJob) else None,
            attempt=attempt,
            max_attempts=max_attempts,
            timeout=timeout,
            ran=ran,
            error=self.errors.error,
            puts=tuple(self.puts),
            touches=self.touches,
            requests=tuple(self.requests),
            api_calls=tuple(self.tracker.calls),
        )


class _ThreadProcesses:
    """A compute pool's process pool, in a thread: what crosses is pickled and unpickled,
    as it would be on its way to a worker process."""

    async def run(
        self, func: Callable[..., Any], *args: Any, limiter: trio.CapacityLimiter | None
    ) -> Any:
        crossed_func, crossed_args = pickle.loads(pickle.dumps((func, args)))
        return await trio.to_thread.run_sync(
            crossed_func, *crossed_args, abandon_on_cancel=True, limiter=limiter
        )
