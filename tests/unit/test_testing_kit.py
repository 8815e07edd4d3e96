"""The test kit (tubeworker.testing): a handler run with no beanstalkd gets the outcome the
daemon's own dispatch, runner and retry policy decide, and what it did is recorded."""

from __future__ import annotations

import random

import httpx
import pytest
import trio
import trio.testing

from tubeworker import Bury, Job, Middleware, Retry, Verdict, handler
from tubeworker.errors import LocalProtocolError
from tubeworker.testing import ApiCall, Outcome, Put, run, run_async


class CeilingRng(random.Random):
    """Full jitter drawing the top of its range, so the backoff delay is predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def ok(job: Job) -> None:
    pass


async def boom(job: Job) -> None:
    raise ValueError(f"boom on attempt {job.attempt}")


def sync_echo(job: Job) -> None:
    """A sync handler at module level: it pickles by reference, as compute pools need."""
    if job.payload != {"n": 1}:
        raise Bury(f"unexpected payload {job.payload!r}")


# --------------------------------------------------------------------------- verdicts


def test_given_a_handler_that_returns_when_run_then_done() -> None:
    outcome = run(ok, payload={"n": 1})
    assert (outcome.verdict, outcome.cause, outcome.reason, outcome.delay) == (
        "done",
        "completed",
        "",
        None,
    )
    assert outcome.done
    assert outcome.ran
    assert not outcome.retried
    assert not outcome.buried
    assert not outcome.timed_out
    assert outcome.error is None


@pytest.mark.parametrize(("delay", "released_for"), [(7, 7), (0.2, 1), (0, 1), (90.5, 91)])
def test_given_retry_with_a_delay_when_run_then_released_for_whole_seconds(
    delay: float, released_for: int
) -> None:
    async def limited(job: Job) -> None:
        raise Retry(delay=delay, reason="rate limited")

    outcome = run(limited, payload={})
    assert (outcome.verdict, outcome.cause, outcome.reason) == (
        "retry",
        "handler_retry",
        "rate limited",
    )
    assert outcome.delay == released_for  # the daemon's rounding: whole seconds, >= 1
    assert isinstance(outcome.error, Retry)


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 2), (2, 4), (3, 8), (9, 512)])
def test_given_an_exception_when_run_then_released_with_the_pools_backoff(
    attempt: int, ceiling: int
) -> None:
    outcome = run(boom, payload={}, attempt=attempt, rng=CeilingRng())
    assert (outcome.verdict, outcome.cause) == ("retry", "handler_error")
    assert outcome.reason == f"ValueError: boom on attempt {attempt}"
    assert outcome.delay == ceiling  # backoff_base 2 s, doubling: the config's default
    assert isinstance(outcome.error, ValueError)


def test_given_the_default_rng_then_the_delay_is_within_full_jitter_bounds() -> None:
    delays = {run(boom, payload={}, attempt=4).delay for _ in range(20)}
    assert all(d is not None and 1 <= d <= 16 for d in delays)


def test_given_a_backoff_and_retry_without_delay_when_run_then_that_backoff() -> None:
    async def again(job: Job) -> None:
        raise Retry(reason="later")

    outcome = run(again, payload={}, attempt=2, backoff=(10, 15), rng=CeilingRng())
    assert (outcome.cause, outcome.delay) == ("handler_retry", 15)  # 20 capped at 15


def test_given_the_last_attempt_fails_when_run_then_buried_giving_up() -> None:
    outcome = run(boom, payload={}, attempt=3, max_attempts=3)
    assert (outcome.verdict, outcome.cause, outcome.delay) == ("bury", "handler_error", None)
    assert outcome.reason == "ValueError: boom on attempt 3 (attempt 3 of 3: giving up)"
    assert (outcome.attempt, outcome.max_attempts) == (3, 3)


def test_given_an_attempt_past_max_attempts_when_run_then_buried_without_running() -> None:
    ran: list[int] = []

    async def counting(job: Job) -> None:
        ran.append(job.attempt)

    outcome = run(counting, payload={}, attempt=4, max_attempts=3)
    assert (outcome.verdict, outcome.cause, outcome.ran) == ("bury", "attempts_exhausted", False)
    assert outcome.reason == "attempt 4 exceeds max_attempts 3"
    assert ran == []


def test_given_the_handlers_own_max_attempts_then_it_wins_over_the_pools() -> None:
    @handler(max_attempts=2)
    async def fragile(job: Job) -> None:
        raise RuntimeError("no")

    outcome = run(fragile, payload={}, attempt=2, max_attempts=10)
    assert outcome.buried
    assert (outcome.attempt, outcome.max_attempts) == (2, 2)


def test_given_bury_when_run_then_buried_with_its_reason() -> None:
    async def refuse(job: Job) -> None:
        raise Bury("user 7 does not exist")

    outcome = run(refuse, payload={})
    assert (outcome.verdict, outcome.cause, outcome.reason) == (
        "bury",
        "handler_bury",
        "user 7 does not exist",
    )


def test_given_the_job_when_run_then_the_handler_sees_what_the_daemon_would_give() -> None:
    seen: list[Job] = []

    async def look(job: Job) -> None:
        seen.append(job)

    run(look, payload={"a": 1}, task="mail.send", attempt=2, ttr=30, priority=5, tube="mail")
    (job,) = seen
    assert (job.task, job.payload, job.attempt, job.max_attempts) == ("mail.send", {"a": 1}, 2, 10)
    assert (job.ttr, job.priority, job.tube, job.id) == (30, 5, "mail", 1)
    assert job.json() == {"task": "mail.send", "payload": {"a": 1}}


def test_given_no_task_then_the_handlers_name_is_the_task() -> None:
    names: list[str | None] = []

    @handler("mail.send")
    async def named(job: Job) -> None:
        names.append(job.task)

    async def plain(job: Job) -> None:
        names.append(job.task)

    run(named, payload={})
    run(plain, payload={})
    assert names == ["mail.send", "plain"]


# --------------------------------------------------------------------------- bodies


def test_given_a_raw_body_then_the_job_is_as_in_a_pool_bound_to_the_handler() -> None:
    seen: list[Job] = []

    async def look(job: Job) -> None:
        seen.append(job)

    assert run(look, body=b"\x00raw").done
    assert run(look, body="text").done
    assert [(j.task, j.payload, j.body) for j in seen] == [
        (None, None, b"\x00raw"),
        (None, None, b"text"),
    ]


@pytest.mark.parametrize(
    ("body", "cause"),
    [(b"{not json", "bad_body"), (b"[1]", "bad_body"), (b'{"payload": 1}', "no_task")],
)
def test_given_a_body_and_a_task_then_dispatched_as_an_envelope(body: bytes, cause: str) -> None:
    outcome = run(ok, body=body, task="send")
    assert (outcome.verdict, outcome.cause, outcome.ran) == ("bury", cause, False)


def test_given_an_envelope_for_another_task_then_buried_as_unknown() -> None:
    outcome = run(ok, body=b'{"task": "other", "payload": {}}', task="send")
    assert (outcome.cause, outcome.reason) == (
        "unknown_task",
        "no handler registered for task 'other'",
    )


def test_given_a_body_and_a_task_that_match_then_it_runs() -> None:
    seen: list[object] = []

    async def look(job: Job) -> None:
        seen.append(job.payload)

    assert run(look, body=b'{"task": "send", "payload": [1]}', task="send").done
    assert seen == [[1]]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"payload": {}, "body": b"x"}],
)
def test_given_neither_or_both_of_payload_and_body_then_type_error(
    kwargs: dict[str, object],
) -> None:
    with pytest.raises(TypeError, match=r"payload= .* or body="):
        run(ok, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"attempt": 0}, ValueError),
        ({"ttr": 0}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"tube": "-bad"}, LocalProtocolError),
    ],
)
def test_given_an_impossible_job_then_an_error_before_anything_runs(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        run(ok, payload={}, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- deadlines


async def test_given_a_handler_past_its_timeout_then_timed_out_and_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @handler(timeout=5)
    async def slow(job: Job) -> None:
        await trio.sleep(3600)

    started = trio.current_time()
    outcome = await run_async(slow, payload={}, rng=CeilingRng())
    assert trio.current_time() - started == pytest.approx(5)
    assert (outcome.verdict, outcome.cause, outcome.reason) == (
        "retry",
        "timeout",
        "timed out after 5 s",
    )
    assert outcome.timed_out
    assert outcome.timeout == 5
    assert outcome.delay == 2
    assert isinstance(outcome.error, TimeoutError)


async def test_given_a_timeout_on_the_last_attempt_then_buried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(job: Job) -> None:
        await trio.sleep(3600)

    outcome = await run_async(slow, payload={}, attempt=2, max_attempts=2, timeout=1)
    assert (outcome.verdict, outcome.cause) == ("bury", "timeout")
    assert outcome.timed_out


@pytest.mark.parametrize(
    ("options", "pool_timeout", "ttr", "deadline"),
    [
        ({}, None, 60, 59.0),  # TTR minus the 1 s margin
        ({}, None, 1, 0.5),  # a tiny TTR: at least half of it
        ({"timeout": 300}, None, 60, 59.0),  # never past the TTR...
        ({"timeout": 300, "long_running": True}, None, 60, 300.0),  # ...unless touched
        ({"long_running": True}, None, 60, None),
        ({}, 20.0, 60, 20.0),  # the pool's timeout
        ({"timeout": 5}, 20.0, 60, 5.0),  # the handler's wins
    ],
)
def test_given_options_then_the_deadline_is_the_daemons(
    options: dict[str, object], pool_timeout: float | None, ttr: int, deadline: float | None
) -> None:
    @handler(**options)  # type: ignore[arg-type]
    async def fresh(job: Job) -> None:
        pass

    assert run(fresh, payload={}, ttr=ttr, timeout=pool_timeout).timeout == deadline


def test_given_a_clock_when_run_synchronously_then_timeouts_pass_in_virtual_time() -> None:
    async def slow(job: Job) -> None:
        await trio.sleep(3600)

    outcome = run(slow, payload={}, ttr=600, clock=trio.testing.MockClock(autojump_threshold=0))
    assert (outcome.cause, outcome.timeout) == ("timeout", 599.0)


# --------------------------------------------------------------------------- what it did


async def test_given_puts_when_run_then_recorded_with_ids_and_envelopes() -> None:
    async def fan_out(job: Job) -> None:
        first = await job.put({"task": "audit", "payload": {"user": 1}}, tube="audit")
        second = await job.put(b"raw", priority=1, delay=30, ttr=120)
        await job.put("text", tube="other")
        assert (first, second) == (1000, 1001)

    outcome = await run_async(fan_out, payload={}, tube="emails")
    assert outcome.done, outcome.reason
    assert outcome.puts == (
        Put(1000, "audit", b'{"task":"audit","payload":{"user":1}}', 1024, 0, 60),
        Put(1001, "emails", b"raw", 1, 30, 120),
        Put(1002, "other", b"text", 1024, 0, 60),
    )
    assert (outcome.puts[0].task, outcome.puts[0].payload) == ("audit", {"user": 1})
    assert outcome.puts[0].json() == {"task": "audit", "payload": {"user": 1}}
    assert (outcome.puts[1].task, outcome.puts[1].payload) == (None, None)


@pytest.mark.parametrize(
    ("put", "words"),
    [
        ({"tube": "-bad"}, "must not start with '-'"),
        ({"delay": -1}, "delay must be in"),
        ({"priority": 2**32}, "priority must be in"),
    ],
)
async def test_given_a_put_beanstalkd_would_refuse_then_the_attempt_fails(
    put: dict[str, object], words: str
) -> None:
    async def bad_put(job: Job) -> None:
        await job.put(b"x", **put)  # type: ignore[arg-type]

    outcome = await run_async(bad_put, payload={})
    assert (outcome.verdict, outcome.cause, outcome.puts) == ("retry", "handler_error", ())
    assert words in outcome.reason  # the checks of the protocol layer, before any I/O


async def test_given_touches_when_run_then_counted() -> None:
    async def long(job: Job) -> None:
        for _ in range(3):
            await job.touch()

    assert (await run_async(long, payload={})).touches == 3


async def test_given_an_http_stub_then_requests_are_answered_recorded_and_tracked() -> None:
    async def call(job: Job) -> None:
        response = await job.http.post("https://api.partner.example/v1/orders", json={"n": 1})
        if response.status_code == 429:
            raise Retry(delay=float(response.headers["retry-after"]), reason="limited")
        response.raise_for_status()

    def partner(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "30"})

    outcome = await run_async(call, payload={}, http=partner)
    assert (outcome.verdict, outcome.delay) == ("retry", 30)
    (request,) = outcome.requests
    assert (request.method, str(request.url), request.content) == (
        "POST",
        "https://api.partner.example/v1/orders",
        b'{"n":1}',
    )
    assert outcome.api_calls == (ApiCall("api.partner.example", "failure", 30.0),)


async def test_given_declared_apis_then_requests_count_under_the_api_of_their_host() -> None:
    async def call(job: Job) -> None:
        await job.http.get("https://eu.partner.example/a")
        await job.http.get("https://other.example/b")

    async def answer(request: httpx.Request) -> httpx.Response:  # async stubs work too
        return httpx.Response(404 if request.url.host == "other.example" else 200)

    outcome = await run_async(
        call, payload={}, http=httpx.MockTransport(answer), apis={"partner": ["*.partner.example"]}
    )
    assert outcome.done
    assert outcome.api_calls == (
        ApiCall("partner", "success"),
        ApiCall("other.example", "caller_fault"),
    )


async def test_given_no_http_stub_then_a_request_fails_the_attempt_saying_so() -> None:
    async def call(job: Job) -> None:
        await job.http.get("https://api.example/")

    outcome = await run_async(call, payload={})
    assert (outcome.verdict, outcome.cause) == ("retry", "handler_error")
    assert "job.http has no stub in this test (GET https://api.example/)" in outcome.reason
    assert outcome.api_calls == ()


async def test_given_job_api_blocks_then_their_calls_are_recorded() -> None:
    async def mail(job: Job) -> None:
        async with job.api("smtp"):
            pass
        with job.api("smtp"):
            raise ConnectionError("smtp down")

    outcome = await run_async(mail, payload={})
    assert outcome.reason == "ConnectionError: smtp down"
    assert outcome.api_calls == (ApiCall("smtp", "success"), ApiCall("smtp", "failure"))


async def test_given_the_stub_transport_then_it_is_closed_when_the_run_ends() -> None:
    closed: list[bool] = []

    class Transport(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(True)

    transport = Transport(lambda request: httpx.Response(200))
    await run_async(ok, payload={}, http=transport)
    assert closed == [True]


# --------------------------------------------------------------------------- sync, compute


def test_given_a_sync_handler_then_it_runs_in_a_thread_as_in_the_io_profile() -> None:
    assert run(sync_echo, payload={"n": 1}).done
    assert run(sync_echo, payload={"n": 2}).buried


def test_given_the_compute_profile_then_the_job_crosses_as_data_with_no_connection() -> None:
    def put_from_a_worker(job: Job) -> None:
        trio.from_thread.run(job.put, b"x")

    assert run(sync_echo, payload={"n": 1}, profile="compute").done
    # A handler that is not importable by name cannot reach a worker process.
    outcome = run(put_from_a_worker, payload={}, profile="compute")
    assert (outcome.verdict, outcome.cause) == ("retry", "handler_error")
    assert "pickle" in outcome.reason.lower() or "local object" in outcome.reason


def test_given_the_compute_profile_then_job_services_are_missing_as_in_a_worker() -> None:
    outcome = run(sync_put, payload={}, profile="compute")
    assert "RuntimeError: job.put() is not available here" in outcome.reason


def sync_put(job: Job) -> None:
    trio.from_thread.run(job.put, b"x")


async def test_given_run_inside_trio_then_it_says_to_await_run_async() -> None:
    with pytest.raises(RuntimeError, match=r"await tubeworker\.testing\.run_async"):
        run(ok, payload={})


# --------------------------------------------------------------------------- middleware


async def test_given_middleware_then_it_wraps_the_run_as_in_the_daemon() -> None:
    seen: list[tuple[str, object]] = []

    class Watch(Middleware):
        async def before(self, job: Job) -> None:
            seen.append(("before", job.attempt))

        async def on_error(
            self, job: Job, error: BaseException, verdict: Verdict, reason: str
        ) -> None:
            seen.append(("on_error", verdict))

        async def after(self, job: Job, verdict: Verdict, reason: str | None) -> None:
            seen.append(("after", reason))

    outcome = await run_async(boom, payload={}, middleware=[Watch()], attempt=2, max_attempts=2)
    assert outcome.buried
    assert seen == [("before", 2), ("on_error", "bury"), ("after", outcome.reason)]


def test_given_an_outcome_then_it_is_a_frozen_record() -> None:
    outcome = run(ok, payload={})
    assert isinstance(outcome, Outcome)
    with pytest.raises(AttributeError):
        outcome.verdict = "bury"  # type: ignore[misc]


# The README's handler and its tests run as written in tests/unit/test_docs.py.


class Declined(Exception):
    """An SDK's error for a request the API refused (the caller's fault)."""


async def call_by_host(job: Job) -> None:
    declined = job.payload.get("declined", False)
    with job.api(host="api.partner.example", caller_fault=lambda e: isinstance(e, Declined)):
        if declined:
            raise Declined("card declined")


def test_given_a_host_then_job_api_reports_to_the_api_it_belongs_to() -> None:
    apis = {"partner": ["*.partner.example"]}
    outcome = run(call_by_host, payload={}, apis=apis)
    assert outcome.api_calls == (ApiCall("partner", "success"),)
    refused = run(call_by_host, payload={"declined": True}, apis=apis)
    assert refused.api_calls == (ApiCall("partner", "caller_fault"),)
    assert refused.verdict == "retry"  # still the handler's exception: an ordinary failure
    unknown = run(call_by_host, payload={})  # no [api] owns the host: named after it
    assert unknown.api_calls == (ApiCall("api.partner.example", "success"),)


def test_job_api_takes_a_name_or_a_host() -> None:
    async def both(job: Job) -> None:
        job.api("partner", host="api.partner.example")

    outcome = run(both, payload={})
    assert isinstance(outcome.error, TypeError)
