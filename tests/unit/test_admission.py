"""Admission on its own, with no server, under Trio's MockClock: a job held while its API is
open and admitted as a probe, deferred when the pool has other work, the settle window
after a failure while the API's calls fail, a local limit's wait (and deferral past
``defer_after``), and a drain handing a waiting job back."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tubeworker import Job, handler
from tubeworker.beanstalk import protocol as p
from tubeworker.config import LimitConfig, RetrySettings
from tubeworker.flow import ApiSettings, ApiTracker, BreakerSettings, CallOutcome
from tubeworker.flow.limits import Lease, Limits
from tubeworker.job import spec_of
from tubeworker.observe.counters import JobCounters
from tubeworker.runtime.admission import Admission
from tubeworker.runtime.dispatch import Plan
from tubeworker.runtime.outcome import Cause, DeleteJob, ReleaseJob
from tubeworker.runtime.policy import job_budget
from tubeworker.runtime.run import Run
from tubeworker.runtime.slots import InFlight

# Opens on the third failure in a row, for 30 s, one probe at a time; no jitter.
BREAKER = BreakerSettings(consecutive_failures=3, cooldown=30.0, cooldown_cap=60.0, jitter=0.0)


@handler(apis=["partner"])
async def call_partner(job: Job) -> None:
    pass


class Rig:
    def __init__(self, *, limits: tuple[LimitConfig, ...] = (), other_work: bool = False) -> None:
        self.tracker = ApiTracker(
            {"partner": ApiSettings(breaker=BREAKER)}, clock=trio.current_time
        )
        self.limits = Limits(limits, clock=trio.current_time)
        self.released = trio.Event()
        self.limits.on_release = self._released
        self.counters = JobCounters()
        self.draining = False
        self.deferred: list[tuple[int, int]] = []
        self.admission = Admission(
            tracker=self.tracker,
            limits=self.limits,
            tokens={},
            counters=self.counters,
            draining=lambda: self.draining,
            other_work=lambda: other_work,
            limits_changed=self._limits_changed,
        )
        self._ids = iter(range(1, 1000))

    def _released(self) -> None:
        self.released.set()
        self.released = trio.Event()

    async def _limits_changed(self) -> None:
        await self.released.wait()

    async def defer(self, run: Run, delay: int) -> int:
        await trio.lowlevel.checkpoint()
        self.deferred.append((run.plan.job.id, delay))
        return 900 + len(self.deferred)

    def trip(self) -> None:
        for _ in range(3):
            self.tracker.report("partner", CallOutcome.FAILURE)
        assert self.tracker.is_open("partner")

    def run(self, *, limits: tuple[LimitConfig, ...] = (), ttr: int = 10) -> Run:
        job_id = next(self._ids)
        stats = p.JobStats(
            job_id, "jobs", "reserved", 1024, 0, 0, ttr, ttr, 0, 1, 0, 0, 0, 0
        )  # fmt: skip
        policy = RetrySettings()
        job = Job(
            id=job_id, tube="jobs", body=b"{}", priority=1024, ttr=ttr, attempt=1,
            max_attempts=10, task="partner", payload={},
        )  # fmt: skip
        plan = Plan(job, spec_of(call_partner), "partner", policy, job_budget(stats, policy))
        (slot,) = InFlight(None).take(1)
        run = Run(plan, stats, slot, 0.0, timeout=9.0, margin=1.0)
        run.apis = frozenset({"partner"})
        run.limits = limits
        return run


async def test_given_an_open_api_then_the_job_is_held_touched_and_admitted_as_a_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    rig.trip()
    run = rig.run()
    assert not rig.admission.try_now(run)
    run.hold()
    assert rig.counters.api_waits == 1
    assert run.next_touch == pytest.approx(5.0)  # half its TTR: touched while it waits
    started = trio.current_time()
    outcome = await rig.admission.admit(run, rig.defer)
    assert outcome is None  # admitted, nothing deferred (the pool had nothing else to do)
    assert trio.current_time() - started == pytest.approx(30.0)  # the cool-down
    assert run.permit is not None
    assert run.permit.probes == ("partner",)
    assert rig.deferred == []


async def test_given_an_open_api_and_other_work_then_the_job_is_deferred_for_the_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig(other_work=True)
    rig.trip()
    run = rig.run()
    assert not rig.admission.try_now(run)
    outcome = await rig.admission.admit(run, rig.defer)
    assert isinstance(outcome, DeleteJob)
    assert outcome.cause is Cause.DEFERRED
    assert outcome.detail == "its API is open (partner): waits as job 901 for 30 s"
    assert rig.deferred == [(run.plan.job.id, 30)]


async def test_given_a_drain_while_held_then_the_job_goes_back_with_no_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    rig.trip()
    run = rig.run()
    rig.admission.try_now(run)
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            with trio.CancelScope() as scope:  # as runtime/in_turn.py gives a run that waits
                run.scope_taken(scope)
                await rig.admission.admit(run, rig.defer)

        nursery.start_soon(wait)
        await trio.sleep(3)
        rig.draining = True
    assert run.returned is not None
    assert run.returned.cause is Cause.API_OPEN
    assert run.scope is not None
    assert run.scope.cancelled_caught


@pytest.mark.parametrize(
    ("then", "held"),
    [("opens", True), ("answers", False), ("says nothing", False)],
)
async def test_the_settle_window_after_a_failure_while_the_apis_calls_fail(
    autojump_clock: trio.testing.MockClock, then: str, held: bool
) -> None:
    rig = Rig()
    run = rig.run()
    rig.tracker.report("partner", CallOutcome.FAILURE)  # its own call failed: failing
    failure = ReleaseJob(2, 1024, Cause.HANDLER_ERROR, "HTTP 503")
    decided: list[bool] = []
    async with trio.open_nursery() as nursery:

        async def judge() -> None:
            decided.append(await rig.admission.failed_with_its_api(run, failure))

        nursery.start_soon(judge)
        await trio.sleep(2)
        assert decided == []  # waits for the breaker, touched (no attempt yet)
        if then == "opens":
            rig.tracker.report("partner", CallOutcome.FAILURE)
            rig.tracker.report("partner", CallOutcome.FAILURE)
        elif then == "answers":
            rig.tracker.report("partner", CallOutcome.SUCCESS)
    assert decided == [held]
    if held:
        assert run.holding  # held for another run, touched at once
        assert run.next_touch <= trio.current_time()
        assert rig.counters.api_waits == 1
    waited = trio.current_time()
    assert waited == pytest.approx(10.0 if then == "says nothing" else 2.1, abs=0.2)


async def test_given_a_full_local_limit_then_the_job_waits_for_a_running_one_to_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = LimitConfig("partner", max_concurrent=1, defer_after=60)
    rig = Rig(limits=(limit,))
    first, second = rig.run(limits=(limit,)), rig.run(limits=(limit,))
    assert rig.admission.try_now(first)
    assert isinstance(first.lease, Lease)
    assert not rig.admission.try_now(second)
    async with trio.open_nursery() as nursery:
        admitted: list[object] = []

        async def wait() -> None:
            admitted.append(await rig.admission.admit(second, rig.defer))

        nursery.start_soon(wait)
        await trio.sleep(20)
        assert admitted == []  # full: waits (touched), never released
        first.release_admission()  # the running job ends
    assert admitted == [None]
    assert isinstance(second.lease, Lease)
    assert trio.current_time() == pytest.approx(20.0)


async def test_given_a_limit_that_stays_full_past_defer_after_then_the_job_is_deferred(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = LimitConfig("partner", max_concurrent=1, defer_after=2)
    rig = Rig(limits=(limit,))
    first, second = rig.run(limits=(limit,)), rig.run(limits=(limit,))
    assert rig.admission.try_now(first)
    assert not rig.admission.try_now(second)
    outcome = await rig.admission.admit(second, rig.defer)
    assert isinstance(outcome, DeleteJob)
    assert outcome.cause is Cause.DEFERRED
    assert outcome.detail.startswith("its limit is full (partner): waits as job 901")
    assert trio.current_time() == pytest.approx(2.0)
    (stats,) = rig.limits.statistics()
    assert stats.deferred == 1
