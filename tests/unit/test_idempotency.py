"""Consume-side idempotency: a store of keys done, and the handler wrapper."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tubeworker import Duplicate, Job, handler, idempotent
from tubeworker.idempotency import IdempotencyStore, SqliteStore
from tubeworker.job import spec_of
from tubeworker.testing import run


def test_given_a_key_recorded_then_it_is_done_and_recording_again_is_harmless(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "done.sqlite")
    assert isinstance(store, IdempotencyStore)
    assert not store.done("a")
    store.record("a")
    store.record("a")
    assert store.done("a")
    assert SqliteStore(tmp_path / "done.sqlite").done("a")  # durable: another process


def test_given_keep_then_old_keys_are_forgotten(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "done.sqlite", keep=0.0)
    store.record("old")
    store.record("new")  # forgets what is older than keep
    assert not store.done("old")


def test_given_a_transaction_then_key_and_effect_commit_together(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "done.sqlite")
    with store.transaction("k") as db:
        db.execute("CREATE TABLE IF NOT EXISTS receipts (order_id INTEGER)")
        db.execute("INSERT INTO receipts VALUES (1)")
    with pytest.raises(Duplicate), store.transaction("k") as db:
        db.execute("INSERT INTO receipts VALUES (2)")  # never runs

    def failing_effect() -> None:
        with store.transaction("failing") as db:
            db.execute("INSERT INTO receipts VALUES (3)")
            raise RuntimeError("the effect failed")

    with pytest.raises(RuntimeError):
        failing_effect()
    assert not store.done("failing")  # rolled back with the effect
    rows = store._db().execute("SELECT order_id FROM receipts").fetchall()
    assert rows == [(1,)]


def test_given_threads_then_a_key_is_claimed_by_one_transaction(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "done.sqlite")
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait()
        try:
            with store.transaction("same"):
                wins.append(n)
        except Duplicate:
            pass

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1


def test_given_the_same_id_twice_then_the_second_is_a_duplicate(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "done.sqlite")
    calls: list[object] = []

    @handler(max_attempts=3)
    @idempotent(store)
    async def send_receipt(job: Job) -> None:
        calls.append(job.payload)

    assert spec_of(send_receipt).max_attempts == 3  # @handler's options survive either order
    first = run(send_receipt, payload={"order": 1}, id="receipt-1")
    again = run(send_receipt, payload={"order": 1}, id="receipt-1")
    other = run(send_receipt, payload={"order": 2}, id="receipt-2")
    unkeyed = run(send_receipt, payload={"order": 3})
    assert (first.done, first.cause) == (True, "completed")
    assert (again.done, again.cause) == (True, "duplicate")
    assert again.reason == "idempotency key 'receipt-1' was done already"
    assert other.cause == unkeyed.cause == "completed"
    assert calls == [{"order": 1}, {"order": 2}, {"order": 3}]


def test_given_a_failing_handler_then_its_key_is_not_recorded(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "done.sqlite")

    @idempotent(store, key="payload.order_id")
    @handler()
    def charge(job: Job) -> None:  # sync handlers too
        if job.payload.get("fail"):
            raise RuntimeError("card declined")

    assert run(charge, payload={"order_id": 5, "fail": True}).retried
    assert not store.done("5")
    assert run(charge, payload={"order_id": 5}).cause == "completed"
    assert run(charge, payload={"order_id": 5}).cause == "duplicate"
