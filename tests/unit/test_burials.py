"""Burial records, their pure parts: tracebacks kept within bounds, bodies within beanstalkd's
job size, records of any version read, and which of a job's records is the latest."""

from __future__ import annotations

import json

import pytest

from tubeworker.beanstalk import protocol as p
from tubeworker.burials import (
    MAX_RECORD_BYTES,
    MAX_TRACEBACK,
    BurialRecord,
    _decode,
    _recency,
    format_traceback,
    new_record,
    trim_traceback,
)

NOW = 1_700_000_000.0


def stats(*, state: str = "buried", age: int = 10, kicks: int = 0, tube: str = "t") -> p.JobStats:
    return p.JobStats(
        id=5, tube=tube, state=state, pri=1024, age=age, delay=0, ttr=60, time_left=0,
        file=0, reserves=1, timeouts=0, releases=0, buries=1, kicks=kicks,
    )  # fmt: skip


def record(**fields: object) -> BurialRecord:
    values: dict[str, object] = {
        "job_id": 5,
        "tube": "t",
        "created_at": NOW - 10,
        "buried_at": NOW,
        "cause": "handler_error",
        "reason": "ValueError: x",
        "attempt": 1,
        **fields,
    }
    return BurialRecord(**values)  # type: ignore[arg-type]


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def deep(depth: int) -> None:
    if depth:
        deeper(depth - 1)
    raise ValueError("at the bottom")


def deeper(depth: int) -> None:  # frames that alternate: Python prints each of them
    deep(depth)


# --------------------------------------------------------------------------- tracebacks


def test_given_a_short_traceback_then_it_is_kept_whole_as_python_prints_it() -> None:
    try:
        deep(2)
    except ValueError as exc:
        text = format_traceback(exc)
    assert text.startswith("Traceback (most recent call last):\n")
    assert (text.count(", in deep\n"), text.count(", in deeper\n")) == (3, 2)
    assert text.endswith("ValueError: at the bottom\n")


def test_given_a_long_traceback_then_its_end_is_kept_from_a_line_start() -> None:
    try:
        deep(200)
    except ValueError as exc:
        text = format_traceback(exc)
        whole = "".join(__import__("traceback").format_exception(exc))
    assert len(whole) > MAX_TRACEBACK
    assert len(text) <= MAX_TRACEBACK
    assert text.startswith("(earlier lines cut)\n  File ")
    assert text.endswith("ValueError: at the bottom\n")
    assert whole.endswith(text.removeprefix("(earlier lines cut)\n"))


def test_given_a_huge_message_then_the_exception_line_is_kept_but_cut() -> None:
    exc = raised(ValueError("x" * 50_000))
    text = format_traceback(exc)
    assert len(text) <= MAX_TRACEBACK
    last = text.splitlines()[-1]
    assert last.startswith("ValueError: xxx")
    assert last.endswith("…")
    assert len(last) < 1000
    assert "Traceback (most recent call last):" in text


def test_given_a_chained_error_then_its_cause_is_in_the_traceback() -> None:
    try:
        try:
            deep(0)
        except ValueError as exc:
            raise RuntimeError("could not parse") from exc
    except RuntimeError as exc:
        text = format_traceback(exc)
    assert "ValueError: at the bottom" in text
    assert "The above exception was the direct cause" in text
    assert text.endswith("RuntimeError: could not parse\n")


def test_given_an_exception_group_then_its_tree_is_cut_from_the_top() -> None:
    group = raised(ExceptionGroup("two failed", [ValueError("a" * 3000), KeyError("b" * 3000)]))
    text = format_traceback(group)
    assert len(text) <= MAX_TRACEBACK
    assert text.startswith("(earlier lines cut)\n")
    assert "KeyError" in text


def test_trim_keeps_text_that_fits() -> None:
    assert trim_traceback("a\nb\n", "b\n", 10) == "a\nb\n"


# --------------------------------------------------------------------------- bodies


def test_given_the_costliest_characters_then_the_body_stays_within_its_bound() -> None:
    # Every character escaped by JSON as a surrogate pair (12 bytes) or \u00XX (6 bytes).
    emoji_frames = "".join(f'  File "x.py", line {i}\n    😀😀😀😀😀😀😀😀\n' for i in range(200))
    traceback = trim_traceback(emoji_frames + "ValueError: 😀\n", "ValueError: 😀\n")
    worst = new_record(5, stats(tube="t" * 200), "handler_error", "\x1b😀" * 1000, 3,
                       traceback=traceback)  # fmt: skip
    body = worst.to_body()
    assert len(body) <= MAX_RECORD_BYTES <= 65_535 // 2
    kept = json.loads(body)["traceback"]
    assert kept.startswith("(earlier lines cut)\n  File ")
    assert kept.endswith("ValueError: 😀\n")
    assert len(json.loads(body)["reason"]) == 1000


def test_given_no_traceback_then_the_body_has_no_such_field() -> None:
    body = json.loads(new_record(5, stats(), "bad_body", "not JSON", 1).to_body())
    assert "traceback" not in body
    assert body["kicks"] == 0


# --------------------------------------------------------------------------- reading


def test_given_a_record_from_before_tracebacks_and_kicks_then_it_reads_fine() -> None:
    old = b'{"job_id":5,"tube":"t","created_at":1.5,"buried_at":2.0,"cause":"poison",' \
          b'"reason":"r","attempt":3}'  # fmt: skip
    decoded = _decode(p.Reserved(9, old))
    assert decoded == record(created_at=1.5, buried_at=2.0, cause="poison", reason="r",
                             attempt=3, record_id=9)  # fmt: skip
    assert (decoded.kicks, decoded.traceback) == (None, "")


def test_given_a_record_with_fields_of_a_later_version_then_they_are_ignored() -> None:
    body = json.loads(record(kicks=1, traceback="T").to_body())
    body["spans"] = [1, 2]
    assert _decode(p.Reserved(9, json.dumps(body).encode())) == record(
        kicks=1, traceback="T", record_id=9
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"job_id": 5}',
        json.dumps({**json.loads(record().to_body()), "job_id": "5"}).encode(),
        json.dumps({**json.loads(record().to_body()), "attempt": True}).encode(),
        json.dumps({**json.loads(record().to_body()), "traceback": 7}).encode(),
    ],
)
def test_given_garbage_then_it_is_no_record(body: bytes) -> None:
    assert _decode(p.Reserved(9, body)) is None


def test_a_record_describes_its_buried_job_until_the_job_is_kicked() -> None:
    now = NOW
    assert record(kicks=0).describes(stats(kicks=0), now)
    assert not record(kicks=0).describes(stats(kicks=1), now)  # kicked, buried again since
    assert record(kicks=None).describes(stats(kicks=1), now)  # an old record: cannot tell
    assert not record().describes(stats(state="ready"), now)
    assert not record().describes(stats(age=100), now)  # the id was reused by another job


def test_the_latest_record_is_the_later_attempt_whatever_the_order_written() -> None:
    later = record(attempt=2, buried_at=NOW - 50, record_id=3)  # a slower clock, written first
    earlier = record(attempt=1, buried_at=NOW, record_id=8)
    assert max([later, earlier], key=_recency) is later
    assert max([earlier, later], key=_recency) is later
    same = record(attempt=2, buried_at=NOW, record_id=9)
    assert max([same, later], key=_recency) is same


def test_given_an_id_key_then_the_record_keeps_it_and_older_records_read_without() -> None:
    keyed = record(id_key="order-42-receipt")
    decoded = _decode(p.Reserved(9, keyed.to_body()))
    assert decoded is not None
    assert decoded.id_key == "order-42-receipt"
    plain = record()
    assert "id_key" not in json.loads(plain.to_body())  # records stay as they were
    old = _decode(p.Reserved(9, plain.to_body()))
    assert old is not None
    assert old.id_key is None
    made = new_record(5, stats(), "handler_bury", "no", 1, id_key="k")
    assert made.id_key == "k"
