"""The JSON envelope: good bodies decode, every bad body is a BadEnvelope saying why."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tubeworker.envelope import BadEnvelope, decode_envelope, encode_envelope

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def bad(body: bytes) -> str:
    with pytest.raises(BadEnvelope) as info:
        decode_envelope(body)
    return str(info.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"task": "mail.send", "payload": {"to": "a@b"}}', ("mail.send", {"to": "a@b"})),
        (b'{"task": "t"}', ("t", None)),
        (b'{"task": "t", "payload": [1, 2]}', ("t", [1, 2])),
        (b'  {"payload": 3, "task": "t", "extra": true}\n', ("t", 3)),
        ('{"task": "caf\u00e9", "payload": "\u2603"}'.encode(), ("caf\u00e9", "\u2603")),
    ],
)
def test_given_good_envelope_when_decoded_then_task_and_payload(
    body: bytes, expected: tuple[str, object]
) -> None:
    assert decode_envelope(body) == expected


def test_given_invalid_utf8_when_decoded_then_says_utf8_and_where() -> None:
    message = bad(b'{"task": "\xff"}')
    assert "UTF-8" in message
    assert "byte 10" in message


def test_given_bad_envelope_when_raised_then_it_is_a_value_error() -> None:
    # Callers that only know ValueError (e.g. job.json() users) still catch it.
    with pytest.raises(ValueError, match="JSON"):
        decode_envelope(b"nope")


@pytest.mark.parametrize(
    ("body", "line", "column"),
    [
        (b"nope", 1, 1),
        (b'{"task": "t",}', 1, 14),
        (b'{\n  "task": "t"\n  "payload": 1}', 3, 3),
        (b"", 1, 1),
    ],
)
def test_given_invalid_json_when_decoded_then_says_json_line_and_column(
    body: bytes, line: int, column: int
) -> None:
    message = bad(body)
    assert "JSON" in message
    assert f"line {line} column {column}" in message


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[1, 2]", "list"), (b"3", "int"), (b"2.5", "float"), (b'"task"', "str"), (b"null", "")],
)
def test_given_json_not_an_object_when_decoded_then_must_be_object(body: bytes, kind: str) -> None:
    message = bad(body)
    assert "must be a JSON object" in message
    assert kind in message


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"payload": 1}',
        b'{"task": ""}',
        b'{"task": null}',
        b'{"task": 3}',
        b'{"task": ["a"]}',
        b'{"task": {"name": "a"}}',
        b'{"Task": "a"}',
    ],
)
def test_given_no_task_string_when_decoded_then_says_no_task(body: bytes) -> None:
    assert 'no "task"' in bad(body)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"task": "t", "payload": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    ],
    ids=["open-arrays", "balanced-arrays", "nested-payload"],
)
def test_given_deeply_nested_json_when_decoded_then_bad_envelope_not_recursion(
    body: bytes,
) -> None:
    assert "JSON" in bad(body)


def test_given_integer_over_the_digit_limit_when_decoded_then_bad_envelope() -> None:
    body = b'{"task": "t", "payload": ' + b"1" * 5000 + b"}"
    assert "JSON" in bad(body)


@given(st.text(min_size=1), json_values)
def test_given_any_task_and_payload_when_round_tripped_then_unchanged(
    task: str, payload: object
) -> None:
    assert decode_envelope(encode_envelope(task, payload)) == (task, payload)


def test_given_envelope_when_encoded_then_compact_json_object() -> None:
    body = encode_envelope("mail.send", {"to": "a"})
    assert body == b'{"task":"mail.send","payload":{"to":"a"}}'
    assert json.loads(body) == {"task": "mail.send", "payload": {"to": "a"}}


def _outcome(body: bytes) -> None:
    """Any other exception than BadEnvelope propagates and fails the test."""
    try:
        task, _payload = decode_envelope(body)
    except BadEnvelope as exc:
        message = str(exc)
    else:
        assert isinstance(task, str)
        assert task
        return
    assert message  # a reason to log with the buried job


@given(st.binary(max_size=256))
def test_given_any_bytes_when_decoded_then_result_or_bad_envelope(body: bytes) -> None:
    _outcome(body)


@given(
    st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(["task", "payload", "x"]), json_values).map(
            lambda d: json.dumps(d).encode()
        ),
    ),
    st.binary(max_size=4),
    st.integers(min_value=0, max_value=300),
)
def test_given_json_like_bytes_with_damage_when_decoded_then_result_or_bad_envelope(
    body: bytes, junk: bytes, at: int
) -> None:
    # Near-valid bodies reach deeper into the parser than random bytes do.
    _outcome(body)
    _outcome(body[:at] + junk + body[at:])


def test_an_envelope_may_carry_an_id_which_reaches_the_job() -> None:
    from tubeworker.envelope import read_envelope

    envelope = read_envelope(b'{"task": "t", "payload": 1, "id": "order-42", "later": true}')
    assert (envelope.task, envelope.payload, envelope.id) == ("t", 1, "order-42")
    assert read_envelope(b'{"task": "t", "id": 42}').id == "42"  # a number: its text
    assert read_envelope(b'{"task": "t"}').id is None
    assert encode_envelope("t", 1) == b'{"task":"t","payload":1}'  # no id: as before
    assert read_envelope(encode_envelope("t", 1, id="x")).id == "x"
    for bad in (
        b'{"task": "t", "id": ""}',
        b'{"task": "t", "id": [1]}',
        b'{"task": "t", "id": true}',
    ):
        with pytest.raises(BadEnvelope, match='"id"'):
            read_envelope(bad)
    with pytest.raises(BadEnvelope, match="longer than 200"):
        read_envelope(encode_envelope("t", id="x" * 100).replace(b"x" * 100, b"x" * 201))
