"""Batches' exchanges (tubeworker.batches.ops) on a model of beanstalkd, in every
interleaving of two jobs ending, with a crash at every round trip, and under random
schedules: each callback fires once or never, never before the last job ended, and
``success`` only when every job succeeded."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Generator, Iterator
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.modelstalk import ModelServer, Runner, run_to_end
from tubeworker.batches.model import PARKED, TENTATIVE, TIMERS_TUBE, batch_tube
from tubeworker.batches.ops import (
    Callback,
    Opened,
    add_job,
    close_batch,
    expire,
    open_batch,
    read_status,
    record_burial,
    record_success,
)
from tubeworker.beanstalk import protocol as p
from tubeworker.envelope import BadEnvelope, BatchRef, read_batch_ref, read_envelope

Exchange = Callable[[], Generator[Any, Any, Any]]

CALLBACKS = {
    kind: Callback("callbacks", f"on-{kind}", json.dumps({"on": kind}).encode())
    for kind in ("success", "complete", "death")
}


def body_of(ref: BatchRef) -> bytes:
    return json.dumps({"task": "work", "batch": ref.to_json()}).encode()


def opened_batch(
    server: ModelServer, jobs: int, *, close: bool = True
) -> tuple[Opened, list[BatchRef]]:
    opened = run_to_end(server, open_batch("b1", CALLBACKS, retention=3600))
    refs = []
    for _ in range(jobs):
        job_id = run_to_end(server, add_job(opened.ref(1), "work", body_of, priority=100, ttr=60))
        refs.append(ref_of(server, job_id))
    if close:
        run_to_end(server, close_batch(opened.ref(1)))
    return opened, refs


def ref_of(server: ModelServer, job_id: int) -> BatchRef:
    ref = read_batch_ref(json.loads(server.jobs[job_id].body)["batch"])
    assert ref is not None
    return ref


def fired(server: ModelServer, opened: Opened) -> set[str]:
    """The callbacks that fired: no longer parked (kicked to ready)."""
    return {
        kind for kind, job_id in opened.callbacks.items() if server.jobs[job_id].state != "delayed"
    }


def ended(server: ModelServer, ref: BatchRef) -> bool:
    """Whether the job's end is on record: its token deleted (success) or buried."""
    token = server.jobs.get(ref.token)
    return token is None or token.state == "buried"


def interleavings(lengths: list[int]) -> Iterator[list[int]]:
    """Every order of the round trips of exchanges of these lengths (by exchange index)."""
    slots = [i for i, n in enumerate(lengths) for _ in range(n)]
    seen = set()
    for order in itertools.permutations(slots):
        if order not in seen:
            seen.add(order)
            yield list(order)


def rounds(make: Exchange, server_jobs: Callable[[], ModelServer]) -> int:
    """How many round trips ``make``'s exchange takes on a fresh copy of the state."""
    runner = Runner(server_jobs(), make())
    count = 0
    while not runner.done:
        runner.step()
        count += 1
    return count


def setup_two(first: str, second: str) -> tuple[ModelServer, Opened, list[Exchange]]:
    server = ModelServer()
    opened, refs = opened_batch(server, 2)
    ops = {"success": record_success, "burial": record_burial}
    makes: list[Exchange] = [
        lambda: ops[first](refs[0]),
        lambda: ops[second](refs[1]),
    ]
    return server, opened, makes


def run_interleaved(server: ModelServer, makes: list[Exchange], order: list[int]) -> None:
    runners = [Runner(server, make()) for make in makes]
    for index in order:
        if not runners[index].done:
            runners[index].step()
    for runner in runners:
        runner.finish()


def test_given_a_batch_when_opened_then_callbacks_are_parked_and_the_manifest_buried() -> None:
    server = ModelServer()
    opened, _ = opened_batch(server, 0, close=False)
    for job_id in opened.callbacks.values():
        assert server.jobs[job_id].state == "delayed"
        assert server.jobs[job_id].delay == PARKED
    assert server.jobs[opened.manifest].state == "buried"
    assert server.jobs[opened.timer].tube == TIMERS_TUBE
    assert fired(server, opened) == set()


def test_given_an_empty_batch_when_closed_then_it_succeeds_at_once() -> None:
    server = ModelServer()
    opened = run_to_end(server, open_batch("b1", CALLBACKS, retention=3600))
    assert run_to_end(server, close_batch(opened.ref(1))) == ("complete", "success")
    assert fired(server, opened) == {"complete", "success"}


def test_given_two_jobs_succeeding_together_then_each_callback_fires_once_in_every_order() -> None:
    lengths = [2, 2]
    for order in interleavings(lengths):
        server, opened, makes = setup_two("success", "success")
        run_interleaved(server, makes, order)
        assert fired(server, opened) == {"complete", "success"}, order
        assert all(server.jobs[j].kicks == 1 for j in (opened.callbacks["complete"],))


def test_given_a_success_and_a_burial_together_then_complete_and_death_fire_never_success() -> None:
    for order in interleavings([2, 4]):
        server, opened, makes = setup_two("success", "burial")
        run_interleaved(server, makes, order)
        assert fired(server, opened) == {"complete", "death"}, order


def test_given_two_burials_together_then_death_fires_once() -> None:
    for order in interleavings([4, 4]):
        server, opened, makes = setup_two("burial", "burial")
        run_interleaved(server, makes, order)
        assert fired(server, opened) == {"complete", "death"}, order
        assert server.jobs[opened.callbacks["death"]].kicks == 1


def test_given_the_close_racing_the_last_job_then_complete_fires_in_every_order() -> None:
    for outcome in ("success", "burial"):
        for order in interleavings([2, 2 if outcome == "success" else 4]):
            server = ModelServer()
            opened, refs = opened_batch(server, 1, close=False)
            op = record_success if outcome == "success" else record_burial
            makes: list[Exchange] = [
                partial(close_batch, opened.ref(1)),
                partial(op, refs[0]),
            ]
            run_interleaved(server, makes, order)
            expected = {"complete", "success"} if outcome == "success" else {"complete", "death"}
            assert fired(server, opened) == expected, (outcome, order)


def test_given_jobs_ending_while_open_then_nothing_fires_until_the_close() -> None:
    server = ModelServer()
    opened, refs = opened_batch(server, 2, close=False)
    assert run_to_end(server, record_success(refs[0])) == ()
    assert run_to_end(server, record_burial(refs[1])) == ()  # death waits for the close too
    assert fired(server, opened) == set()
    assert run_to_end(server, close_batch(opened.ref(1))) == ("death", "complete")


def test_given_a_crash_at_each_round_of_recording_when_the_job_runs_again_it_fires_once() -> None:
    for outcome, op in (("success", record_success), ("burial", record_burial)):
        for crash_after in range(4):
            server = ModelServer()
            opened, refs = opened_batch(server, 2)
            run_to_end(server, record_success(refs[1]))
            runner = Runner(server, op(refs[0]))
            for _ in range(crash_after):
                if not runner.done:
                    runner.step()
            runner.crash()  # the job was not deleted or buried: it runs again, records again
            run_to_end(server, op(refs[0]))
            expected = {"complete", "success"} if outcome == "success" else {"complete", "death"}
            assert fired(server, opened) == expected, (outcome, crash_after)


def test_given_a_success_recorded_when_a_repeat_run_fails_then_the_batch_is_unchanged() -> None:
    server = ModelServer()
    opened, refs = opened_batch(server, 2)
    run_to_end(server, record_success(refs[0]))
    assert run_to_end(server, record_burial(refs[0])) == ()  # its token is gone: a repeat
    run_to_end(server, record_success(refs[1]))
    assert fired(server, opened) == {"complete", "success"}


def test_given_a_crash_at_each_round_of_adding_a_job_then_the_batch_completes_with_the_retry() -> (
    None
):
    for crash_after in range(3):
        server = ModelServer()
        opened, refs = opened_batch(server, 1, close=False)
        runner = Runner(server, add_job(refs[0], "work", body_of, priority=100, ttr=60))
        for _ in range(crash_after):
            runner.step()
        runner.crash()
        # What the dead maker left: a tentative token counted for nothing, a parked job.
        tokens = server.in_tube(batch_tube("b1"))
        assert all(t.pri >= TENTATIVE for t in tokens if t.state == "ready")
        parked = [j for j in server.in_tube("work") if j.state == "delayed"]
        assert all(j.delay == PARKED for j in parked)
        # The maker runs again (the handler that adds it), the batch closes, jobs end.
        job_id = run_to_end(server, add_job(refs[0], "work", body_of, priority=100, ttr=60))
        run_to_end(server, close_batch(opened.ref(1)))
        run_to_end(server, record_success(refs[0]))
        assert fired(server, opened) == set(), crash_after  # the retried job still counts
        run_to_end(server, record_success(ref_of(server, job_id)))
        assert fired(server, opened) == {"complete", "success"}, crash_after


def test_given_a_job_added_by_a_job_then_the_batch_waits_for_it() -> None:
    server = ModelServer()
    opened, refs = opened_batch(server, 1)
    child = run_to_end(server, add_job(refs[0], "work", body_of, priority=100, ttr=60))
    assert server.jobs[child].state == "ready"  # let go only once its token counts
    run_to_end(server, record_success(refs[0]))  # the parent ends first
    assert fired(server, opened) == set()
    run_to_end(server, record_success(ref_of(server, child)))
    assert fired(server, opened) == {"complete", "success"}


def test_given_a_buried_job_kicked_when_it_then_succeeds_then_success_fires() -> None:
    server = ModelServer()
    opened, refs = opened_batch(server, 2)
    run_to_end(server, record_success(refs[0]))
    run_to_end(server, record_burial(refs[1]))
    assert fired(server, opened) == {"complete", "death"}
    run_to_end(server, record_success(refs[1]))  # kicked by an operator, then it worked
    assert fired(server, opened) == {"complete", "death", "success"}
    assert server.jobs[opened.callbacks["complete"]].kicks == 1  # complete fired once only


def test_given_a_batch_then_its_status_counts_pending_buried_and_fired() -> None:
    server = ModelServer()
    opened, refs = opened_batch(server, 3)
    run_to_end(server, record_success(refs[0]))
    run_to_end(server, record_burial(refs[1]))
    status = run_to_end(server, read_status("b1"))
    assert status is not None
    assert (status.counts.pending, status.counts.buried, status.open) == (1, 1, False)
    assert status.manifest is not None
    assert status.manifest.opener == opened.opener
    assert dict(status.fired) == {"death": True, "complete": False, "success": False}
    assert run_to_end(server, read_status("nope")) is None


def timer_of(server: ModelServer, opened: Opened) -> p.Reserved:
    conn = server.connect()
    (reserved,) = server.run(conn, [p.ReserveJob(opened.timer)])
    assert isinstance(reserved, p.Reserved)
    server.close(conn)  # the keeper's own connection holds it below
    return reserved


def keep(server: ModelServer, opened: Opened) -> str:
    reserved = timer_of(server, opened)
    runner = Runner(server, expire(reserved))
    server.run(runner.conn, [p.ReserveJob(opened.timer)])
    return str(runner.finish())


def test_given_a_complete_batch_when_its_timer_comes_then_it_is_forgotten() -> None:
    server = ModelServer()
    opened, refs = opened_batch(server, 2)
    run_to_end(server, record_success(refs[0]))
    run_to_end(server, record_burial(refs[1]))
    assert keep(server, opened) == "complete: forgotten"
    assert server.in_tube(batch_tube("b1")) == []
    assert opened.callbacks["success"] not in server.jobs  # never fired: deleted
    assert server.jobs[opened.callbacks["complete"]].state == "ready"  # fired: left alone
    assert opened.timer not in server.jobs


def test_given_a_running_batch_when_its_timer_comes_then_it_waits_again() -> None:
    server = ModelServer()
    opened, _ = opened_batch(server, 1)
    assert keep(server, opened).startswith("1 jobs pending")
    assert server.jobs[opened.timer].state == "delayed"
    assert fired(server, opened) == set()


def test_given_a_batch_never_closed_when_its_timer_comes_then_it_is_dropped() -> None:
    server = ModelServer()
    opened, _ = opened_batch(server, 1, close=False)
    assert keep(server, opened) == "never closed: dropped"
    assert server.in_tube(batch_tube("b1")) == []
    assert all(job_id not in server.jobs for job_id in opened.callbacks.values())


@settings(max_examples=300, deadline=None)
@given(
    outcomes=st.lists(st.sampled_from(["success", "burial"]), min_size=1, max_size=5),
    schedule=st.lists(st.integers(0, 10), max_size=60),
    crashes=st.sets(st.integers(0, 5), max_size=3),
    close_at=st.integers(0, 30),
)
def test_any_schedule_fires_each_callback_once_and_only_after_the_last_job_ended(
    outcomes: list[str], schedule: list[int], crashes: set[int], close_at: int
) -> None:
    """Jobs end (success or burial) in any interleaving, the close anywhere among them, some
    recordings cut by a crash and run again: once all have ended, complete has fired once,
    success iff no burial, death iff a burial; complete never fired before every job's end
    was on record and the batch closed."""
    server = ModelServer()
    opened, refs = opened_batch(server, len(outcomes), close=False)
    ops = {"success": record_success, "burial": record_burial}
    runners = [Runner(server, ops[o](ref)) for o, ref in zip(outcomes, refs, strict=True)]
    closer: Runner | None = None
    crashed: set[int] = set()
    for tick, pick in enumerate(schedule):
        if tick == close_at and closer is None:
            closer = Runner(server, close_batch(opened.ref(1)))
        live = [i for i, r in enumerate(runners) if not r.done]
        if not live:
            break
        index = live[pick % len(live)]
        if index in crashes and index not in crashed:
            crashed.add(index)
            runners[index].crash()
            runners[index] = Runner(server, ops[outcomes[index]](refs[index]))  # runs again
            continue
        runners[index].step()
        if closer is not None and not closer.done:
            closer.step()
        if "complete" in fired(server, opened):  # then every job's end is on record
            assert all(ended(server, ref) for ref in refs)
            assert opened.opener not in server.jobs  # and the batch was closed
    for runner in runners:
        runner.finish()
    (closer or Runner(server, close_batch(opened.ref(1)))).finish()
    expected = {"complete"}
    expected |= {"death"} if "burial" in outcomes else {"success"}
    assert fired(server, opened) == expected


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("b1", 'envelope "batch" must be an object'),
        ({"token": 2, "opener": 1}, 'no valid "id"'),
        ({"id": "B1!", "token": 2, "opener": 1}, 'no valid "id"'),
        ({"id": "b1", "opener": 1}, '"token" must be a job id'),
        ({"id": "b1", "token": 0, "opener": 1}, '"token" must be a job id'),
        ({"id": "b1", "token": 2, "opener": True}, '"opener" must be a job id'),
        ({"id": "b1", "token": 2, "opener": 1, "complete": "3"}, "complete must be a job id"),
    ],
)
def test_given_a_malformed_batch_member_then_the_body_is_bad_and_says_why(
    member: object, why: str
) -> None:
    body = json.dumps({"task": "work", "batch": member}).encode()
    with pytest.raises(BadEnvelope, match=re.escape(why)):
        read_envelope(body)


def test_given_a_batch_member_then_the_envelope_reads_it_back() -> None:
    ref = BatchRef("b1", 7, 3, {"complete": 5}, 1_700_000_000)
    envelope = read_envelope(json.dumps({"task": "work", "batch": ref.to_json()}).encode())
    assert envelope.batch == ref
