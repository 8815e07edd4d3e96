"""Batches against a real beanstalkd, below the daemon: what the producers leave in the
server (parked callbacks, tokens counted only once confirmed), the Trio producer's
handle, a handle that refuses to close after a failed add, and the keeper forgetting a
complete batch when its timer comes due (and not one with jobs pending)."""

from __future__ import annotations

import json

import pytest
import trio

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tubeworker.batch_ops import batch_row
from tubeworker.batches.drive import drive
from tubeworker.batches.model import PARKED, batch_tube
from tubeworker.batches.ops import record_success
from tubeworker.beanstalk import protocol as p
from tubeworker.beanstalk.client import Address, Client, connect
from tubeworker.envelope import BatchRef, read_batch_ref
from tubeworker.observe.counters import JobCounters
from tubeworker.observe.events import EventBus
from tubeworker.producer import AsyncProducer, Producer, Step
from tubeworker.producing.batches import BatchUncertain
from tubeworker.producing.errors import ProducerError
from tubeworker.runtime.batch_book import BatchBook, run_batch_keeper
from tubeworker.runtime.outcome import BuryJob, Cause, ReleaseJob


async def client_of(beanstalkd: BeanstalkdProcess) -> Client:
    return await connect(Address(beanstalkd.host, beanstalkd.port), connect_timeout=5)


async def take_all(client: Client, tube: str) -> list[tuple[int, bytes]]:
    """Reserve every ready job of ``tube`` (as a worker would), in order."""
    await client.watch(tube)
    taken = []
    while True:
        reply = await client.request(p.ReserveWithTimeout(0))
        if not isinstance(reply, p.Reserved):
            return taken
        taken.append((reply.id, reply.body))


async def test_given_a_batch_then_its_callbacks_wait_parked_and_its_jobs_carry_their_place(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with Producer([beanstalkd.address]) as producer:
        complete = Step("callbacks", "summary", {"file": "a.csv"})
        with producer.batch(on_complete=complete, description="a.csv") as batch:
            ids = [batch.enqueue("work", "chunk", {"n": n}, id=f"c{n}") for n in range(3)]
    client = await client_of(beanstalkd)
    parked = await client.stats_job(batch.opened.callbacks["complete"])
    assert (parked.state, parked.delay, parked.tube) == ("delayed", PARKED, "callbacks")
    body = json.loads((await client.peek(batch.opened.callbacks["complete"])).body)
    assert body["id"] == f"batch:{batch.id}:complete"
    for job_id in ids:
        stats = await client.stats_job(job_id)
        assert (stats.state, stats.kicks) == ("ready", 1)  # let go by a kick, once counted
        envelope = json.loads((await client.peek(job_id)).body)
        ref = read_batch_ref(envelope["batch"])
        assert ref is not None
        token = await client.stats_job(ref.token)
        assert (token.state, token.pri, token.tube) == ("delayed", 0, batch_tube(batch.id))
    row = await batch_row(client, Address(beanstalkd.host, beanstalkd.port), batch.id)
    assert row is not None
    assert (row.state, row.pending, row.description) == ("running", 3, "a.csv")
    await client.aclose()


async def test_given_the_trio_producer_then_a_batch_completes_when_its_jobs_succeed(
    beanstalkd: BeanstalkdProcess,
) -> None:
    async with AsyncProducer([beanstalkd.address]) as producer:
        success = Step("callbacks", "done", {})
        async with await producer.batch(on_success=success) as batch:
            for n in range(3):
                await batch.enqueue("work", "chunk", {"n": n})
    client = await client_of(beanstalkd)
    for job_id, body in await take_all(client, "work"):
        ref = read_batch_ref(json.loads(body)["batch"])
        assert ref is not None
        fired = await drive(client, record_success(ref))
        await client.delete(job_id)
    assert fired == ("success",)  # the last one's end fired it
    assert (await client.stats_job(batch.opened.callbacks["success"])).state == "ready"
    await client.aclose()


def test_given_a_failed_add_then_the_batch_refuses_to_close(
    beanstalkd: BeanstalkdProcess,
) -> None:
    with Producer([beanstalkd.address]) as producer:
        batch = producer.batch(on_complete=Step("callbacks", "done", {}))
        batch.enqueue("work", "chunk", {"n": 1})
        beanstalkd.stop()
        with pytest.raises(ProducerError):
            batch.enqueue("work", "chunk", {"n": 2})
        with pytest.raises(BatchUncertain, match="left open"):
            batch.close()


async def test_given_a_complete_batch_when_its_timer_comes_then_the_keeper_forgets_it(
    beanstalkd: BeanstalkdProcess,
) -> None:
    address = Address(beanstalkd.host, beanstalkd.port)
    with Producer([beanstalkd.address]) as producer:
        callbacks = {
            "on_success": Step("callbacks", "ok", {}),
            "on_death": Step("callbacks", "no", {}),
        }
        with producer.batch(**callbacks, retention=1) as done:
            done.enqueue("work", "chunk", {})
        with producer.batch(**callbacks, retention=1) as running:
            running.enqueue("other", "chunk", {})
    client = await client_of(beanstalkd)
    for _, body in await take_all(client, "work"):
        ref = read_batch_ref(json.loads(body)["batch"])
        assert ref is not None
        await drive(client, record_success(ref))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_batch_keeper(address, connect_timeout=5, reply_timeout=5, every=0.05)
        )

        with trio.fail_after(15):  # the keeper looks every 0.05 s
            while await batch_row(client, address, done.id) is not None:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert done.opened.callbacks["death"] not in await ids_left(client, "callbacks")
    assert (await client.stats_job(done.opened.callbacks["success"])).state == "ready"
    row = await batch_row(client, address, running.id)
    assert row is not None  # a job still pending: kept for another retention
    assert row.state == "running"
    await client.aclose()


async def ids_left(client: Client, tube: str) -> set[int]:
    """The ids of the jobs in ``tube`` among the first 200 (this test's server is fresh)."""
    found = set()
    for job_id in range(1, 200):
        reply = await client.request(p.StatsJob(job_id))
        if isinstance(reply, p.JobStats) and reply.tube == tube:
            found.add(job_id)
    return found


async def test_given_no_server_answers_when_a_burial_is_recorded_then_the_job_runs_again() -> None:
    book = BatchBook(connect_timeout=1, reply_timeout=1, counters=JobCounters(), events=EventBus())
    ref = BatchRef("b1", 7, 3, {"death": 5})
    buried = BuryJob(100, Cause.HANDLER_BURY, "asked")
    outcome = await book.record_burial(Address("127.0.0.1", free_port()), ref, buried)
    assert isinstance(outcome, ReleaseJob)  # never buried uncounted: it records next time
    assert (outcome.cause, outcome.priority) == (Cause.BATCH, 100)
    assert "could not be recorded in batch b1" in outcome.detail
    await book.aclose()
