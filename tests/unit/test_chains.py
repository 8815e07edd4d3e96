"""Chains: the envelope's "then", the next step's put, job.then(), the test kit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tubeworker import Job, handler
from tubeworker.chains import chain_bodies, next_put
from tubeworker.envelope import BadEnvelope, Step, read_envelope
from tubeworker.testing import run


def test_given_steps_then_the_first_job_carries_the_rest_with_ids() -> None:
    steps = [Step("a", "one", {"n": 1}), Step("b", "two", {"n": 2}, priority=5), Step("c", "three")]
    first = chain_bodies(steps, "c1")
    assert (first.tube, first.priority, first.id) == ("a", 1024, "chain:c1:0")
    envelope = read_envelope(first.body)
    assert (envelope.task, envelope.payload, envelope.id) == ("one", {"n": 1}, "chain:c1:0")
    assert [s.id for s in envelope.then] == ["chain:c1:1", "chain:c1:2"]
    assert envelope.then[0].priority == 5

    second = next_put(envelope.then)
    assert second is not None
    assert (second.tube, second.priority) == ("b", 5)
    after = read_envelope(second.body)
    assert after.id == "chain:c1:1"
    assert [s.task for s in after.then] == ["three"]
    last = next_put(after.then)
    assert last is not None
    assert read_envelope(last.body).then == ()  # the last step carries no "then"
    assert next_put(()) is None


@pytest.mark.parametrize(
    ("then", "words"),
    [
        ("x", "must be a list"),
        ([1], "must be an object"),
        ([{"tube": "t"}], 'no "task"'),
        ([{"task": "t"}], 'no "tube"'),
        ([{"task": "t", "tube": "bad tube!"}], "then"),
        ([{"task": "t", "tube": "t", "priority": -1}], '"priority" must be'),
        ([{"task": "t", "tube": "t", "ttr": 0}], '"ttr" must be'),
        ([{"task": "t", "tube": "t"}] * 101, "at most 100"),
    ],
)
def test_given_a_bad_then_the_envelope_is_bad(then: Any, words: str) -> None:
    body = json.dumps({"task": "x", "payload": None, "then": then}).encode()
    with pytest.raises(BadEnvelope, match="then"):
        read_envelope(body)
    with pytest.raises(BadEnvelope) as caught:
        read_envelope(body)
    assert words in str(caught.value)


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=8))
def test_given_any_chain_then_following_it_visits_every_step_in_order(tasks: list[str]) -> None:
    put = chain_bodies([Step("t", task) for task in tasks], "h")
    seen = []
    while put is not None:
        envelope = read_envelope(put.body)
        seen.append((envelope.task, envelope.id))
        put = next_put(envelope.then)
    assert seen == [(task, f"chain:h:{n}") for n, task in enumerate(tasks)]


def test_given_an_empty_chain_then_it_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        chain_bodies([])


@handler()
async def split(job: Job) -> None:
    for part in job.payload["parts"]:
        job.then("part", {"part": part}, id=f"part-{part}")


def test_given_the_test_kit_then_the_next_step_is_recorded_as_the_daemon_puts_it() -> None:
    body = json.dumps(
        {"task": "split", "payload": {"parts": [1, 2]}, "then": [{"tube": "t", "task": "sum"}]}
    )
    outcome = run(split, body=body, task="split", tube="imports")
    assert outcome.done
    (step,) = outcome.puts  # one put: the first step, carrying the others
    assert (step.tube, step.task, step.payload) == ("imports", "part", {"part": 1})
    rest = read_envelope(step.body).then
    assert [(s.task, s.payload, s.id) for s in rest] == [
        ("part", {"part": 2}, "part-2"),
        ("sum", None, None),
    ]


def test_given_a_failing_job_then_no_step_is_put() -> None:
    @handler()
    async def failing(job: Job) -> None:
        job.then("never")
        raise RuntimeError("no")

    outcome = run(failing, payload={})
    assert outcome.retried
    assert outcome.puts == ()


def test_given_a_job_built_by_hand_then_then_says_it_cannot() -> None:
    job = Job(id=1, tube="t", body=b"", priority=1, ttr=1, attempt=1, max_attempts=1)
    with pytest.raises(RuntimeError, match=r"job.then\(\) is not available"):
        job.then("x")
