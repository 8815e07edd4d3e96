"""Encrypted secrets: sealed by producers, opened only for the handler, never shown."""

from __future__ import annotations

import base64
import json

import pytest

from tubeworker import Job, handler
from tubeworker.admin_ops import render_body
from tubeworker.beanstalk.protocol import JobStats
from tubeworker.config import RetrySettings
from tubeworker.job import spec_of
from tubeworker.producer import InvalidJob, make_envelope
from tubeworker.runtime.dispatch import DispatchRules, Plan, plan_job
from tubeworker.runtime.outcome import BuryJob, Cause
from tubeworker.security.keys import KeysError, parse_keys
from tubeworker.security.secrets import SecretError, describe_secret, open_secret, seal
from tubeworker.testing import run

KEYS = parse_keys(f"e1: {base64.b64encode(b'k' * 32).decode()}", exact_bytes=32)
OTHER = parse_keys(f"e9: {base64.b64encode(b'z' * 32).decode()}", exact_bytes=32)
CARD = {"card": "4111 1111 1111 1111", "cvc": "123"}


def test_given_a_secret_then_only_its_task_and_keys_open_it() -> None:
    sealed = seal(CARD, "charge", KEYS)
    assert sealed["kid"] == "e1"
    assert "4111" not in json.dumps(sealed)
    assert open_secret(sealed, "charge", KEYS) == CARD
    with pytest.raises(SecretError, match="sealed for another task"):
        open_secret(sealed, "refund", KEYS)
    with pytest.raises(SecretError, match="unknown encryption key 'e1'"):
        open_secret(sealed, "charge", OTHER)
    with pytest.raises(SecretError, match="no encryption keys"):
        open_secret(sealed, "charge", None)
    ct = base64.b64decode(sealed["ct"])
    tampered = {**sealed, "ct": base64.b64encode(bytes([ct[0] ^ 1]) + ct[1:]).decode()}
    with pytest.raises(SecretError, match="changed"):
        open_secret(tampered, "charge", KEYS)
    with pytest.raises(SecretError, match="not base64"):
        open_secret({**sealed, "nonce": "!!"}, "charge", KEYS)
    assert describe_secret(sealed).startswith("encrypted, ")
    assert describe_secret(sealed).endswith("bytes, key e1")


def test_given_a_key_of_the_wrong_size_then_the_keys_file_is_refused() -> None:
    with pytest.raises(KeysError, match="must be 32 bytes"):
        parse_keys(f"e: {base64.b64encode(b'k' * 40).decode()}", exact_bytes=32)


def test_given_a_producer_secret_then_the_body_holds_it_sealed_and_peek_hides_it() -> None:
    body = make_envelope("charge", {"order": 1}, secret=CARD, sealer=KEYS)
    assert b"4111" not in body
    shown = render_body(body).text
    assert "4111" not in shown
    assert "encrypted, " in shown
    assert '"order": 1' in shown
    with pytest.raises(InvalidJob, match="needs encryption keys"):
        make_envelope("charge", {}, secret=CARD)


async def _noop(job: Job) -> None:
    pass


def test_given_dispatch_then_the_secret_is_opened_or_the_job_buried() -> None:
    stats = JobStats(7, "t", "reserved", 100, 0, 0, 60, 60, 0, 1, 0, 0, 0, 0)
    spec = spec_of(_noop)
    rules = DispatchRules(RetrySettings(), lookup=lambda task: spec, encryption=KEYS)
    body = make_envelope("charge", {}, secret=CARD, sealer=KEYS)
    plan = plan_job(7, body, stats, rules)
    assert isinstance(plan, Plan)
    assert plan.job.secret == CARD
    stranger = make_envelope("charge", {}, secret=CARD, sealer=OTHER)
    buried = plan_job(7, stranger, stats, rules)
    assert isinstance(buried, BuryJob)
    assert buried.cause is Cause.BAD_SECRET
    assert "4111" not in buried.detail


def test_given_the_test_kit_then_the_handler_gets_the_secret() -> None:
    seen: list[object] = []

    @handler()
    async def charge(job: Job) -> None:
        seen.append(job.secret)

    assert run(charge, payload={"order": 1}, secret=CARD).done
    assert seen == [CARD]
