"""Enqueue-time de-duplication (`unique_for`) against a real beanstalkd: sequential puts of
one id never duplicate, an expired marker lets the id in again and is deleted, the daemon's
sweeper deletes markers of ids never put again, and two producers racing on each of 100 ids
put each at most twice (the race window; its size is the benchmark's: `--scenario dedup`)."""

from __future__ import annotations

import threading

import greenstalk
import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.waiting import wait_until_sync
from tubeworker.beanstalk.client import Address, connect
from tubeworker.producer import AsyncProducer, InvalidJob, Producer
from tubeworker.producing.dedup import dedup_tube
from tubeworker.runtime.records import sweep_dedup_markers


def _jobs(server: BeanstalkdProcess, tube: str) -> int:
    with greenstalk.Client((server.host, server.port)) as client:
        try:
            return int(client.stats_tube(tube)["current-jobs-ready"])
        except greenstalk.NotFoundError:
            return 0


def test_given_the_same_id_again_then_it_is_a_duplicate_of_the_first(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with Producer([beanstalkd.address]) as producer:
        first = producer.enqueue("mail", "send", {"n": 1}, id="order-1", unique_for="1m")
        again = producer.enqueue("mail", "send", {"n": 1}, id="order-1", unique_for="1m")
        other = producer.enqueue("mail", "send", {"n": 2}, id="order-2", unique_for="1m")
        assert not first.duplicate
        assert again.duplicate
        assert int(again) == int(first)
        assert not other.duplicate
        assert producer.statistics().duplicates_skipped == 1
        with pytest.raises(InvalidJob, match="unique_for needs id="):
            producer.enqueue("mail", "send", {}, unique_for="1m")
    assert _jobs(beanstalkd, "mail") == 2


def test_given_an_expired_marker_then_the_id_goes_in_again(beanstalkd: BeanstalkdProcess) -> None:
    marker = dedup_tube("order-9")
    with Producer([beanstalkd.address]) as producer:
        producer.enqueue("mail", "send", {}, id="order-9", unique_for=1)
        wait_until_sync(lambda: _jobs(beanstalkd, marker) == 1, timeout=5, what="expiry")
        later = producer.enqueue("mail", "send", {}, id="order-9", unique_for=1)
        assert not later.duplicate
    assert _jobs(beanstalkd, "mail") == 2
    assert _jobs(beanstalkd, marker) == 0  # the expired marker went; the new one waits


async def test_given_the_trio_producer_then_the_same(beanstalkd: BeanstalkdProcess) -> None:
    async with AsyncProducer([beanstalkd.address]) as producer:
        first = await producer.enqueue("mail", "send", {}, id="a", unique_for="1m")
        again = await producer.enqueue("mail", "send", {}, id="a", unique_for="1m")
    assert again.duplicate
    assert int(again) == int(first)


async def test_given_markers_of_ids_never_put_again_then_the_sweeper_deletes_them(
    beanstalkd: BeanstalkdProcess,
) -> None:
    async with AsyncProducer([beanstalkd.address]) as producer:
        for n in range(3):
            await producer.enqueue("mail", "send", {}, id=f"gone-{n}", unique_for=1)
    with trio.fail_after(5):
        while _jobs(beanstalkd, dedup_tube("gone-2")) == 0:
            await trio.sleep(0.05)
    client = await connect(Address(beanstalkd.host, beanstalkd.port))
    try:
        assert await sweep_dedup_markers(client) == 3
    finally:
        await client.aclose()
    assert all(_jobs(beanstalkd, dedup_tube(f"gone-{n}")) == 0 for n in range(3))


def test_given_two_producers_racing_then_no_id_is_put_more_than_twice(
    beanstalkd: BeanstalkdProcess,
) -> None:
    ids = [f"race-{n}" for n in range(100)]
    barrier = threading.Barrier(2)

    def produce() -> None:
        with Producer([beanstalkd.address]) as producer:
            for key in ids:
                barrier.wait()
                producer.enqueue("race", "send", {"id": key}, id=key, unique_for="1m")

    threads = [threading.Thread(target=produce) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    put = _jobs(beanstalkd, "race")
    assert 100 <= put <= 200
    with Producer([beanstalkd.address]) as producer:  # and afterwards, every id is known
        assert all(producer.enqueue("race", "s", {}, id=k, unique_for="1m").duplicate for k in ids)
