"""Signed envelopes: keys files, signing, verification, rotation, dispatch's burials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tubeworker.beanstalk.protocol import JobStats
from tubeworker.config import RetrySettings
from tubeworker.job import Job
from tubeworker.producer import make_envelope
from tubeworker.runtime.dispatch import DispatchRules, Plan, plan_job
from tubeworker.runtime.outcome import BuryJob, Cause
from tubeworker.security.keys import KeysError, parse_keys
from tubeworker.security.signing import sign, verify

NEW = base64.b64encode(b"n" * 32).decode()
OLD = base64.b64encode(b"o" * 40).decode()
RING = parse_keys(f"# keys\nk-new: {NEW}\n\nk-old: {OLD}\n")
OLD_FIRST = parse_keys(f"k-old: {OLD}\n")


def test_given_a_keys_file_then_the_first_key_is_current_and_all_are_known() -> None:
    assert RING.current == "k-new"
    assert RING.keys == {"k-new": b"n" * 32, "k-old": b"o" * 40}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "no key"),
        ("just-a-line", "expected 'ID: BASE64 SECRET'"),
        ("k: not base64!", "not base64"),
        (f"k: {base64.b64encode(b'short').decode()}", "at least 32"),
        (f"k: {NEW}\nk: {NEW}", "twice"),
        (f"bad id: {NEW}", "expected"),
    ],
)
def test_given_a_bad_keys_file_then_the_line_is_named(text: str, words: str) -> None:
    with pytest.raises(KeysError, match=words):
        parse_keys(text, source="keys.txt")


def test_given_a_signed_body_then_its_bytes_are_as_documented() -> None:
    body = sign({"task": "t", "payload": {"a": 1}}, RING)
    unsigned, _, tail = body.rpartition(b',"sig":"')
    text = unsigned + b"}"
    assert json.loads(text) == {"task": "t", "payload": {"a": 1}, "kid": "k-new"}
    expected = hmac.new(b"n" * 32, text, hashlib.sha256).hexdigest()
    assert tail == expected.encode() + b'"}'
    assert verify(body, RING, required=True) is None


@given(
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
    st.data(),
)
def test_given_any_envelope_then_it_verifies_and_any_changed_byte_fails(
    payload: dict[str, Any], data: st.DataObject
) -> None:
    body = sign({"task": "t", "payload": payload}, RING)
    assert verify(body, RING, required=True) is None
    index = data.draw(st.integers(0, len(body) - 1))
    changed = bytearray(body)
    changed[index] = (changed[index] + 1) % 256
    assert verify(bytes(changed), RING, required=True) is not None


def test_given_rotation_then_old_and_new_signatures_pass_and_unknown_keys_fail() -> None:
    assert verify(sign({"task": "t"}, OLD_FIRST), RING, required=True) is None
    assert verify(sign({"task": "t"}, RING), RING, required=True) is None
    assert verify(sign({"task": "t"}, RING), OLD_FIRST, required=True) == "unknown key 'k-new'"


def test_given_each_failure_then_the_reason_says_which_check() -> None:
    signed = sign({"task": "t", "payload": 1}, RING)
    assert "not signed" in (verify(b'{"task":"t"}', RING, required=True) or "")
    assert verify(b'{"task":"t"}', RING, required=False) is None
    no_kid = b'{"task":"t"' + signed[signed.rindex(b',"sig"') :]
    assert verify(no_kid, RING, required=True) == 'it has no key id ("kid")'
    forged = signed.replace(b'"payload":1', b'"payload":2')
    assert "signature mismatch" in (verify(forged, RING, required=True) or "")
    assert "no signing keys" in (verify(signed, None, required=False) or "")


def _stats() -> JobStats:
    return JobStats(7, "t", "reserved", 100, 0, 0, 60, 60, 0, 1, 0, 0, 0, 0)


async def _noop(job: Job) -> None:
    pass


def _rules(*, require: bool) -> DispatchRules:
    from tubeworker.job import spec_of

    spec = spec_of(_noop)
    return DispatchRules(
        RetrySettings(),
        lookup=lambda task: spec if task == "t" else None,
        signing=RING,
        require_signature=require,
    )


def test_given_required_signatures_then_dispatch_buries_unsigned_and_forged_jobs() -> None:
    rules = _rules(require=True)
    signed = make_envelope("t", {"a": 1}, signer=RING)
    assert isinstance(plan_job(7, signed, _stats(), rules), Plan)
    unsigned = plan_job(7, make_envelope("t", {"a": 1}), _stats(), rules)
    assert isinstance(unsigned, BuryJob)
    assert unsigned.cause is Cause.BAD_SIGNATURE
    assert unsigned.detail.startswith("bad signature: it is not signed")
    forged = plan_job(7, signed.replace(b'"a":1', b'"a":9'), _stats(), rules)
    assert isinstance(forged, BuryJob)
    assert "signature mismatch" in forged.detail
    optional = _rules(require=False)
    assert isinstance(plan_job(7, make_envelope("t", {}), _stats(), optional), Plan)
    assert isinstance(plan_job(7, signed.replace(b'"a":1', b'"a":9'), _stats(), optional), BuryJob)
