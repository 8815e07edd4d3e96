"""Burial records, their pure parts: records of any version read, and which of a job's
records is the latest."""

from __future__ import annotations

import json

import pytest

from tubeworker.beanstalk import protocol as p
from tubeworker.burials import BurialRecord, _decode, _recency

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


# --------------------------------------------------------------------------- reading


def test_given_a_record_from_before_kicks_were_kept_then_it_reads_fine() -> None:
    old = b'{"job_id":5,"tube":"t","created_at":1.5,"buried_at":2.0,"cause":"poison",' \
          b'"reason":"r","attempt":3}'  # fmt: skip
    decoded = _decode(p.Reserved(9, old))
    assert decoded == record(created_at=1.5, buried_at=2.0, cause="poison", reason="r",
                             attempt=3, record_id=9)  # fmt: skip
    assert decoded.kicks is None


def test_given_a_record_with_fields_of_a_later_version_then_they_are_ignored() -> None:
    body = json.loads(record(kicks=1).to_body())
    body["spans"] = [1, 2]
    assert _decode(p.Reserved(9, json.dumps(body).encode())) == record(kicks=1, record_id=9)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"job_id": 5}',
        json.dumps({**json.loads(record().to_body()), "job_id": "5"}).encode(),
        json.dumps({**json.loads(record().to_body()), "attempt": True}).encode(),
        json.dumps({**json.loads(record().to_body()), "kicks": "1"}).encode(),
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
