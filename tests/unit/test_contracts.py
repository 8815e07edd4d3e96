"""Payload contracts: types and versions a handler declares, checked at put and at run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from tubeworker import PayloadInvalid, handler
from tubeworker.beanstalk.protocol import JobStats
from tubeworker.config import RetrySettings
from tubeworker.contracts import MAX_REASON, TooNew, make_contract
from tubeworker.envelope import BadEnvelope, encode_envelope, read_envelope
from tubeworker.job import Job, spec_of
from tubeworker.producer import InvalidJob, make_envelope
from tubeworker.runtime.dispatch import DispatchRules, Plan, plan_job
from tubeworker.runtime.outcome import BuryJob, Cause
from tubeworker.testing import run


class Address(BaseModel):
    city: str
    zip: str = Field(pattern=r"^\d{5}$")


class SendWelcome(BaseModel):
    user_id: int
    email: str
    address: Address | None = None
    tags: list[str] = []


class SendWelcomeV2(BaseModel):
    user_id: int
    email: str
    locale: str


def v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "locale": "en"}


@handler(payload=SendWelcome)
async def send_welcome(job: Job) -> None:
    assert isinstance(job.payload, SendWelcome)


@handler(payload=SendWelcomeV2, version=2, upcast={1: v1_to_v2})
async def send_welcome_v2(job: Job) -> None:
    assert isinstance(job.payload, SendWelcomeV2)
    job.log.info("locale", locale=job.payload.locale)


# --------------------------------------------------------------------------- the contract


def test_given_a_valid_payload_then_the_handler_gets_the_model() -> None:
    contract = spec_of(send_welcome).contract
    assert contract is not None
    value = contract.accept({"user_id": "42", "email": "a@example.org"}, task="w")
    assert value == SendWelcome(user_id=42, email="a@example.org")


def test_given_an_invalid_payload_then_each_failing_field_is_named_with_its_path() -> None:
    contract = spec_of(send_welcome).contract
    assert contract is not None
    with pytest.raises(PayloadInvalid) as caught:
        contract.accept(
            {"user_id": "x", "address": {"city": "Berlin", "zip": "1"}, "tags": ["a", 3]},
            task="send-welcome",
        )
    error = caught.value
    assert isinstance(error, InvalidJob)  # what a producer's caller already catches
    assert error.task == "send-welcome"
    paths = [problem.split(":")[0] for problem in error.problems]
    assert paths == [
        "payload.user_id",
        "payload.email",
        "payload.address.zip",
        "payload.tags[1]",
    ]
    assert "payload.user_id: input should be a valid integer" in str(error)


def test_given_very_many_errors_then_the_reason_is_capped() -> None:
    contract = make_contract(dict[str, int], 1, None)
    assert contract is not None
    with pytest.raises(PayloadInvalid) as caught:
        contract.accept({f"field{i}": "x" * 300 for i in range(50)})
    reason = str(caught.value)
    assert len(reason) <= MAX_REASON
    assert len(caught.value.problems) == 50


def test_given_an_older_version_then_upcasters_bring_it_up_to_date() -> None:
    contract = spec_of(send_welcome_v2).contract
    assert contract is not None
    value = contract.accept({"user_id": 1, "email": "e"}, 1)
    assert value == SendWelcomeV2(user_id=1, email="e", locale="en")


def test_given_a_newer_version_then_too_new() -> None:
    contract = spec_of(send_welcome_v2).contract
    assert contract is not None
    with pytest.raises(TooNew) as caught:
        contract.accept({"user_id": 1}, 3, task="send-welcome")
    assert caught.value.known == 2
    assert "left for a newer worker" in str(caught.value)


def test_given_no_upcaster_for_a_version_then_invalid_names_it() -> None:
    contract = make_contract(SendWelcomeV2, 3, {2: lambda p: p})
    assert contract is not None
    with pytest.raises(PayloadInvalid, match="version 1 is no longer accepted"):
        contract.accept({}, 1)


def test_given_an_upcaster_that_raises_then_invalid_names_it() -> None:
    def broken(payload: Any) -> Any:
        raise KeyError("email")

    contract = make_contract(SendWelcomeV2, 2, {1: broken})
    assert contract is not None
    with pytest.raises(PayloadInvalid, match=r"upcaster .*broken from version 1 raised KeyError"):
        contract.accept({}, 1)


@pytest.mark.parametrize(
    ("version", "upcast", "error"),
    [
        (0, None, ValueError),
        (True, None, ValueError),
        (2, {2: v1_to_v2}, ValueError),
        (2, {0: v1_to_v2}, ValueError),
        (2, {1: "not a function"}, TypeError),
    ],
)
def test_given_a_declaration_that_cannot_work_then_it_fails_at_import(
    version: Any, upcast: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        handler(payload=SendWelcome, version=version, upcast=upcast)


def test_given_a_type_pydantic_cannot_validate_then_it_fails_at_import() -> None:
    class NotAType:
        pass

    with pytest.raises(Exception, match="NotAType"):
        handler(payload=NotAType())


def test_given_a_dataclass_model_then_it_validates_too() -> None:
    @dataclass
    class Resize:
        width: int
        height: int

    contract = make_contract(Resize, 1, None)
    assert contract is not None
    assert contract.accept({"width": 1, "height": "2"}) == Resize(1, 2)
    assert contract.dump(Resize(3, 4)) == {"width": 3, "height": 4}


def test_given_a_model_then_its_json_schema_names_its_fields() -> None:
    contract = spec_of(send_welcome).contract
    assert contract is not None
    schema = contract.json_schema()
    assert schema["required"] == ["user_id", "email"]
    assert schema["properties"]["user_id"]["type"] == "integer"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["user_id", "email", "tags", "address", "x"]), JSON))
def test_given_any_payload_then_accept_returns_a_model_or_names_its_fields(
    payload: dict[str, Any],
) -> None:
    contract = spec_of(send_welcome).contract
    assert contract is not None
    problems: tuple[str, ...] = ()
    try:
        value = contract.accept(payload)
    except PayloadInvalid as exc:
        problems = exc.problems or ("(none named)",)
        value = None
    if value is None:
        assert all(problem.startswith("payload") for problem in problems), problems
    else:
        assert isinstance(value, SendWelcome)


# --------------------------------------------------------------------------- the envelope


def test_given_a_version_then_the_envelope_carries_v_and_reads_it_back() -> None:
    body = encode_envelope("t", {"a": 1}, v=3)
    assert json.loads(body)["v"] == 3
    assert read_envelope(body).v == 3
    assert "v" not in json.loads(encode_envelope("t", {}))  # version 1 is written as absent
    assert read_envelope(encode_envelope("t", {})).v == 1


@pytest.mark.parametrize("v", [0, -1, "2", 2.5, True, None, 10**7])
def test_given_a_bad_version_then_the_envelope_is_bad(v: Any) -> None:
    body = json.dumps({"task": "t", "payload": None, "v": v}).encode()
    with pytest.raises(BadEnvelope, match='"v"'):
        read_envelope(body)


# --------------------------------------------------------------------------- dispatch


def _stats() -> JobStats:
    return JobStats(7, "emails", "reserved", 100, 0, 0, 60, 60, 0, 1, 0, 0, 0, 0)


def _rules(**specs: Any) -> DispatchRules:
    found = {name: spec_of(func) for name, func in specs.items()}
    return DispatchRules(RetrySettings(), lookup=found.get)


def test_given_a_malformed_payload_then_dispatch_buries_it_as_schema_without_running() -> None:
    body = encode_envelope("w", {"user_id": "nope", "email": "e"})
    plan = plan_job(7, body, _stats(), _rules(w=send_welcome))
    assert isinstance(plan, BuryJob)
    assert plan.cause is Cause.SCHEMA
    assert "payload.user_id: input should be a valid integer" in plan.detail


def test_given_a_newer_version_then_dispatch_plans_to_leave_it() -> None:
    rules = _rules(w=send_welcome)
    plan = plan_job(7, encode_envelope("w", {"user_id": 1}, v=2), _stats(), rules)
    assert isinstance(plan, Plan)
    assert plan.too_new is not None
    assert "up to 1" in plan.too_new
    assert rules.newer_seen == {("w", 2)}


def test_given_an_untyped_handler_and_a_newer_version_then_it_is_left_too() -> None:
    async def plain_handler(job: Job) -> None:
        pass

    plan = plan_job(7, encode_envelope("p", {}, v=2), _stats(), _rules(p=plain_handler))
    assert isinstance(plan, Plan)
    assert plan.too_new is not None


def test_given_a_typed_bound_pool_then_its_body_is_the_payload() -> None:
    spec = spec_of(send_welcome)
    rules = DispatchRules(RetrySettings(), lookup=lambda _: None, bound=spec, bound_name="w")
    plan = plan_job(7, b'{"user_id": 5, "email": "e"}', _stats(), rules)
    assert isinstance(plan, Plan)
    assert plan.job.payload == SendWelcome(user_id=5, email="e")
    bad = plan_job(7, b"not json", _stats(), rules)
    assert isinstance(bad, BuryJob)
    assert bad.cause is Cause.SCHEMA


# --------------------------------------------------------------------------- at put


def test_given_a_registered_task_then_make_envelope_validates_and_writes_v() -> None:
    contract = spec_of(send_welcome_v2).contract
    assert contract is not None
    contracts = {"w": contract}
    body = make_envelope("w", SendWelcomeV2(user_id=1, email="e", locale="de"), contracts=contracts)
    assert json.loads(body) == {
        "task": "w",
        "payload": {"user_id": 1, "email": "e", "locale": "de"},
        "v": 2,
    }
    with pytest.raises(PayloadInvalid, match=r"payload\.locale: field required"):
        make_envelope("w", {"user_id": 1, "email": "e"}, contracts=contracts)


def test_given_a_model_instance_of_an_unregistered_task_then_its_json_is_sent() -> None:
    body = make_envelope("w", SendWelcome(user_id=1, email="e"), id="order-1")
    data = json.loads(body)
    assert data["payload"]["user_id"] == 1
    assert data["id"] == "order-1"


def test_given_a_bad_id_then_make_envelope_refuses_it() -> None:
    with pytest.raises(InvalidJob, match='"id"'):
        make_envelope("w", {}, id="")


# --------------------------------------------------------------------------- the test kit


def test_given_the_test_kit_then_typed_handlers_run_as_in_the_daemon() -> None:
    assert run(send_welcome, payload=SendWelcome(user_id=1, email="e")).done
    bad = run(send_welcome, payload={"user_id": "x"})
    assert bad.buried
    assert bad.cause == "schema"
    assert not bad.ran
    assert run(send_welcome_v2, payload={"user_id": 1, "email": "e"}, version=1).done
    newer = run(send_welcome_v2, payload={"user_id": 1}, version=3)
    assert newer.retried
    assert newer.cause == "newer_version"
    assert not newer.ran
