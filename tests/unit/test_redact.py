"""Redaction of payload fields in bodies shown to people (tubeworker.redact, pure)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tubeworker.redact import MASK, mask_path, parse_paths, paths_from_env, redact_body, redact_text

CARD = parse_paths(["payload.card_number", "payload.customer.email", "payload.items.sku"])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


def test_given_paths_then_they_parse_to_the_fields_under_the_payload() -> None:
    assert parse_paths(["payload.a", " payload.b.c ", "meta.x", "payload", "payload.", ""]) == (
        ("a",),
        ("b", "c"),
    )
    assert paths_from_env({"TUBEWORKER_REDACT": "payload.card,payload.customer.email"}) == (
        ("card",),
        ("customer", "email"),
    )
    assert paths_from_env({}) == ()


def test_given_an_envelope_then_nested_fields_and_list_elements_are_masked() -> None:
    envelope = {
        "task": "charge",
        "payload": {
            "card_number": "4111 1111 1111 1111",
            "customer": {"email": "ada@example.com", "name": "Ada"},
            "items": [{"sku": "A1", "n": 2}, {"n": 3}, "loose", {"sku": "B2"}],
        },
        "meta": {"card_number": "kept: not under the payload"},
    }
    shown = json.loads(redact_text(json.dumps(envelope), CARD))
    assert shown["payload"] == {
        "card_number": MASK,
        "customer": {"email": MASK, "name": "Ada"},
        "items": [{"sku": MASK, "n": 2}, {"n": 3}, "loose", {"sku": MASK}],
    }
    assert shown["meta"] == envelope["meta"]
    assert shown["task"] == "charge"


@given(st.text())
def test_given_any_text_then_what_is_not_an_envelope_passes_unchanged(text: str) -> None:
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and "payload" in data:
        return  # an envelope: the next tests
    assert redact_text(text, CARD) is text
    assert redact_body(text.encode(), CARD) == text.encode()


@given(json_values)
def test_given_any_json_that_is_not_an_envelope_then_it_passes_unchanged(value: Any) -> None:
    if isinstance(value, dict):
        value.pop("payload", None)
    text = json.dumps(value)
    assert redact_text(text, CARD) is text


@given(st.dictionaries(st.text(max_size=5), json_values, max_size=4), json_values)
def test_given_any_envelope_then_only_the_named_fields_change(
    payload: dict[str, Any], secret: Any
) -> None:
    payload["card_number"] = secret
    text = json.dumps({"task": "t", "payload": payload})
    shown = json.loads(redact_text(text, CARD))
    assert shown["payload"]["card_number"] == MASK
    for key, value in payload.items():
        if key not in ("card_number", "customer", "items"):
            assert shown["payload"][key] == value
    assert shown["task"] == "t"
    # masking is idempotent: what is shown again shows the same
    again = redact_text(json.dumps(shown), CARD)
    assert json.loads(again) == shown


@given(st.binary())
def test_given_bytes_that_are_not_utf8_then_they_pass_unchanged(body: bytes) -> None:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        assert redact_body(body, CARD) is body


def test_given_no_paths_then_nothing_is_parsed_or_changed() -> None:
    text = '{"payload": {"card_number": "4111"}}'
    assert redact_text(text, ()) is text
    assert redact_body(text.encode(), parse_paths([])) == text.encode()
    assert json.loads(redact_body(text.encode(), CARD)) == {"payload": {"card_number": MASK}}


@given(st.text(max_size=8), st.integers())
def test_given_a_payload_then_mask_path_masks_the_path_in_dicts_and_lists(
    name: str, n: int
) -> None:
    payload = {"card": {"number": str(n)}, "items": [{"sku": 1, "secret": name}], "name": name}
    assert mask_path(payload, ("card", "number"))
    assert mask_path(payload, ("items", "secret"))
    assert not mask_path(payload, ("missing",))
    assert payload["card"] == {"number": MASK}
    assert payload["items"] == [{"sku": 1, "secret": MASK}]
    assert payload["name"] == name
    assert str(n) not in json.dumps(payload["card"])
