"""The producer's spool on a real SQLite file: order, claims, bounds, delays, refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tubeworker.producer import (
    JobTooBig,
    NoServerAvailable,
    PutRequest,
    Receipt,
    Spool,
    SpoolFull,
)
from tubeworker.producing.spool import CLAIM_SECONDS


def request(n: int, *, delay: int = 0, size: int = 0) -> PutRequest:
    body = f'{{"task":"t","payload":{{"n":{n}}}}}'.encode() + b" " * size
    return PutRequest("jobs", body, 1024, delay, 60)


def n_of(request: PutRequest) -> int:
    return int(request.body.split(b'"n":')[1].split(b"}")[0])


def test_given_spooled_jobs_then_a_flush_delivers_them_oldest_first_and_empties_it(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.db")
    for n in range(5):
        spool.add(request(n))
    assert spool.pending == 5
    delivered: list[int] = []
    result = spool.flush(lambda r: delivered.append(n_of(r)) or 1)
    assert delivered == [0, 1, 2, 3, 4]
    assert (result.delivered, result.left, result.error) == (5, 0, None)
    status = spool.status()
    assert (status.jobs, status.bytes, status.oldest) == (0, 0, None)


def test_given_no_server_mid_flush_then_it_stops_there_and_keeps_the_rest_in_order(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.db")
    for n in range(4):
        spool.add(request(n))
    delivered: list[int] = []

    def put(r: PutRequest) -> int:
        if n_of(r) == 2:
            raise NoServerAvailable("down")
        delivered.append(n_of(r))
        return 1

    result = spool.flush(put)
    assert (delivered, result.left) == ([0, 1], 2)
    assert isinstance(result.error, NoServerAvailable)
    spool.flush(lambda r: delivered.append(n_of(r)) or 1)
    assert delivered == [0, 1, 2, 3]


def test_a_job_is_claimed_by_one_flusher_only_until_its_claim_lapses(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool.db")
    second = Spool(tmp_path / "spool.db")  # another process (tubeworker spool flush)
    first.add(request(0))
    first.add(request(1))
    a = first.claim(now=1000.0)
    b = second.claim(now=1000.0)
    assert a is not None
    assert b is not None
    assert (n_of(a[1]), n_of(b[1])) == (0, 1)
    assert second.claim(now=1000.0 + CLAIM_SECONDS - 1) is None
    # the first flusher died mid-put: after its claim lapses, job 0 is delivered again
    again = second.claim(now=1000.0 + CLAIM_SECONDS + 1)
    assert again is not None
    assert again[0] == a[0]


def test_given_a_full_spool_then_spool_full_and_nothing_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=1000)
    spool.add(request(0, size=600))
    with pytest.raises(SpoolFull, match="is full"):
        spool.add(request(1, size=600))
    assert spool.status().jobs == 1
    spool.flush(lambda r: 1)
    spool.add(request(2, size=600))  # room again once delivered


def test_a_delay_counts_from_the_enqueue_not_the_delivery(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.add(request(0, delay=30), now=1000.0)
    claimed = spool.claim(now=1012.0)
    assert claimed is not None
    assert claimed[1].delay == 18
    spool.unclaim(claimed[0])
    late = spool.claim(now=2000.0)
    assert late is not None
    assert late[1].delay == 0


def test_a_job_no_server_will_take_is_kept_with_why_and_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.add(request(0))
    spool.add(request(1))

    def put(r: PutRequest) -> int:
        if n_of(r) == 0:
            raise JobTooBig("over the server's max-job-size", 100, 10)
        return 1

    result = spool.flush(put)
    assert (result.delivered, result.left) == (1, 0)
    (refused,) = spool.status().refused
    assert "max-job-size" in refused[1]


def test_a_receipt_is_the_job_id_or_says_it_was_spooled() -> None:
    stored, spooled = Receipt(42), Receipt(0, spooled=True, spool_id=7)
    assert stored == 42
    assert not stored.spooled
    assert spooled.spooled
    assert spooled.spool_id == 7
    assert "spooled" in repr(spooled)


@settings(max_examples=30, deadline=None)
@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=40))
def test_whatever_fails_every_job_is_delivered_once_in_order(
    tmp_path_factory: pytest.TempPathFactory, outcomes: list[bool]
) -> None:
    spool = Spool(tmp_path_factory.mktemp("spool") / "spool.db")
    jobs = 12
    for n in range(jobs):
        spool.add(request(n))
    delivered: list[int] = []
    attempts = iter([*outcomes, True] * 100)  # a server now and then

    def put(r: PutRequest) -> int:
        if not next(attempts):
            raise NoServerAvailable("down")
        delivered.append(n_of(r))
        return 1

    while spool.pending:
        spool.flush(put)
    assert delivered == list(range(jobs))


def test_a_claim_left_by_a_flusher_killed_on_this_host_is_taken_back_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.add(request(0))
    spool.add(request(1))
    # another process claims the oldest job, then dies without delivering it
    code = (
        "import os, sys; from tubeworker.producer import Spool; "
        f"Spool({str(path)!r}).claim(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert spool.reclaim_dead() == 1
    delivered: list[int] = []
    spool.flush(lambda r: delivered.append(n_of(r)) or 1)
    assert delivered == [0, 1]  # in its place, not after the others
