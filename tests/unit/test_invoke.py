"""The runner: one job's handler → delete / release / bury, under autojump_clock."""

from __future__ import annotations

import math
import pickle
import random
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tubeworker.job import Bury, HandlerSpec, Job, Retry, handler, spec_of
from tubeworker.runtime.invoke import run_job
from tubeworker.runtime.outcome import (
    BuryJob,
    Cause,
    DeleteJob,
    Outcome,
    ReleaseJob,
    ReturnJob,
)
from tubeworker.runtime.policy import Budget, RetrySettings
from tubeworker.runtime.processes import WorkerStopped, _stop_signal_of

PRIORITY = 77
POLICY = RetrySettings(max_attempts=3, backoff_base=4.0, backoff_cap=3600.0)


class CeilingRng(random.Random):
    """Full jitter drawing the top of its range, so the backoff delay is predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


def make_job(attempt: int = 1, max_attempts: int = 3) -> Job:
    return Job(
        id=42,
        tube="emails",
        body=b'{"to": "a@example.com"}',
        priority=PRIORITY,
        ttr=60,
        attempt=attempt,
        max_attempts=max_attempts,
    )


def budget(attempt: int = 1, max_attempts: int = 3) -> Budget:
    return Budget(attempt=attempt, max_attempts=max_attempts, redeliveries=0, max_redeliveries=3)


async def run(
    func,
    *,
    attempt: int = 1,
    timeout: float | None = None,
    spec: HandlerSpec | None = None,
) -> Outcome:
    return await run_job(
        make_job(attempt),
        spec or spec_of(func),
        budget(attempt),
        POLICY,
        timeout=timeout,
        rng=CeilingRng(),
    )


# --------------------------------------------------------------------------- verdicts


async def test_given_handler_returns_when_run_then_delete() -> None:
    seen: list[Job] = []

    async def ok(job: Job) -> None:
        seen.append(job)

    assert await run(ok) == DeleteJob()
    assert [j.id for j in seen] == [42]


async def test_given_decorated_handler_when_run_then_its_spec_is_used() -> None:
    @handler("mail.send", timeout=5)
    async def send(job: Job) -> None:
        pass

    spec = spec_of(send)
    assert (spec.name, spec.timeout, spec.is_async) == ("mail.send", 5, True)
    assert await run(send, spec=spec) == DeleteJob()


async def test_given_bury_when_run_then_buried_with_reason_at_priority() -> None:
    async def bad(job: Job) -> None:
        raise Bury("x-marks-the-spot")

    outcome = await run(bad)
    assert isinstance(outcome, BuryJob)
    assert outcome.priority == PRIORITY
    assert outcome.cause is Cause.HANDLER_BURY
    assert "x-marks-the-spot" in outcome.reason


async def test_given_retry_with_delay_when_run_then_released_after_that_delay() -> None:
    async def later(job: Job) -> None:
        raise Retry(delay=5, reason="rate limited")

    outcome = await run(later)
    assert isinstance(outcome, ReleaseJob)
    assert (outcome.delay, outcome.priority) == (5, PRIORITY)
    assert outcome.cause is Cause.HANDLER_RETRY
    assert "rate limited" in outcome.reason


@pytest.mark.parametrize(("delay", "expected"), [(0, 1), (0.1, 1), (2.5, 3), (3600, 3600)])
async def test_given_retry_delay_when_run_then_whole_seconds_at_least_one(
    delay: float, expected: int
) -> None:
    async def later(job: Job) -> None:
        raise Retry(delay=delay)

    outcome = await run(later)
    assert isinstance(outcome, ReleaseJob)
    assert outcome.delay == expected


@pytest.mark.parametrize(("attempt", "delay"), [(1, 4), (2, 8)])
async def test_given_retry_without_delay_when_run_then_backoff_delay(
    attempt: int, delay: int
) -> None:
    async def later(job: Job) -> None:
        raise Retry()

    outcome = await run(later, attempt=attempt)
    assert isinstance(outcome, ReleaseJob)
    assert outcome.delay == delay  # base 4 * 2**(attempt-1), jitter at its ceiling


async def test_given_retry_without_delay_when_run_with_real_jitter_then_within_backoff() -> None:
    async def later(job: Job) -> None:
        raise Retry()

    for seed in range(20):
        outcome = await run_job(
            make_job(2), spec_of(later), budget(2), POLICY, timeout=None, rng=random.Random(seed)
        )
        assert isinstance(outcome, ReleaseJob)
        assert 1 <= outcome.delay <= 8


async def test_given_exception_when_run_then_released_with_its_type_and_message() -> None:
    async def broken(job: Job) -> None:
        raise ValueError("bad input")

    outcome = await run(broken)
    assert isinstance(outcome, ReleaseJob)
    assert outcome.reason == "ValueError: bad input"
    assert outcome.cause is Cause.HANDLER_ERROR
    assert outcome.priority == PRIORITY
    assert 1 <= outcome.delay <= 4


async def test_given_exception_without_message_when_run_then_reason_is_its_type() -> None:
    async def broken(job: Job) -> None:
        raise KeyError

    outcome = await run(broken)
    assert isinstance(outcome, ReleaseJob)
    assert outcome.reason == "KeyError"


async def test_given_huge_exception_message_when_run_then_reason_is_shortened() -> None:
    async def broken(job: Job) -> None:
        raise RuntimeError("x" * 10_000)

    outcome = await run(broken)
    assert isinstance(outcome, ReleaseJob)
    assert outcome.reason.startswith("RuntimeError: xxx")
    assert len(outcome.reason) <= 500


async def test_given_exception_on_last_attempt_when_run_then_buried() -> None:
    async def broken(job: Job) -> None:
        raise ValueError("still bad")

    outcome = await run(broken, attempt=3)
    assert isinstance(outcome, BuryJob)
    assert outcome.priority == PRIORITY
    assert "ValueError: still bad" in outcome.reason
    assert "attempt 3 of 3" in outcome.reason


async def test_given_exception_on_last_attempt_then_the_burial_keeps_its_traceback() -> None:
    def parse(text: str) -> int:
        return int(text)

    async def broken(job: Job) -> None:
        parse("seven")

    outcome = await run(broken, attempt=3)
    assert isinstance(outcome, BuryJob)
    assert outcome.traceback.startswith("Traceback (most recent call last):\n")
    assert ", in broken\n" in outcome.traceback
    assert ", in parse\n" in outcome.traceback
    assert outcome.traceback.endswith(
        "ValueError: invalid literal for int() with base 10: 'seven'\n"
    )


@pytest.mark.parametrize(
    "request_", [Bury("malformed"), Retry(delay=5)], ids=["bury", "retry-at-the-last-attempt"]
)
async def test_given_the_handler_asks_for_its_burial_then_no_traceback(
    request_: Exception,
) -> None:
    async def asks(job: Job) -> None:
        raise request_

    outcome = await run(asks, attempt=3)
    assert isinstance(outcome, BuryJob)
    assert outcome.traceback == ""


async def test_given_retry_on_last_attempt_when_run_then_buried() -> None:
    async def later(job: Job) -> None:
        raise Retry(delay=5)

    outcome = await run(later, attempt=3)
    assert isinstance(outcome, BuryJob)
    assert "attempt 3 of 3" in outcome.reason


async def test_given_bury_on_first_attempt_when_run_then_buried_without_retries() -> None:
    async def bad(job: Job) -> None:
        raise Bury("malformed")

    outcome = await run(bad, attempt=1)
    assert isinstance(outcome, BuryJob)


def test_given_retry_with_infinite_delay_when_run_then_an_outcome() -> None:
    async def later(job: Job) -> None:
        raise Retry(delay=math.inf)

    # trio.run, not an async test: pytest-trio would wrap the escaping error in a group.
    outcome = trio.run(run, later)
    assert isinstance(outcome, ReleaseJob | BuryJob)


# --------------------------------------------------------------------------- timeouts


async def test_given_slow_handler_when_timeout_passes_then_released_as_timed_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled = []

    async def slow(job: Job) -> None:
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            cancelled.append(trio.current_time())
            raise

    start = trio.current_time()
    outcome = await run(slow, timeout=10)
    assert isinstance(outcome, ReleaseJob)
    assert "timed out after 10" in outcome.reason
    assert outcome.cause is Cause.TIMEOUT
    assert outcome.priority == PRIORITY
    assert trio.current_time() - start == pytest.approx(10)
    assert cancelled  # the handler itself was cancelled, not left running


async def test_given_slow_handler_on_last_attempt_when_timeout_passes_then_buried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(job: Job) -> None:
        await trio.sleep(100)

    outcome = await run(slow, attempt=3, timeout=2.5)
    assert isinstance(outcome, BuryJob)
    assert "timed out after 2.5" in outcome.reason


async def test_given_handler_within_timeout_when_run_then_delete(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def quick(job: Job) -> None:
        await trio.sleep(9.9)

    assert await run(quick, timeout=10) == DeleteJob()


async def test_given_no_timeout_when_handler_is_slow_then_it_finishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(job: Job) -> None:
        await trio.sleep(10_000)

    assert await run(slow, timeout=None) == DeleteJob()


async def test_given_handler_raising_while_timed_out_when_run_then_its_error_is_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def messy(job: Job) -> None:
        try:
            await trio.sleep(100)
        finally:
            raise OSError("cleanup failed")

    outcome = await run(messy, timeout=1)
    assert isinstance(outcome, ReleaseJob)
    assert outcome.reason.startswith("OSError: cleanup failed")


# --------------------------------------------------------------------------- groups


async def test_given_bury_in_a_nursery_when_run_then_found_in_the_group() -> None:
    async def fan_out(job: Job) -> None:
        async def child() -> None:
            raise Bury("child says no")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)

    outcome = await run(fan_out)
    assert isinstance(outcome, BuryJob)
    assert "child says no" in outcome.reason


async def test_given_retry_in_a_nursery_when_run_then_its_delay_is_used() -> None:
    async def fan_out(job: Job) -> None:
        async def child() -> None:
            raise Retry(delay=7)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)

    outcome = await run(fan_out)
    assert isinstance(outcome, ReleaseJob)
    assert outcome.delay == 7


async def test_given_nested_groups_with_retry_and_bury_when_run_then_bury_wins() -> None:
    async def fan_out(job: Job) -> None:
        raise ExceptionGroup(
            "outer",
            [Retry(delay=7), ValueError("x"), ExceptionGroup("inner", [Bury("deep")])],
        )

    outcome = await run(fan_out)
    assert isinstance(outcome, BuryJob)
    assert "deep" in outcome.reason


async def test_given_group_of_plain_errors_when_run_then_released_as_failure() -> None:
    async def fan_out(job: Job) -> None:
        async def child(n: int) -> None:
            raise ValueError(f"child {n}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child, 1)
            nursery.start_soon(child, 2)

    outcome = await run(fan_out)
    assert isinstance(outcome, ReleaseJob)
    assert "ExceptionGroup" in outcome.reason


# --------------------------------------------------------------------------- base exceptions


async def test_given_system_exit_when_run_then_failure_not_exit() -> None:
    async def quitter(job: Job) -> None:
        sys.exit(3)

    outcome = await run(quitter)
    assert isinstance(outcome, ReleaseJob)
    assert outcome.reason == "SystemExit: 3"


def test_given_system_exit_in_a_nursery_when_run_then_failure_not_exit() -> None:
    async def quitter(job: Job) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sys.exit, 3)

    # trio.run, not an async test: pytest-trio would wrap the escaping error in a group.
    outcome = trio.run(run, quitter)
    assert isinstance(outcome, ReleaseJob)


async def test_given_outer_cancel_when_handler_runs_then_cancelled_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes: list[Outcome] = []
    handler_cancelled = []

    async def forever(job: Job) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            handler_cancelled.append(True)
            raise

    with trio.move_on_after(5) as outer:
        outcomes.append(await run(forever, timeout=60))
    assert outer.cancelled_caught  # Cancelled reached our scope: run_job did not eat it
    assert outcomes == []
    assert handler_cancelled


async def test_given_outer_cancel_in_a_nursery_handler_then_cancelled_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes: list[Outcome] = []

    async def fan_out(job: Job) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)

    with trio.move_on_after(5) as outer:
        outcomes.append(await run(fan_out, timeout=None))
    assert outer.cancelled_caught
    assert outcomes == []


async def test_given_outer_cancel_before_timeout_when_run_then_not_a_timeout_outcome(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(job: Job) -> None:
        await trio.sleep(100)

    with trio.move_on_after(1) as outer:
        await run(slow, timeout=10)
        pytest.fail("run_job returned although its caller was cancelled")
    assert outer.cancelled_caught


# --------------------------------------------------------------------------- sync handlers


async def test_given_sync_handler_in_io_profile_when_run_then_it_runs_in_a_thread() -> None:
    threads: list[int] = []

    def blocking(job: Job) -> None:
        threads.append(threading.get_ident())

    spec = spec_of(blocking)
    assert not spec.is_async
    outcome = await run_job(make_job(), spec, budget(), POLICY, timeout=None, profile="io")
    assert outcome == DeleteJob()
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()


async def test_given_sync_handler_raising_when_run_then_failure() -> None:
    def blocking(job: Job) -> None:
        raise ValueError("sync boom")

    outcome = await run_job(
        make_job(), spec_of(blocking), budget(), POLICY, timeout=None, profile="io"
    )
    assert isinstance(outcome, ReleaseJob)
    assert outcome.reason == "ValueError: sync boom"


async def test_given_sync_handler_burying_when_run_then_buried() -> None:
    def blocking(job: Job) -> None:
        raise Bury("sync says no")

    outcome = await run_job(
        make_job(), spec_of(blocking), budget(), POLICY, timeout=None, profile="io"
    )
    assert isinstance(outcome, BuryJob)
    assert "sync says no" in outcome.reason


async def test_given_sync_handler_and_limiter_when_run_then_the_limiter_is_used() -> None:
    limiter = trio.CapacityLimiter(1)
    borrowed: list[int] = []

    def blocking(job: Job) -> None:
        borrowed.append(limiter.borrowed_tokens)

    outcome = await run_job(
        make_job(), spec_of(blocking), budget(), POLICY, timeout=None, limiter=limiter
    )
    assert outcome == DeleteJob()
    assert borrowed == [1]
    assert limiter.borrowed_tokens == 0


# --------------------------------------------------------------------------- compute workers


class _StoppedWorkers:
    """A process pool whose worker got the process group's SIGTERM before ignoring it."""

    async def run(self, func: object, *args: object, limiter: object) -> object:
        raise WorkerStopped("its worker process was stopped by SIGTERM")


async def test_given_a_worker_stopped_by_the_groups_signal_then_the_job_is_returned() -> None:
    def crunch(job: Job) -> None:
        raise AssertionError("never runs: the worker is gone")

    outcome = await run_job(
        make_job(),
        spec_of(crunch),
        budget(),
        POLICY,
        timeout=None,
        profile="compute",
        processes=_StoppedWorkers(),
    )
    assert outcome == ReturnJob(Cause.WORKER_STOPPED, "its worker process was stopped by SIGTERM")


class _Exited:
    def __init__(self, exitcode: int) -> None:
        self.exitcode = exitcode


@pytest.mark.parametrize(
    ("exitcode", "signum"),
    [(-signal.SIGTERM, signal.SIGTERM), (-signal.SIGINT, signal.SIGINT), (-9, None), (1, None)],
)
def test_which_worker_deaths_are_a_stop_of_the_group(exitcode: int, signum: int | None) -> None:
    error = RuntimeError("Worker died unexpectedly:", _Exited(exitcode))
    assert _stop_signal_of(error) == signum


class _PickledWorkers:
    """A process pool as trio-parallel is one: the function runs elsewhere and what it
    raises comes back pickled (its frames lost on the way)."""

    async def run(self, func: Callable[..., Any], *args: Any, limiter: object) -> object:
        try:
            return func(*args)
        except Exception as exc:
            raise pickle.loads(pickle.dumps(exc)) from None


def _split_rows(text: str) -> list[int]:
    return [int(row) for row in text.split(",")]


def crunch_rows(job: Job) -> None:  # module level: a compute handler is pickled
    _split_rows("1,two")


async def test_given_a_compute_handler_fails_in_its_process_then_its_frames_come_back() -> None:
    outcome = await run_job(
        make_job(attempt=3),
        spec_of(crunch_rows),
        budget(attempt=3),
        POLICY,
        timeout=None,
        profile="compute",
        processes=_PickledWorkers(),
    )
    assert isinstance(outcome, BuryJob)
    assert ", in crunch_rows\n" in outcome.traceback
    assert ", in _split_rows\n" in outcome.traceback
    assert outcome.traceback.endswith("ValueError: invalid literal for int() with base 10: 'two'\n")
