"""The admin commands' pure parts: bodies shown safely, durations, tables. No server."""

from __future__ import annotations

import argparse
import json

import pytest

from tubeworker.beanstalk.client import Address
from tubeworker.beanstalk.protocol import JobStats
from tubeworker.burials import BurialRecord
from tubeworker.cli.admin import (
    EX_DATAERR,
    EX_USAGE,
    AdminError,
    escape_text,
    format_duration,
    hex_dump,
    parse_duration,
    parse_int,
    parse_interval,
    pretty_json,
    render_body,
    render_table,
    server_list,
    single_server,
)
from tubeworker.cli.buried import indented, one_line
from tubeworker.cli.peek import render_job

# --------------------------------------------------------------------------- JSON


def test_given_a_json_object_when_rendered_then_pretty_printed_and_still_json() -> None:
    body = b'{"task":"send","payload":{"user":42,"tags":["a","b"],"empty":{},"none":[]}}'
    shown = render_body(body)
    assert shown.kind == "JSON"
    assert shown.note is None
    assert shown.text == (
        "{\n"
        '  "task": "send",\n'
        '  "payload": {\n'
        '    "user": 42,\n'
        '    "tags": [\n'
        '      "a",\n'
        '      "b"\n'
        "    ],\n"
        '    "empty": {},\n'
        '    "none": []\n'
        "  }\n"
        "}"
    )
    assert json.loads(shown.text) == json.loads(body)


def test_given_json_when_pretty_printed_then_values_are_shown_exactly_as_sent() -> None:
    # Re-indented, never re-encoded: no float rounding, no lost duplicate key, escapes kept.
    text = '{"n": 1.000000000000000001, "k": 1, "k": 2, "s": "a\\"b\\u00e9 , : {"}'
    assert pretty_json(text) == (
        '{\n  "n": 1.000000000000000001,\n  "k": 1,\n  "k": 2,\n  "s": "a\\"b\\u00e9 , : {"\n}'
    )


def test_given_json_with_bidi_and_c1_characters_then_escaped_and_still_valid_json() -> None:
    body = '{"name": "evil\u202etxt.exe", "c1": "\u0085"}'.encode()
    shown = render_body(body)
    assert shown.kind == "JSON"
    assert "\u202e" not in shown.text
    assert "\\u202e" in shown.text
    assert "\\u0085" in shown.text
    assert json.loads(shown.text) == json.loads(body)


def test_given_scalar_json_then_shown_as_json() -> None:
    assert render_body(b"42").kind == "JSON"
    assert render_body(b'"hi"').text == '"hi"'


# --------------------------------------------------------------------------- text


def test_given_text_with_control_characters_then_they_are_escaped() -> None:
    body = "line one\r\nESC:\x1b[31mred\x1b[0m\ttab\x07 é ü \u2066x\u2069".encode()
    shown = render_body(body)
    assert shown.kind == "text"
    assert shown.text == "line one\\r\nESC:\\x1b[31mred\\x1b[0m\ttab\\x07 é ü \\u2066x\\u2069"
    assert "\x1b" not in shown.text
    assert "\r" not in shown.text


def test_given_plain_text_then_shown_as_is() -> None:
    body = "Grüße, 世界 — two\nlines".encode()
    shown = render_body(body)
    assert (shown.kind, shown.text, shown.note) == ("text", body.decode(), None)


def test_given_not_quite_json_then_text() -> None:
    assert render_body(b"{not json").kind == "text"


def test_escape_text_keeps_newlines_and_tabs() -> None:
    assert escape_text("a\tb\nc\x00d\x7fe\x9b") == "a\tb\nc\\0d\\x7fe\\x9b"


# --------------------------------------------------------------------------- binary


def test_given_invalid_utf8_then_a_hex_dump_with_offsets_and_ascii() -> None:
    body = bytes(range(0x3E, 0x3E + 20)) + b"\xff"
    shown = render_body(body)
    assert shown.kind == "binary"
    assert shown.text.splitlines() == [
        "00000000  3e 3f 40 41 42 43 44 45  46 47 48 49 4a 4b 4c 4d  |>?@ABCDEFGHIJKLM|",
        "00000010  4e 4f 50 51 ff                                    |NOPQ.|",
    ]


def test_given_valid_utf8_that_is_mostly_control_bytes_then_binary() -> None:
    assert render_body(b"\x08\x01\x10\x02").kind == "binary"  # a protobuf message
    assert render_body(b"abc\x00def").kind == "binary"  # a NUL


def test_hex_dump_of_nothing_is_empty() -> None:
    assert hex_dump(b"") == ""


def test_given_an_empty_body_then_said_so() -> None:
    assert render_body(b"").kind == "empty"


# --------------------------------------------------------------------------- truncation


def test_given_a_large_binary_body_then_truncated_with_a_note() -> None:
    shown = render_body(b"\xff" * 1000, limit=64)
    assert len(shown.text.splitlines()) == 4
    assert shown.note == "truncated: showing 64 of 1000 bytes; --raw for the whole body"


def test_given_large_text_then_truncated_on_a_character_boundary() -> None:
    body = "é" * 100  # two bytes each
    shown = render_body(body.encode(), limit=51)
    assert shown.text == "é" * 25
    assert shown.note == "truncated: showing 50 of 200 bytes; --raw for the whole body"


def test_given_large_json_then_the_pretty_text_is_truncated() -> None:
    body = json.dumps({"items": list(range(1000))}).encode()
    shown = render_body(body, limit=100)
    assert shown.kind == "JSON"
    assert len(shown.text) == 100
    assert shown.note is not None
    assert shown.note.startswith("truncated: showing 100 of ")


def test_given_limit_zero_then_nothing_is_truncated() -> None:
    shown = render_body(b"x" * 10_000, limit=0)
    assert len(shown.text) == 10_000
    assert shown.note is None


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("30", 30),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        (" 2 h ", 7200),
        ("1.5s", 2),  # rounded up: beanstalkd counts whole seconds
        ("250ms", 1),
        ("1000ms", 1),
        ("1001ms", 2),
        ("0ms", 0),
        ("0.1h", 360),
        ("4294967295", 2**32 - 1),
    ],
)
def test_durations_become_whole_seconds_rounded_up(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-5s", "5 m s", "1e3", "s", "1d", "five", "1,5s"])
def test_bad_durations_are_data_errors_naming_the_option(text: str) -> None:
    with pytest.raises(AdminError, match="bad --delay") as caught:
        parse_duration(text, "--delay")
    assert caught.value.code == EX_DATAERR


@pytest.mark.parametrize("text", ["4294967296", "1193047h", "9" * 5000])
def test_durations_out_of_beanstalkd_range_are_refused(text: str) -> None:
    with pytest.raises(AdminError) as caught:
        parse_duration(text, "--ttr")
    assert caught.value.code == EX_DATAERR


def test_a_watch_interval_keeps_fractions_and_must_be_positive() -> None:
    assert parse_interval("0.5") == 0.5
    assert parse_interval("250ms") == 0.25
    with pytest.raises(AdminError):
        parse_interval("0")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (3725, "1h2m5s"), (90061, "1d1h1m1s")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


def test_parse_int_checks_digits_and_range() -> None:
    assert parse_int("7", "N", 1, 10) == 7
    for bad in ("-1", "0", "11", "x", "1.0"):
        with pytest.raises(AdminError):
            parse_int(bad, "N", 1, 10)


# --------------------------------------------------------------------------- servers, tables


def test_servers_come_from_the_flag_then_the_environment_then_the_default() -> None:
    flag = argparse.Namespace(server=["10.0.0.1:11301"])
    none = argparse.Namespace(server=[])
    env = {"TUBEWORKER_SERVERS": " a:1 , b:2 ,"}
    assert server_list(flag, env) == [Address("10.0.0.1", 11301)]
    assert server_list(none, env) == [Address("a", 1), Address("b", 2)]
    assert server_list(none, {}) == [Address("127.0.0.1", 11300)]
    assert single_server(argparse.Namespace(server=None), env) == Address("a", 1)


def test_a_bad_server_is_a_usage_error() -> None:
    with pytest.raises(AdminError, match="TUBEWORKER_SERVERS") as caught:
        server_list(argparse.Namespace(server=[]), {"TUBEWORKER_SERVERS": "h:99999"})
    assert caught.value.code == EX_USAGE


def test_render_table_aligns_names_left_and_numbers_right() -> None:
    table = render_table(["TUBE", "READY"], [["a", "1"], ["longer", "100"]])
    assert table.splitlines() == ["TUBE    READY", "a           1", "longer    100"]


# --------------------------------------------------------------------------- burials


def _buried_stats(state: str = "buried") -> JobStats:
    return JobStats(
        id=32, tube="shout", state=state, pri=1024, age=65, delay=0, ttr=60, time_left=0,
        file=0, reserves=2, timeouts=0, releases=0, buries=2, kicks=1,
    )  # fmt: skip


def _burial(traceback: str = "") -> BurialRecord:
    return BurialRecord(
        job_id=32,
        tube="shout",
        created_at=1000.0,
        buried_at=1060.0,
        cause="handler_error",
        reason="ValueError: \x1b[31mred\x1b[0m\nsecond line",
        attempt=2,
        kicks=1,
        traceback=traceback,
    )


def test_given_a_buried_job_with_a_record_then_peek_says_why_and_where_safely() -> None:
    traceback = 'Traceback (most recent call last):\n  File "h.py", line 3\nValueError: \x1b[2J\n'
    text = render_job(32, _buried_stats(), b"{}", 100, _burial(traceback), now=1065.0)
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[lines.index("state: buried") + 6 :][:7] == [
        "burial: handler_error, attempt 2, 5s ago",
        "reason: ValueError: \\x1b[31mred\\x1b[0m\\nsecond line",
        "traceback:",
        "  Traceback (most recent call last):",
        '    File "h.py", line 3',
        "  ValueError: \\x1b[2J",
        "body: 2 bytes, JSON",
    ]


def test_given_a_buried_job_without_a_record_or_traceback_then_peek_says_so() -> None:
    bare = render_job(32, _buried_stats(), b"x", 100, None, now=1065.0)
    assert "burial: no recorded reason (buried by another client" in bare
    plain = render_job(32, _buried_stats(), b"x", 100, _burial(), now=1065.0)
    assert "reason: ValueError" in plain
    assert "traceback" not in plain
    ready = render_job(32, _buried_stats("ready"), b"x", 100, None, now=1065.0)
    assert "burial" not in ready


def test_given_reasons_with_newlines_and_escapes_then_table_cells_stay_one_line() -> None:
    assert one_line("a\nb\tc\x1b[0m") == "a\\nb\\tc\\x1b[0m"
    assert indented("Traceback\n  File\x07\n") == "  Traceback\n    File\\x07"
