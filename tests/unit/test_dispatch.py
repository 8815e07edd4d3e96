"""Dispatch: a reserved job and its stats-job → a plan or a burial, and the Job it builds."""

from __future__ import annotations

import io
import pickle
from datetime import UTC, datetime

import structlog

from tubeworker import Job, handler
from tubeworker.beanstalk import protocol as p
from tubeworker.envelope import encode_envelope
from tubeworker.job import HandlerSpec, spec_of
from tubeworker.observe.logs import configure_logging
from tubeworker.runtime.dispatch import DispatchRules, Plan, effective_policy, plan_job
from tubeworker.runtime.outcome import BuryJob, Cause, ReleaseJob
from tubeworker.runtime.policy import RetrySettings

POLICY = RetrySettings(max_attempts=3, backoff_base=1.0, backoff_cap=10.0, redelivery_limit=3)


def stats(**counts: int) -> p.JobStats:
    c = {"reserves": 1, "timeouts": 0, "releases": 0, "buries": 0, "kicks": 0, **counts}
    return p.JobStats(
        7, "jobs", "reserved", 42, 0, 0, 60, 59, 0,
        c["reserves"], c["timeouts"], c["releases"], c["buries"], c["kicks"],
    )  # fmt: skip


async def echo(job: Job) -> None:
    pass


@handler(max_attempts=7, backoff=(5, 50))
async def picky(job: Job) -> None:
    pass


HANDLERS: dict[str, HandlerSpec] = {"echo": spec_of(echo), "picky": spec_of(picky)}
ENVELOPES = DispatchRules(policy=POLICY, lookup=HANDLERS.get)
BOUND = DispatchRules(policy=POLICY, lookup=HANDLERS.get, bound=spec_of(echo), bound_name="echo")


def test_given_an_envelope_then_its_task_and_payload_reach_the_job() -> None:
    plan = plan_job(7, encode_envelope("echo", {"n": 1}), stats(), ENVELOPES)
    assert isinstance(plan, Plan)
    assert (plan.handler, plan.job.task, plan.job.payload) == ("echo", "echo", {"n": 1})
    assert (plan.job.priority, plan.job.ttr, plan.job.attempt) == (42, 60, 1)


def test_given_a_bound_pool_then_the_raw_body_goes_to_its_handler() -> None:
    plan = plan_job(7, b"\x00raw", stats(), BOUND)
    assert isinstance(plan, Plan)
    assert (plan.handler, plan.job.body, plan.job.task, plan.job.payload) == (
        "echo",
        b"\x00raw",
        None,
        None,
    )


def test_given_json_without_task_then_buried_saying_how_to_bind_a_handler() -> None:
    burial = plan_job(7, b'{"user": 5}', stats(), ENVELOPES)
    assert isinstance(burial, BuryJob)
    assert burial.cause is Cause.NO_TASK
    assert "--handler" in burial.detail
    assert 'handler = "NAME"' in burial.detail


def test_given_bad_bodies_then_each_is_buried_with_its_cause() -> None:
    cases = {
        b"{not json": Cause.BAD_BODY,
        b"\xff\xfe": Cause.BAD_BODY,
        b"[1, 2]": Cause.BAD_BODY,
        encode_envelope("nope", {}): Cause.UNKNOWN_TASK,
    }
    for body, cause in cases.items():
        burial = plan_job(7, body, stats(), ENVELOPES)
        assert isinstance(burial, BuryJob), body
        assert (burial.cause, burial.priority) == (cause, 42), body


def test_given_a_handler_that_failed_to_load_then_released_saying_so_then_buried() -> None:
    errors = {"broken.x": "acme.jobs:x from acme-plugins: ImportError: no module named 'pdf'"}
    rules = DispatchRules(policy=POLICY, lookup=HANDLERS.get, broken=errors.get)
    body = encode_envelope("broken.x", {})
    first = plan_job(7, body, stats(), rules)
    # Not "unknown": it is registered. Another worker, or this one fixed, may run it.
    assert isinstance(first, ReleaseJob)
    assert first.cause is Cause.HANDLER_BROKEN
    assert first.detail == (
        "handler 'broken.x' is registered but failed to load in this worker: "
        "acme.jobs:x from acme-plugins: ImportError: no module named 'pdf'"
    )
    assert first.delay >= 1
    last = plan_job(7, body, stats(reserves=3, releases=2), rules)
    assert isinstance(last, BuryJob)
    assert last.cause is Cause.HANDLER_BROKEN
    assert "ImportError" in last.detail
    assert last.detail.endswith("(attempt 3 of 3: giving up)")
    unknown = plan_job(7, encode_envelope("nope", {}), stats(), rules)
    assert isinstance(unknown, BuryJob)
    assert unknown.cause is Cause.UNKNOWN_TASK


def test_given_a_job_redelivered_past_the_limit_then_buried_as_poison() -> None:
    burial = plan_job(7, encode_envelope("echo"), stats(reserves=4), ENVELOPES)
    assert isinstance(burial, BuryJob)
    assert burial.cause is Cause.POISON


def test_given_attempts_past_the_budget_then_buried_without_running() -> None:
    burial = plan_job(7, encode_envelope("echo"), stats(reserves=4, timeouts=3), ENVELOPES)
    assert isinstance(burial, BuryJob)
    assert burial.cause is Cause.ATTEMPTS_EXHAUSTED


def test_given_a_handlers_own_options_then_its_policy_applies() -> None:
    plan = plan_job(7, encode_envelope("picky"), stats(reserves=4, releases=3), ENVELOPES)
    assert isinstance(plan, Plan)
    assert (plan.policy.max_attempts, plan.policy.backoff_base) == (7, 5)
    assert plan.job.max_attempts == 7
    assert effective_policy(spec_of(echo), POLICY) is POLICY


def test_given_a_job_built_as_the_lane_builds_it_then_it_pickles_as_plain_data() -> None:
    # The daemon's real logging: a batched writer on a stream that cannot be pickled.
    configure_logging("json", "info", stream=io.StringIO(), batched=True)
    try:
        lane_log = structlog.get_logger("tubeworker").bind(pool="p", lane=0)
        plan = plan_job(7, encode_envelope("echo", {"n": 1}), stats(), ENVELOPES, log=lane_log)
        assert isinstance(plan, Plan)
        plan.job.log.info("bound before pickling")  # the job's own logger exists too
        copy = pickle.loads(pickle.dumps(plan.job))
    finally:
        structlog.reset_defaults()
    assert copy.record == plan.job.record
    assert copy.payload == {"n": 1}


def test_given_an_envelope_with_an_id_then_the_job_knows_it() -> None:
    plan = plan_job(7, encode_envelope("echo", {"n": 1}, id="order-42"), stats(), ENVELOPES)
    assert isinstance(plan, Plan)
    assert plan.job.id_key == "order-42"
    assert pickle.loads(pickle.dumps(plan.job)).id_key == "order-42"  # to a compute worker
    assert plan.job.schedule is None
    bad = plan_job(7, b'{"task": "echo", "id": ["x"]}', stats(), ENVELOPES)
    assert isinstance(bad, BuryJob)
    assert bad.cause is Cause.BAD_BODY


def test_given_a_fire_of_a_schedule_then_job_schedule_tells_its_name_and_fire_time() -> None:
    body = encode_envelope("echo", None, id="schedule:nightly:2026-12-03T01:30:00Z")
    plan = plan_job(7, body, stats(), ENVELOPES)
    assert isinstance(plan, Plan)
    assert plan.job.schedule is not None
    assert plan.job.schedule.name == "nightly"
    assert plan.job.schedule.fire_time == datetime(2026, 12, 3, 1, 30, tzinfo=UTC)
